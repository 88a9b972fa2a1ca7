"""Job specs: one validated, JSON-serialisable description of a job, whoever submits it and wherever it runs.

`parse_spec(data)` validates a dict (from the CLI, the UI, a client or a PNG record) into a spec, including
the backend's own options, and raises InputError with every problem on one line (under 300 characters, naming
the field, never echoing a long value). Before pydantic sees the dict, every list, string, key and the nesting
are bounded by the settings (`max_spec_items`, `max_spec_chars`); after it, every inline image is checked from
its header alone (`max_upload_bytes`, `max_upload_pixels`, and `max_inline_bytes` for all of them together).
"""

from __future__ import annotations

import re
import typing
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from studio.config import Settings, load_settings
from studio.errors import InputError, clip

MAX_SEED = 2**63 - 2**20
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# Hard caps in the models themselves; the configured bounds (Settings.max_spec_*) are checked before them.
MAX_LIST = 100_000
MAX_TEXT = 1_000_000
MAX_KEY_CHARS = 64  # option names and other dict keys
MAX_DEPTH = 12  # nesting of dicts and lists in a spec
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(max_length=512)]


class ImageRef(BaseModel):
    """An input image: inline PNG/JPEG bytes (base64) or an item of a dataset."""

    model_config = ConfigDict(extra="forbid")
    png_b64: str | None = None  # bounded by Settings.max_upload_bytes and checked from its header in parse_spec
    dataset: Name | None = None
    split: Literal["train", "test"] = "test"
    index: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> ImageRef:
        if (self.png_b64 is None) == (self.dataset is None):
            raise ValueError("give either png_b64 or dataset (+ index)")
        if self.dataset is not None and self.index is None:
            raise ValueError("a dataset image needs an index")
        return self


class Source(BaseModel):
    """A point in latent space: from a seed (with optional backend options, e.g. a prompt) or an image."""

    model_config = ConfigDict(extra="forbid")
    seed: Seed | None = None
    image: ImageRef | None = None
    options: dict[str, Any] | None = None  # overrides the job's options for this point (prompt walks)

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        if (self.seed is None) == (self.image is None):
            raise ValueError("give either a seed or an image")
        return self


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: str = Field(min_length=1, max_length=64)
    model: str | None = Field(default=None, max_length=512)
    options: dict[str, Any] = Field(default_factory=dict)

    def sources(self) -> list[Source]:
        return []


class SampleSpec(_Job):
    op: Literal["sample"] = "sample"
    n: int = Field(default=16, ge=1)
    seed: Seed = 0
    temperature: float = Field(default=1.0, gt=0, le=4)
    truncation: float | None = Field(default=None, gt=0, le=10)


class InterpolateSpec(_Job):
    op: Literal["interpolate"] = "interpolate"
    start: Source
    end: Source
    steps: int = Field(default=9, ge=2)
    method: Literal["slerp", "lerp"] = "slerp"

    def sources(self) -> list[Source]:
        return [self.start, self.end]


class EditSpec(_Job):
    op: Literal["edit"] = "edit"
    vector: Name
    strengths: list[float] = Field(default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0], min_length=1,
                                   max_length=MAX_LIST)
    source: Source

    @field_validator("vector")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("vector names use letters, digits, '_', '.' and '-' (at most 64)")
        return v

    def sources(self) -> list[Source]:
        return [self.source]


class TraverseSpec(_Job):
    op: Literal["traverse"] = "traverse"
    source: Source
    dims: list[int] = Field(default_factory=lambda: list(range(8)), min_length=1, max_length=MAX_LIST)
    low: float = -3.0
    high: float = 3.0
    steps: int = Field(default=7, ge=2)

    def sources(self) -> list[Source]:
        return [self.source]


class AnalogySpec(_Job):
    op: Literal["analogy"] = "analogy"
    a: Source
    b: Source
    c: Source

    def sources(self) -> list[Source]:
        return [self.a, self.b, self.c]


class RoundtripSpec(_Job):
    op: Literal["roundtrip"] = "roundtrip"
    bits: int = 8
    dataset: Name | None = None
    split: Literal["train", "test"] = "test"
    limit: int = Field(default=1000, ge=1)
    image: ImageRef | None = None

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if not 1 <= v <= 12:
            raise ValueError(f"bits must be between 1 and 12, got {v}")
        return v

    @model_validator(mode="after")
    def _one_input(self) -> RoundtripSpec:
        if (self.dataset is None) == (self.image is None):
            raise ValueError("give either a dataset or an image")
        return self


