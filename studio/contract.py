"""The backend contract: what a plugin implements, and nothing more.

A backend declares its latent *spaces* (shape, prior, roles) and its *capabilities*; it implements only
the model-specific parts: sampling a prior, encoding images, decoding a latent *point* to images.
Every latent operation (interpolation, vectors, edits, compression, projections) lives in `studio.ops`
and works over this contract without knowing which backend it talks to.

Conventions at the boundary:
- images: float32 CPU tensors, NCHW, values in [-1, 1];
- a *point* is a dict from space name to a batch-first float32 CPU tensor of the declared shape;
- randomness comes in as integer seeds, one per item; noise is drawn on the CPU, so a seed gives the
  same latent on every device.

The contract enforces its image convention itself: every subclass's `decode` is wrapped (once, in
`Backend.__init_subclass__`) by `check_decoded`, so a decode that returns NaN/Inf, another dtype, another
device or another shape fails with a `BackendError` naming the backend, whoever called it (an op, the
conformance kit, the UI), instead of succeeding silently or failing later with an unrelated message.
"""

from __future__ import annotations

import functools
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from studio.errors import InputError, NotFound, StudioError, clip

if TYPE_CHECKING:
    import torch

    from studio.config import Settings

# The contract's version: MAJOR.MINOR. A minor version only adds (new optional methods, new capabilities); a major
# version changes or removes something plugins rely on. A plugin declares the version it was built for
# (`Backend.contract_version`, `OpSpec.contract_version`); one built for another major version is refused at load.
CONTRACT_VERSION = "1.2"  # 1.1: Backend.model_spaces and model_image_shape (listing without loading)
# 1.2: Backend.encode_cost and Backend.intermediate_features (optional; for regularity and discovered directions)


def contract_major(version: str) -> int | None:
    """The major number of a contract version ("1.0" -> 1); None when it is not MAJOR.MINOR."""
    head, _, _ = str(version).partition(".")
    return int(head) if head.isdigit() else None


# Roles a latent space can play. Ops choose a space by role, never by backend name.
SEED = "seed"  # where seeds live: sampling, slerp walks, attribute directions, traversals
CODEC = "codec"  # what encode() returns and decode() accepts alone: compression, img2img
CONDITION = "condition"  # conditioning embeddings (prompts): lerp between prompts, text directions
ROLES = frozenset({SEED, CODEC, CONDITION})

# Capabilities a backend can declare.
SAMPLE = "sample"
ENCODE = "encode"  # images -> codec point
DECODE = "decode"  # codec point -> images
TRAIN = "train"
TEXT = "text"  # accepts prompts
IMG2IMG = "img2img"
CAPABILITIES = frozenset({SAMPLE, ENCODE, DECODE, TRAIN, TEXT, IMG2IMG})

Point = dict[str, "torch.Tensor"]
Progress = Callable[..., None]  # progress(step, total, message="", preview=None); may raise Cancelled


def no_progress(step: int, total: int, message: str = "", preview: object = None) -> None:
    """A progress callback that ignores everything."""


