"""The VAE backend: one Gaussian latent `z` that is both where seeds live and what encode() returns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

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
from studio.errors import InputError, NotFound

from .config import VAEConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from studio.config import Settings

SHIPPED = Path(__file__).parent / "weights" / "mnist.safetensors"
SPACE = "z"
BATCH = 512
DTYPES = {"auto": "float32", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}  # -> torch dtype

def _model_info(name: str, path: Path, description: str) -> ModelInfo:
    """The model's info; a file that is not valid VAE weights is listed with the reason as its `error`."""
    from studio.safetensors_io import weights_model_info

    def describe(meta: dict[str, str]) -> tuple[dict, str]:
        extra = {k: meta[k] for k in ("dataset", "epochs", "seed") if k in meta}
        return extra, "" if "config" in meta else f"weights file {path.name!r} holds no VAE config in its metadata"

    return weights_model_info(name, path, description, describe)


def _resolve_device(device: str) -> str:
    if device in ("", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class VAEBackend(Backend):
    """A convolutional VAE; the shipped models are `plugins/studio_vae/weights/*.safetensors` (`mnist` the default,
    `fashion`), other models are any `<model_root>/vae/*.safetensors`. A model with a whitening in its metadata
    (`studio_vae.model.Whitening`) exposes the whitened posterior mean as its latent."""

    name: ClassVar[str] = "vae"
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = "Convolutional VAE, Gaussian latent, exact encoding by the posterior mean"
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE, ENCODE, DECODE, TRAIN})

    def __init__(self, model: ModelInfo, device: str = "cpu", dtype: str = "float32") -> None:
        import torch

        from .model import load_vae

        if dtype not in DTYPES:
            raise InputError(f"unknown dtype {dtype!r} (use one of {', '.join(DTYPES)})")
        device = _resolve_device(device)
        super().__init__(model, device, "float32" if dtype == "auto" else dtype)
        self._torch_dtype = getattr(torch, DTYPES[dtype])
        net, metadata = load_vae(model.path)
        self.net = net.to(device=self.device, dtype=self._torch_dtype)
        self.metadata = metadata
        self.config = net.config
        self._space = _space(self.config, metadata)

    # ----- discovery -----
    @classmethod
    def available_models(cls, settings: Settings) -> list[ModelInfo]:
        """The shipped weights (`mnist` first, the default), then `<model_root>/vae/*.safetensors` (name = file
        stem; first wins)."""
        models: dict[str, ModelInfo] = {}
        for shipped in sorted(SHIPPED.parent.glob("*.safetensors"), key=lambda p: (p != SHIPPED, p.stem)):
            models[shipped.stem] = _model_info(shipped.stem, shipped,
                                               f"shipped: trained on {shipped.stem} by `studio train vae`")
        from studio.config import files_under  # resolve, then check: a symlink out of the roots is not listed

        for root in settings.model_root_paths:
            folder = Path(root) / "vae"
            for path in files_under(folder, "*.safetensors", settings.model_root_paths):
                if path.stem not in models:
                    models[path.stem] = _model_info(path.stem, path, f"user weights in {folder}")
        return list(models.values())

    @classmethod
    def load(cls, model: str | None, settings: Settings, device: str = "cpu", dtype: str = "float32") -> VAEBackend:
        models = cls.available_models(settings)
        if not models:
            raise NotFound("no VAE weights are installed (train some with `studio train vae`)")
        return cls(choose_model(cls.name, models, model, kind="VAE"), device=device, dtype=dtype)

    @classmethod
    def model_spaces(cls, model: ModelInfo, settings: Settings) -> dict[str, LatentSpace] | None:
        """The latent `z` of `model`, from its weights' metadata (None when the model is broken)."""
        found = _header_config(model)
        return {SPACE: _space(*found)} if found else None

    @classmethod
    def model_image_shape(cls, model: ModelInfo, settings: Settings) -> tuple[int, int, int] | None:
        found = _header_config(model)
        return (found[0].channels, found[0].size, found[0].size) if found else None

    @classmethod
    def train(cls, dataset: str, epochs: int, out: str, seed: int, settings: Settings,
              progress: Progress = no_progress, **kwargs: object) -> dict:
        """Train with `studio_vae.train.train_vae`; kwargs: batch_size, lr, latent_dim, base_width, channels,
        kl_weight, limit, threads, device, extra_convs, hidden, whiten (None values mean the default)."""
        import inspect

        from .train import train_vae

        allowed = set(inspect.signature(train_vae).parameters) - {"dataset", "epochs", "out", "seed", "settings",
                                                                   "progress"}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise InputError(f"unknown training options for vae: {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(allowed))})")
        given = {k: v for k, v in kwargs.items() if v is not None}
        return train_vae(dataset, epochs, out, seed, settings=settings, progress=progress, **given)  # type: ignore[arg-type]

    # ----- the latent interface -----
    def spaces(self, options: BaseModel | None = None) -> dict[str, LatentSpace]:
        return {SPACE: self._space}

    def image_shape(self, options: BaseModel | None = None) -> tuple[int, int, int]:
        return (self.config.channels, self.config.size, self.config.size)

    def sample_prior(self, space: str, seeds: Sequence[int], options: BaseModel | None = None) -> torch.Tensor:
        """Standard-normal seeds, or draws from the model's learned prior when it has one
        (`studio_vae.prior.MixturePrior`)."""
        if self.net.prior is None:
            return super().sample_prior(space, seeds, options)
        if space not in self.spaces(options):
            raise InputError(f"the VAE has no latent space {space!r} (it has {SPACE!r})")
        return self.net.prior.sample(seeds)

    def decode(self, point: Point, options: BaseModel | None = None, progress: Progress = no_progress) -> torch.Tensor:
        import torch

        if SPACE not in point:
            raise InputError(f"the VAE decodes a point with space {SPACE!r}; got {sorted(point) or 'none'}")
        z = torch.as_tensor(point[SPACE])
        d = self.config.latent_dim
        if z.dim() != 2 or z.shape[1] != d:
            raise InputError(f"VAE latents must have shape (N, {d}), got {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise InputError("VAE latents contain NaN or infinite values")
        out = []
        total = max(1, -(-len(z) // BATCH))
        for i, start in enumerate(range(0, len(z), BATCH)):
            batch = z[start:start + BATCH].to(device=self.device, dtype=torch.float32)
            with torch.no_grad():
                out.append(self.net.decode_latent(batch).float().cpu())
            progress(i + 1, total)
        if not out:
            return torch.zeros((0, *self.image_shape()), dtype=torch.float32)
        return torch.cat(out).clamp(-1, 1)

    def encode(self, images: torch.Tensor, options: BaseModel | None = None, seed: int = 0,
               progress: Progress = no_progress) -> Point:
        """The posterior mean of each image, whitened when the model has a whitening (deterministic; `seed` is
        unused). `decode` is its inverse map: decode(encode(x)) decodes the posterior mean."""
        import torch
        shape = self.image_shape()
        images = torch.as_tensor(images)
        if images.dim() != 4 or tuple(images.shape[1:]) != shape:
            raise InputError(f"the VAE encodes images of shape (N, {', '.join(map(str, shape))}), "
                             f"got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise InputError("images contain NaN or infinite values")
        out = []
        total = max(1, -(-len(images) // BATCH))
        for i, start in enumerate(range(0, len(images), BATCH)):
            batch = images[start:start + BATCH].to(device=self.device, dtype=self._torch_dtype).clamp(-1, 1)
            with torch.no_grad():
                out.append(self.net.encode_latent(batch).float().cpu())
            progress(i + 1, total)
        z = torch.cat(out) if out else torch.zeros((0, self.config.latent_dim))
        return {SPACE: z}

    def describe(self) -> dict:
        return {**super().describe(), "config": json.loads(self.config.to_json()),
                "whitened": self.net.whitening is not None,
                "prior": f"gaussian mixture of {self.net.prior.components}" if self.net.prior else "standard normal"}


def _header_config(model: ModelInfo) -> tuple[VAEConfig, dict[str, str]] | None:
    """The config and metadata in `model`'s weights header; None when the model is broken or unreadable."""
    from studio.safetensors_io import read_metadata

    if model.error:
        return None
    try:
        metadata = read_metadata(model.path)
        return VAEConfig.from_json(metadata["config"]), metadata
    except (OSError, KeyError, ValueError, TypeError, InputError):
        return None


def _space(config: VAEConfig, metadata: dict[str, str]) -> LatentSpace:
    """The VAE's one space: Gaussian seeds and codec, with the coding statistics stored at training."""
    d = config.latent_dim
    return LatentSpace(SPACE, (d,), "gaussian", frozenset({SEED, CODEC}),
                       coding_mean=_stat(metadata, "coding_mean", 0.0, d),
                       coding_std=_stat(metadata, "coding_std", 1.0, d))


def _stat(metadata: dict[str, str], key: str, default: float, dim: int) -> tuple[float, ...] | float:
    """Per-dimension coding statistics from the metadata; the default when absent or malformed."""
    try:
        values = tuple(float(v) for v in json.loads(metadata[key]))
    except (KeyError, ValueError, TypeError):
        return default
    return values if len(values) == dim else default