class FitVectorSpec(_Job):
    op: Literal["fit_vector"] = "fit_vector"
    name: Name
    method: Literal["mean", "balanced", "classifier"] = "classifier"
    dataset: Name | None = None
    attribute: Name | None = None
    limit: int = Field(default=10000, ge=10)
    with_seeds: list[Seed] | None = Field(default=None, max_length=MAX_LIST)
    without_seeds: list[Seed] | None = Field(default=None, max_length=MAX_LIST)
    with_options: dict[str, Any] | None = None  # text directions: condition(with) - condition(without)
    without_options: dict[str, Any] | None = None
    seed: Seed = 0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("vector names use letters, digits, '_', '.' and '-' (at most 64)")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> FitVectorSpec:
        kinds = [self.dataset is not None, self.with_seeds is not None, self.with_options is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of: dataset + attribute, with_seeds + without_seeds, "
                             "with_options + without_options")
        if self.dataset is not None and not self.attribute:
            raise ValueError("a dataset vector needs an attribute (class:7, class:3-vs-8, thickness, slant)")
        if self.with_seeds is not None and not (self.with_seeds and self.without_seeds):
            raise ValueError("picked examples need at least one seed with and one without the attribute")
        if self.with_options is not None and self.without_options is None:
            raise ValueError("a text direction needs with_options and without_options")
        return self


class EvaluateSpec(_Job):
    op: Literal["evaluate"] = "evaluate"
    n: int = Field(default=2000, ge=10, le=20000)
    repeats: int = Field(default=5, ge=1, le=20)
    seed: Seed = 0

    @model_validator(mode="after")
    def _fits_the_training_set(self) -> EvaluateSpec:
        if self.n * self.repeats > 60000:
            raise ValueError(f"n x repeats must be at most 60000 (disjoint MNIST training subsets), "
                             f"got {self.n} x {self.repeats}")
        return self


class WalkSpec(_Job):
    op: Literal["walk"] = "walk"
    keyframes: list[Source] = Field(min_length=2, max_length=MAX_LIST)
    frames_per_segment: int = Field(default=8, ge=1, le=240)
    method: Literal["slerp", "lerp"] = "slerp"

    def sources(self) -> list[Source]:
        return list(self.keyframes)


class ProjectSpec(_Job):
    op: Literal["project"] = "project"
    dataset: Name = "mnist"
    split: Literal["train", "test"] = "test"
    method: Literal["pca", "tsne", "umap"] = "pca"
    limit: int = Field(default=2000, ge=10, le=10000)
    seed: Seed = 0


class AnomaliesSpec(_Job):
    op: Literal["anomalies"] = "anomalies"
    dataset: Name = "mnist"
    split: Literal["train", "test"] = "test"
    limit: int = Field(default=2000, ge=10, le=10000)
    ood_dataset: Name | None = None  # e.g. fashion or animals: reports AUROC of in- vs out-of-distribution
    top: int = Field(default=16, ge=1, le=64)


class TrainSpec(_Job):
    """Train fresh weights and register them as model `name` of the backend (studio.modelstore).
    `options` are the backend's training options (e.g. batch_size), checked by its `train`."""

    op: Literal["train"] = "train"
    name: Name
    dataset: Name = "mnist"
    epochs: int = Field(default=1, ge=1, le=1000)
    seed: Seed = 0
    limit: int | None = Field(default=None, ge=1, le=10_000_000)  # only the first N training images

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("model names use letters, digits, '_', '.' and '-' (at most 64)")
        return v

    @model_validator(mode="after")
    def _fresh(self) -> TrainSpec:
        if self.model is not None:
            raise ValueError("a train job starts from fresh weights: give no model")
        reserved = sorted(set(self.options) & {"dataset", "epochs", "out", "seed", "settings", "progress", "limit"})
        if reserved:
            raise ValueError(f"options: {', '.join(reserved)} are fields of the train job, not training options")
        return self


JobSpec = Annotated[SampleSpec | InterpolateSpec | EditSpec | TraverseSpec | AnalogySpec | RoundtripSpec
                    | FitVectorSpec | EvaluateSpec | WalkSpec | ProjectSpec | AnomaliesSpec | TrainSpec,
                    Field(discriminator="op")]
OPS = ("sample", "interpolate", "edit", "traverse", "analogy", "roundtrip", "fit_vector", "evaluate", "walk",
       "project", "anomalies", "train")
_adapter: TypeAdapter = TypeAdapter(JobSpec)
_MODELS: dict[str, type[BaseModel]] = {cls.model_fields["op"].default: cls for cls in typing.get_args(
    typing.get_args(JobSpec)[0])}


MAX_MESSAGE = 290  # every rejection is one line under 300 characters


