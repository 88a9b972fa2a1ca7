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
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from studio.config import Settings, load_settings
from studio.contract import CONTRACT_VERSION
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


def checked_name(value: str, what: str) -> str:
    """`value` if it is a valid name of a `what` (vector, model, ...), else ValueError for pydantic to report."""
    if not NAME_RE.match(value):
        raise ValueError(f"{what} names use letters, digits, '_', '.' and '-' (at most 64)")
    return value
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


class OpSpec(BaseModel):
    """The one declaration of an op: its spec's fields, its traits and its handler, in one class.

    Subclass it with a literal `op` field (`op: Literal["neighbours"] = "neighbours"`), the op's own fields
    (pydantic, validated at submit), and `run(self, job)`: the handler, which works over the backend contract
    through `job` (a `studio.executor.JobContext`). Register the class through the `latent_studio.ops`
    entry-point group (studio.registry). The CLI (`studio run|submit NAME`), the queue, the client and the UI's
    named `submit` API then take it with no core change. Keep the module that declares it free of torch at import:
    import heavy code inside `run`, so thin clients can validate a spec without loading any model code.

    Traits (class variables): `batchable` (compatible jobs may run as one forward pass; only with a
    `run_batch` class method), `batch_varying` (the fields that may differ between jobs batched together),
    `resumable` (the job keeps work in `job.workdir` across attempts), `backend_options` (whether `options` are
    the backend's Options, validated at submit; False when the op reads them itself).
    """

    model_config = ConfigDict(extra="forbid")
    backend: str = Field(min_length=1, max_length=64)
    model: str | None = Field(default=None, max_length=512)
    options: dict[str, Any] = Field(default_factory=dict)
    # An http(s) URL that gets the job's end summary, signed (studio.queue.webhooks); its host is checked against
    # STUDIO_WEBHOOK_ALLOW at submit (studio.webhook_policy). PNG records leave it out (studio.record).
    webhook: str | None = Field(default=None, max_length=2048, description=(
        "POST the job's signed end summary to this http(s) URL (allowed by STUDIO_WEBHOOK_ALLOW; needs "
        "STUDIO_WEBHOOK_SECRET)"))

    contract_version: ClassVar[str] = CONTRACT_VERSION  # the contract this op was built for (pin it)
    batchable: ClassVar[bool] = False
    batch_varying: ClassVar[tuple[str, ...]] = ()
    resumable: ClassVar[bool] = False
    backend_options: ClassVar[bool] = True

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        from studio.webhook_policy import check_url

        return None if value is None else check_url(value)

    @classmethod
    def op_name(cls) -> str | None:
        """The op's name: the default of its `op` field."""
        field = cls.model_fields.get("op")
        return field.default if field is not None and isinstance(field.default, str) else None

    def sources(self) -> list[Source]:
        """The latent points the job starts from (seeds or images)."""
        return []

    def option_sets(self) -> list[dict[str, Any]]:
        """Every set of backend options the job will parse beyond `options` itself (per source, text directions),
        so all of them are validated at submit."""
        return [{**self.options, **src.options} for src in self.sources() if src.options is not None]

    def output_count(self) -> int:
        """How many images the job renders (checked against Settings.max_images at submit)."""
        return 0

    def required_capabilities(self) -> set[str]:
        """The backend capabilities the job needs: by default SAMPLE for a seed source, ENCODE for an image source,
        and DECODE to render."""
        from studio.contract import DECODE, ENCODE, SAMPLE

        return {SAMPLE if src.seed is not None else ENCODE for src in self.sources()} | {DECODE}

    def run(self, job: Any) -> None:
        """The handler: compute the result and add it to `job` (a studio.executor.JobContext)."""
        raise NotImplementedError(f"op {self.op_name()!r} has no handler")


MAX_MESSAGE = 290  # every rejection is one line under 300 characters


def _format(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors(include_input=False, include_url=False):
        path = list(e["loc"])
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


def parse_spec(data: dict | BaseModel, settings: Settings | None = None, check_backend: bool = True) -> OpSpec:
    """Validate a job spec (and the backend's options) or raise InputError; nothing is created."""
    from studio.registry import get_op

    settings = settings or load_settings()
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if not isinstance(data, dict):
        raise InputError(f"a job spec is a JSON object, got {type(data).__name__}")
    op = data.get("op")
    if not isinstance(op, str):
        from studio.registry import op_names

        shown = "missing" if op is None else f"expected text, got a {type(op).__name__}"
        raise _refuse(f"op: {shown} (use one of {', '.join(op_names())})")
    model = get_op(op)
    _Walk(settings, image_paths(model)).check(data, "")
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        raise _refuse(f"invalid {op} job: {_format(exc)}") from None
    check_inline_images(spec, settings)
    count = spec.output_count()
    if count > settings.max_images:
        raise InputError(f"this {op} job would make {count} images; the limit is {settings.max_images} "
                         f"(STUDIO_MAX_IMAGES)")
    if check_backend:
        check_backend_options(spec)
    return spec


def check_capabilities(spec: OpSpec) -> None:
    """InputError (one line) when the spec's backend lacks a capability the op needs."""
    from studio.registry import get_backend_class

    cls = get_backend_class(spec.backend)
    missing = spec.required_capabilities() - set(cls.capabilities)
    if missing:
        raise InputError(f"backend {cls.name!r} cannot run a {spec.op} job like this: it lacks "
                         f"{', '.join(sorted(missing))} (capabilities: {', '.join(sorted(cls.capabilities))})")


def check_backend_options(spec: OpSpec) -> None:
    """Validate a parsed spec's backend options (the job's and every other set it will parse) with its backend."""
    from studio.registry import get_backend_class

    cls = get_backend_class(spec.backend)
    if not spec.backend_options:  # e.g. train: its options are training options, which the backend's train checks
        return
    try:
        cls.parse_options(spec.options)
        for options in spec.option_sets():
            cls.parse_options(options)
    except InputError as exc:  # a plugin's message: keep it to one short line
        raise _refuse(str(exc)) from None


def spec_dict(spec: BaseModel) -> dict:
    """The JSON-ready form of a spec (what queues and records carry)."""
    return spec.model_dump(mode="json", exclude_none=True)