def wants_preview(progress: Progress) -> bool:
    """Whether `progress` takes the contract's fourth argument (a preview): not `no_progress` (nobody looks), not a
    callback written as progress(step, total, message) (it would fail on a fourth argument)."""
    import inspect

    if progress is no_progress:
        return False
    try:
        params = list(inspect.signature(progress).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: call it as documented
        return True
    return any(p.kind is p.VAR_POSITIONAL for p in params) or len(
        [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 4


@dataclass(frozen=True)
class LatentSpace:
    """One latent space of a backend.

    `prior` is "gaussian" (standard normal, where seeds live) or "none". `coding_mean`/`coding_std`
    describe where encoded latents lie (per element or scalar); compression uses them for its range and
    its entropy model, so a backend that knows its latent statistics should declare them.
    """

    name: str
    shape: tuple[int, ...]
    prior: Literal["gaussian", "none"]
    roles: frozenset[str]
    coding_mean: tuple[float, ...] | float = 0.0
    coding_std: tuple[float, ...] | float = 1.0

    def __post_init__(self) -> None:
        unknown = set(self.roles) - ROLES
        if unknown:
            raise ValueError(f"latent space {self.name!r} has unknown roles {sorted(unknown)}")

    def describe(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "prior": self.prior, "roles": sorted(self.roles)}


class BackendError(StudioError, RuntimeError):
    """A backend broke the contract (e.g. decode returned NaN or the wrong shape); the message names it."""


@dataclass(frozen=True)
class ModelInfo:
    """A model a backend can load: its weights file and their sha256.

    `error` non-empty marks a model that is listed but cannot load (a corrupt weights file, say): listings
    show it with that reason, `choose_model` refuses it, and the backend's other models keep serving.
    """

    name: str
    path: str
    sha256: str
    description: str = ""
    extra: dict = field(default_factory=dict)
    error: str = ""

    def describe(self) -> dict:
        info = {"name": self.name, "path": self.path, "sha256": self.sha256, "description": self.description,
                **self.extra}
        if self.error:
            info["error"] = self.error
        return info


def choose_model(backend: str, models: Sequence[ModelInfo], name: str | None, kind: str | None = None) -> ModelInfo:
    """The model called `name` (None: the first usable one); NotFound when there is none of that name,
    InputError with the reason when it is listed as broken. `kind` names the models in messages (the
    backend's name by default)."""
    usable = [m for m in models if not m.error]
    if name is None:
        if usable:
            return usable[0]
        broken = "; ".join(f"{m.name}: {m.error}" for m in models)
        broken = broken if len(broken) <= 200 else broken[:200] + "..."
        raise NotFound(f"backend {backend!r} has no usable model" + (f" (broken: {broken})" if broken else ""))
    for m in models:
        if m.name == name:
            if m.error:
                raise InputError(f"model {name!r} of backend {backend!r} is broken: {m.error}")
            return m
    raise NotFound(f"unknown {kind or backend} model {clip(name)!r} "
                   f"(available: {', '.join(m.name for m in usable) or 'none'})")


def _batch_of(point: object) -> int | None:
    """The batch size a decode of `point` must return: the largest leading size of its tensors."""
    sizes = [int(t.shape[0]) for t in point.values() if getattr(t, "dim", None) and t.dim() > 0] \
        if isinstance(point, dict) else []
    return max(sizes) if sizes else None


def check_decoded(backend: Backend, point: object, options: object, images: object) -> torch.Tensor:
    """`images` if they are what decode must return for `point`: a float32 CPU tensor of shape
    (n, *image_shape(options)), every value finite; otherwise BackendError naming the backend."""
    import torch

    who = f"backend {getattr(backend, 'name', type(backend).__name__)!r}"
    if not isinstance(images, torch.Tensor):
        raise BackendError(f"{who} returned a {type(images).__name__} from decode, not an image tensor")
    if images.dtype != torch.float32 or images.device.type != "cpu":
        raise BackendError(f"{who} returned {str(images.dtype).removeprefix('torch.')} images on "
                           f"{images.device.type} from decode; the contract needs float32 on the CPU")
    n = _batch_of(point)
    expected = ((n,) if n is not None else tuple(images.shape[:1])) + tuple(backend.image_shape(options))
    if tuple(images.shape) != expected:
        shown = "x".join(map(str, images.shape)) or "a scalar"
        raise BackendError(f"{who} returned images of shape {shown} from decode; expected "
                           f"{'x'.join(map(str, expected))}")
    if not bool(torch.isfinite(images).all()):
        raise BackendError(f"{who} returned NaN/Inf values from decode")
    return images


def _checked_decode(decode: Callable) -> Callable:
    if getattr(decode, "_studio_checked", False):
        return decode

    @functools.wraps(decode)
    def checked(self: Backend, point: Point, *args: object, **kwargs: object) -> torch.Tensor:
        options = args[0] if args else kwargs.get("options")
        return check_decoded(self, point, options, decode(self, point, *args, **kwargs))

    checked._studio_checked = True  # type: ignore[attr-defined]
    return checked


class NoOptions(BaseModel):
    """Backend options for a backend that takes none."""

    model_config = ConfigDict(extra="forbid")


class TextOptions(BaseModel):
    """The options every TEXT backend takes, declared once: a TEXT backend's `Options` subclasses this model (and
    may narrow a field, e.g. `scheduler: Literal[...]`, or add its own). The CLI (`--prompt`, `--steps`, ...), the
    UI's text row and the conformance kit read the text fields from here."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", max_length=4000, description="what to draw")
    negative_prompt: str = Field("", max_length=4000, description="what to steer away from")
    steps: int = Field(20, ge=1, le=150, description="denoising steps")
    guidance: float = Field(7.5, ge=0.0, le=30.0, description="classifier-free guidance scale; <= 1 turns it off")
    width: int | None = Field(None, ge=64, le=2048, description="pixels (None: the model's native size)")
    height: int | None = Field(None, ge=64, le=2048, description="pixels (None: the model's native size)")
    scheduler: str = Field("ddim", max_length=32, description="the sampler")


TEXT_FIELDS: tuple[str, ...] = tuple(TextOptions.model_fields)


class Backend(ABC):
    """A loaded model of a plugin. Subclasses set the class attributes and implement the abstract methods.

    Class-level methods (`available_models`, `model_spaces`, `model_image_shape`, `load`, `train`) work without
    loading weights, so the registry can list and validate without touching a model; a plugin's module imports no
    torch at top level, so listing and submitting never pay for it.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    contract_version: ClassVar[str] = CONTRACT_VERSION  # the contract this backend was built for (pin it)
    description: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE, DECODE})
    train_aliases: ClassVar[tuple[str, ...]] = ()  # other names `studio train NAME` accepts (sd: "ldm")
    train_output: ClassVar[Literal["file", "folder"]] = "file"  # what `train` writes at `out`
    Options: ClassVar[type[BaseModel]] = NoOptions
    devices: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})  # where it can run; {"cuda"}: GPU-only
    # What encoding one image costs: "cheap" (a forward pass, e.g. a VAE's mean) or "costly" (an optimisation, e.g.
    # GAN inversion, seconds per image). Ops that would encode thousands of images (`evaluate`'s separability) use
    # prior samples instead when it is costly.
    encode_cost: ClassVar[Literal["cheap", "costly"]] = "cheap"

    def __init__(self, model: ModelInfo, device: str = "cpu", dtype: str = "float32") -> None:
        self.model = model
        self.device = device
        self.dtype = dtype

    @property
    def model(self) -> ModelInfo:
        """The loaded model's ModelInfo (name, weights path, sha256), which every record reads. The base class owns
        it, with `device` and `dtype`: keep a network under another name (`self.net`)."""
        try:
            return self.__dict__["_model_info"]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no model yet: call Backend.__init__") from None

    @model.setter
    def model(self, value: ModelInfo) -> None:
        if not isinstance(value, ModelInfo):
            raise TypeError(f"{type(self).__name__}.model is the studio.contract.ModelInfo the records read, got "
                            f"{type(value).__name__}: keep the network under another name (e.g. self.net)")
        self.__dict__["_model_info"] = value

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Wrap a subclass's own `decode` in `check_decoded` (inherited decodes are wrapped already)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("decode")
        if isinstance(own, types.FunctionType) and not getattr(own, "__isabstractmethod__", False):
            cls.decode = _checked_decode(own)  # type: ignore[method-assign]

    # ----- discovery (no weights loaded) -----
    @classmethod
    @abstractmethod
    def available_models(cls, settings: Settings) -> list[ModelInfo]:
        """The models this backend can load right now."""

    @classmethod
    def default_model(cls, settings: Settings) -> str | None:
        """The first model that is not listed as broken (None when there is none)."""
        usable = [m for m in cls.available_models(settings) if not m.error]
        return usable[0].name if usable else None

    @classmethod
    def model_spaces(cls, model: ModelInfo, settings: Settings) -> dict[str, LatentSpace] | None:
        """The spaces `model` has with default options, read without loading it (no torch, no weights: from its
        ModelInfo, a weights header or a config file); they must equal `load(...).spaces(parse_options({}))`.
        None (the default) means "unknown without loading": listings then show no spaces for the model."""
        return None

    @classmethod
    def model_image_shape(cls, model: ModelInfo, settings: Settings) -> tuple[int, int, int] | None:
        """(channels, height, width) of `model`'s images with default options, read without loading it, like
        `model_spaces`; None (the default) means "unknown without loading"."""
        return None

    @classmethod
    @abstractmethod
    def load(cls, model: str | None, settings: Settings, device: str = "cpu", dtype: str = "float32") -> Backend:
        """Load `model` (None: the default) and return a ready backend."""

    @classmethod
    def train(cls, dataset: str, epochs: int, out: str, seed: int, settings: Settings,
              progress: Progress = no_progress, **kwargs: object) -> dict:
        """Train weights on `dataset` and write them to `out`; return metrics. Needs the TRAIN capability."""
        raise NotImplementedError(f"backend {cls.name!r} cannot train")

    # ----- the latent interface -----
    @abstractmethod
    def spaces(self, options: BaseModel | None = None) -> dict[str, LatentSpace]:
        """The latent spaces for these options (shapes may depend on options, e.g. image size)."""

    @abstractmethod
    def image_shape(self, options: BaseModel | None = None) -> tuple[int, int, int]:
        """(channels, height, width) of the images this backend makes and encodes."""

    def sample_prior(self, space: str, seeds: Sequence[int], options: BaseModel | None = None) -> torch.Tensor:
        """Draw one latent per seed from the space's prior, on the CPU. Default: standard normal."""
        import torch

        shape = self.spaces(options)[space].shape
        return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])

    def condition(self, n: int, options: BaseModel | None = None) -> Point:
        """Latents of the CONDITION role for these options (e.g. prompt embeddings). Default: none."""
        return {}

    @abstractmethod
    def decode(self, point: Point, options: BaseModel | None = None, progress: Progress = no_progress) -> torch.Tensor:
        """Render a point to images (NCHW in [-1, 1]).

        A point holding the SEED-role space (plus any CONDITION) generates; a point holding only the
        CODEC-role space decodes. A backend with IMG2IMG accepts both and a `strength` in its options, and may
        accept an inpainting `mask` entry with them: (n, 1, H, W) float in [0, 1] at the image size, 1 = redraw,
        0 = keep (the img2img op sends it when its spec has a mask, and composites the kept pixels itself
        afterwards); a backend that does not refuses it like any unknown space, with an InputError.

        `progress(step, total, message, preview)` may carry a preview of the images being made (an NCHW tensor
        in [-1, 1], a PIL image or PNG bytes), which the queue stores as the job's `preview_png_b64`; previews
        must not change the result.
        """

    def encode(self, images: torch.Tensor, options: BaseModel | None = None, seed: int = 0,
               progress: Progress = no_progress) -> Point:
        """Encode images (NCHW in [-1, 1]) to a point of the CODEC-role space. Needs the ENCODE capability."""
        raise NotImplementedError(f"backend {self.name!r} cannot encode")

    def intermediate_features(self, point: Point, options: BaseModel | None = None) -> torch.Tensor:
        """Optional: activations (N, D float32, CPU) of an intermediate layer of the generator for a point holding
        the SEED-role space; `studio vectors discover` runs PCA there and maps the directions back to the seed space
        (GANSpace). Default: not supported (NotImplementedError)."""
        raise NotImplementedError(f"backend {self.name!r} does not expose intermediate features")

    # ----- helpers the core uses -----
    def space_for(self, role: str, options: BaseModel | None = None) -> LatentSpace:
        """The first space that plays `role`."""
        for s in self.spaces(options).values():
            if role in s.roles:
                return s
        raise InputError(f"backend {self.name!r} has no latent space with role {role!r}")

    def describe(self) -> dict:
        return {"backend": self.name, "version": self.version, "model": self.model.describe(),
                "device": self.device, "dtype": self.dtype}

    @classmethod
    def parse_options(cls, options: dict | None) -> BaseModel:
        """Validate job options against this backend's Options model, with a readable error."""
        from pydantic import ValidationError

        try:
            return cls.Options.model_validate(options or {})
        except ValidationError as exc:
            parts = [f"{'.'.join(str(x) for x in e['loc']) or 'options'}: {e['msg']}" for e in exc.errors()]
            raise InputError(f"invalid options for backend {cls.name!r}: " + "; ".join(parts)) from None