def _format(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors(include_input=False, include_url=False):
        path = list(e["loc"])
        if path and path[0] in OPS:  # the discriminator's tag: the op is named already
            path = path[1:]
        loc = ".".join(clip(x, 40) for x in path if not (isinstance(x, str) and x.endswith("Spec")))
        msg = clip(e["msg"].removeprefix("Value error, "), 120)
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _refuse(message: str) -> InputError:
    """A one-line rejection, cut to MAX_MESSAGE characters."""
    text = " ".join(message.split())
    return InputError(text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "...")


def _b64_limit(max_bytes: int) -> int:
    """How many base64 characters encode `max_bytes` bytes (with padding)."""
    return 4 * ((max_bytes + 2) // 3)


class _Walk:
    """Bounds on the raw spec, checked before pydantic sees it: lists, strings, keys, depth and total size.

    A value over a bound is refused with its field named and its size given, never echoed back. The walk stops
    at the first problem, so a huge spec costs no more than the bound to look at.

    Inline images: a `png_b64` string is exempt from `max_spec_chars` only where the op's model puts an image
    reference (`image_paths`, key paths without list indices, e.g. ("keyframes", "image")); anywhere else (in
    free-form options) it is text like any other. Their base64 lengths together are bounded by
    `max_inline_bytes`, so the whole spec is at most 64 x `max_spec_chars` characters plus its inline images.
    """

    def __init__(self, settings: Settings, image_paths: frozenset[tuple[str, ...]] = frozenset()) -> None:
        self.settings = settings
        self.image_paths = image_paths
        self.total = 0  # characters of the spec, inline images aside
        self.budget = max(settings.max_spec_chars, 1) * 64
        self.inline = 0  # base64 characters of the inline images
        self.inline_budget = _b64_limit(settings.max_inline_bytes)

    def check(self, value: object, loc: str, depth: int = 0, keys: tuple[str, ...] = ()) -> None:
        if depth > MAX_DEPTH:
            raise _refuse(f"{loc or 'spec'}: nested more than {MAX_DEPTH} levels deep")
        self.total += 1
        if self.total > self.budget:
            raise _refuse(f"spec: larger than {self.budget} characters without its inline images")
        if isinstance(value, dict):
            if len(value) > self.settings.max_spec_items:
                raise _refuse(f"{loc or 'spec'}: at most {self.settings.max_spec_items} keys, got {len(value)}")
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _refuse(f"{loc or 'spec'}: keys are strings, got a {type(key).__name__}")
                if len(key) > MAX_KEY_CHARS:
                    raise _refuse(f"{loc or 'spec'}: a key of {len(key)} characters; keys have at most "
                                  f"{MAX_KEY_CHARS} ({clip(key, 30)})")
                self.total += len(key)
                here = f"{loc}.{key}" if loc else key
                if key == "png_b64" and isinstance(item, str) and keys in self.image_paths:
                    self._inline(item, here)
                    continue
                self.check(item, here, depth + 1, (*keys, key))
        elif isinstance(value, (list, tuple)):
            if len(value) > self.settings.max_spec_items:
                noun = "seeds" if loc.endswith("seeds") else "items"
                raise _refuse(f"{loc or 'spec'}: at most {self.settings.max_spec_items} {noun}, got {len(value)}")
            for i, item in enumerate(value):
                self.check(item, f"{loc}[{i}]", depth + 1, keys)
        elif isinstance(value, str):
            if len(value) > self.settings.max_spec_chars:
                raise _refuse(f"{loc or 'spec'}: at most {self.settings.max_spec_chars} characters, "
                              f"got {len(value)} (STUDIO_MAX_SPEC_CHARS)")
            self.total += len(value)
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise _refuse(f"{loc or 'spec'}: expected a JSON value (text, number, list or object), "
                          f"got a Python {type(value).__name__} object")

    def _inline(self, text: str, here: str) -> None:
        limit = _b64_limit(self.settings.max_upload_bytes)
        if len(text) > limit:
            raise _refuse(f"{here}: about {len(text) * 3 // 4} bytes; the limit is "
                          f"{self.settings.max_upload_bytes} bytes (STUDIO_MAX_UPLOAD_BYTES)")
        self.inline += len(text)
        if self.inline > self.inline_budget:
            raise _refuse(f"{here}: the inline images of this spec are over {self.settings.max_inline_bytes} bytes "
                          f"together (STUDIO_MAX_INLINE_BYTES)")


def _types(annotation: object) -> list[type]:
    """The classes an annotation names (through Optional, unions, list[...] and Annotated)."""
    args = typing.get_args(annotation)
    if not args:
        return [annotation] if isinstance(annotation, type) else []
    return [t for arg in args for t in _types(arg)]


@cache
def image_paths(model: type[BaseModel]) -> frozenset[tuple[str, ...]]:
    """Where `model` puts an image reference: key paths without list indices (("start", "image"))."""
    found: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        for cls in _types(field.annotation):
            if cls is ImageRef:
                found.add((name,))
            elif issubclass(cls, BaseModel):
                found.update((name, *path) for path in image_paths(cls))
    return frozenset(found)


def _image_refs(model: BaseModel, loc: str = "") -> list[tuple[str, ImageRef]]:
    """Every ImageRef in a validated spec, with where it sits (`start.image`, `keyframes[2].image`)."""
    found: list[tuple[str, ImageRef]] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        here = f"{loc}.{name}" if loc else name
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            at = here if i is None else f"{here}[{i}]"
            if isinstance(item, ImageRef):
                found.append((at, item))
            elif isinstance(item, BaseModel):
                found.extend(_image_refs(item, at))
    return found


def check_inline_images(spec: BaseModel, settings: Settings) -> None:
    """Decode each inline image's base64 and check its bytes and its header's pixel count (no pixel decode);
    all of them together must fit Settings.max_inline_bytes."""
    import base64
    import binascii

    from studio.images import check_image_header

    total = 0
    for loc, ref in _image_refs(spec):
        if ref.png_b64 is None:
            continue
        what = f"{loc}.png_b64"
        try:
            raw = base64.b64decode(ref.png_b64, validate=True)
        except (binascii.Error, ValueError):
            raise _refuse(f"{what}: not valid base64") from None
        check_image_header(raw, settings.max_upload_pixels, settings.max_upload_bytes, what)
        total += len(raw)
        if total > settings.max_inline_bytes:
            raise _refuse(f"{what}: the inline images of this spec are over {settings.max_inline_bytes} bytes "
                          f"together (STUDIO_MAX_INLINE_BYTES)")


def output_count(spec: BaseModel) -> int:
    """How many images a job will render (checked against the configured limit)."""
    match spec.op:
        case "sample":
            return spec.n
        case "interpolate":
            return spec.steps
        case "edit":
            return len(spec.strengths)
        case "traverse":
            return len(spec.dims) * spec.steps
        case "analogy":
            return 4
        case "walk":
            return (len(spec.keyframes) - 1) * spec.frames_per_segment + 1
        case "anomalies":
            return spec.top
    return 0


def parse_spec(data: dict | BaseModel, settings: Settings | None = None, check_backend: bool = True) -> BaseModel:
    """Validate a job spec (and the backend's options) or raise InputError; nothing is created."""
    settings = settings or load_settings()
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if not isinstance(data, dict):
        raise InputError(f"a job spec is a JSON object, got {type(data).__name__}")
    op = data.get("op")
    if not isinstance(op, str) or op not in OPS:
        shown = "missing" if op is None else f"unknown op {clip(op, 40)!r}" if isinstance(op, str) else \
            f"expected text, got a {type(op).__name__}"
        raise _refuse(f"op: {shown} (use one of {', '.join(OPS)})")
    _Walk(settings, image_paths(_MODELS[op])).check(data, "")
    try:
        spec = _adapter.validate_python(data)
    except ValidationError as exc:
        raise _refuse(f"invalid {op} job: {_format(exc)}") from None
    check_inline_images(spec, settings)
    count = output_count(spec)
    if count > settings.max_images:
        raise InputError(f"this {spec.op} job would make {count} images; the limit is {settings.max_images} "
                         f"(STUDIO_MAX_IMAGES)")
    if spec.op == "roundtrip" and spec.limit > 10000:
        raise InputError(f"roundtrip limit is at most 10000 images, got {spec.limit}")
    if check_backend:
        check_backend_options(spec)
    return spec


def check_backend_options(spec: BaseModel) -> None:
    """Validate a parsed spec's backend options (the job's, each source's, text directions') with its backend."""
    from studio.registry import get_backend_class

    cls = get_backend_class(spec.backend)
    if spec.op == "train":  # its options are training options, which the backend's train checks
        from studio.contract import TRAIN

        if TRAIN not in cls.capabilities:
            raise InputError(f"backend {cls.name!r} cannot run a train job: it lacks train (capabilities: "
                             f"{', '.join(sorted(cls.capabilities))})")
        return
    try:
        cls.parse_options(spec.options)
        for src in spec.sources():
            if src.options is not None:
                cls.parse_options({**spec.options, **src.options})
        for extra in (getattr(spec, "with_options", None), getattr(spec, "without_options", None)):
            if extra is not None:
                cls.parse_options({**spec.options, **extra})
    except InputError as exc:  # a plugin's message: keep it to one short line
        raise _refuse(str(exc)) from None


def spec_dict(spec: BaseModel) -> dict:
    """The JSON-ready form of a spec (what queues and records carry)."""
    return spec.model_dump(mode="json", exclude_none=True)
