"""One small parameterised toy backend for tests, to be broken on purpose.

`toy_backend(**faults)` returns a loaded instance of a linear model: 8-d latents decode to 1x8x8 images by
tanh(z @ W + b), and encode inverts that exactly. It has a seed space `noise` and a codec space `z`, so seed,
codec and img2img points are all distinct. Capabilities default to SAMPLE, ENCODE, DECODE; add TEXT, IMG2IMG
or TRAIN with the flags. Each fault breaks one part of the contract:

- batch_dependent: an item's image depends on the other items of its batch (like batch statistics);
- coding_std_scale: the declared coding_std of `z` is this many times the true one;
- raw_errors: wrong-shaped input reaches torch unchecked and fails with torch's own errors;
- text_options=False: a TEXT toy whose Options do not subclass TextOptions;
- ignores_strength: img2img ignores the `strength` option;
- train_writes="garbage": train writes a file that is not safetensors.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from studio.contract import (
    CODEC,
    DECODE,
    ENCODE,
    IMG2IMG,
    SAMPLE,
    SEED,
    TEXT,
    TRAIN,
    Backend,
    LatentSpace,
    ModelInfo,
    TextOptions,
    no_progress,
)
from studio.errors import InputError

LATENT, SIDE = 8, 8
NOISE, CODE = "noise", "z"


class ToyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strength: float = Field(0.5, ge=0.0, le=1.0)


class ToyTextOptions(TextOptions):
    strength: float = Field(0.5, ge=0.0, le=1.0)


class LooseTextOptions(ToyOptions):
    """Text fields written out by hand instead of subclassing TextOptions (the fault `text_options=False`)."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20


def _weights(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(LATENT, SIDE * SIDE, generator=g) * 0.3, torch.randn(SIDE * SIDE, generator=g) * 0.1


class ToyBackend(Backend):
    """The correct toy; `toy_backend()` subclasses it with faults and capabilities."""

    name: ClassVar[str] = "toy"
    version: ClassVar[str] = "0.1.0"
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE, ENCODE, DECODE})
    Options: ClassVar[type[BaseModel]] = ToyOptions
    faults: ClassVar[dict] = {}

    def __init__(self, model: ModelInfo) -> None:
        super().__init__(model)
        self.weight, self.bias = _weights()
        self.inverse = torch.linalg.pinv(self.weight)

    @classmethod
    def available_models(cls, settings) -> list[ModelInfo]:
        return [ModelInfo("linear", "", hashlib.sha256(b"toy-linear").hexdigest())]

    @classmethod
    def load(cls, model, settings, device="cpu", dtype="float32") -> ToyBackend:
        return cls(cls.available_models(settings)[0])

    @classmethod
    def train(cls, dataset, epochs, out, seed, settings, progress=no_progress, limit=None, **kwargs) -> dict:
        """Fit W to the dataset's principal directions (one pass) and write it as safetensors."""
        import torch.nn.functional as F

        from studio.datasets import load_dataset
        from studio.safetensors_io import save_weights

        if TRAIN not in cls.capabilities:
            raise NotImplementedError("toy cannot train")
        x = F.interpolate(load_dataset(dataset, "train", limit=limit, settings=settings).images, size=(SIDE, SIDE),
                          mode="bilinear", align_corners=False).flatten(1)
        mean = x.mean(0)
        _, s, v = torch.linalg.svd(x - mean, full_matrices=False)
        if cls.faults.get("train_writes") == "garbage":
            with open(out, "wb") as f:
                f.write(b"not a safetensors file")
        else:
            save_weights(out, {"weight": (v[:LATENT] * s[:LATENT, None]).contiguous(), "bias": mean})
        return {"train_images": len(x), "explained": round(float((s[:LATENT] ** 2).sum() / (s ** 2).sum()), 4)}

    def spaces(self, options=None) -> dict[str, LatentSpace]:
        std = float(self.faults.get("coding_std_scale", 1.0))
        return {NOISE: LatentSpace(NOISE, (LATENT,), "gaussian", frozenset({SEED})),
                CODE: LatentSpace(CODE, (LATENT,), "none", frozenset({CODEC}), coding_mean=0.0, coding_std=std)}

    def image_shape(self, options=None) -> tuple[int, int, int]:
        return (1, SIDE, SIDE)

    def _latent(self, point: dict, options) -> torch.Tensor:
        o = options or self.Options()
        if not self.faults.get("raw_errors"):
            for name, z in point.items():
                if name not in (NOISE, CODE) or z.dim() != 2 or z.shape[1] != LATENT:
                    raise InputError(f"toy latents are {NOISE!r} or {CODE!r} of shape (n, {LATENT}); got {name!r} "
                                     f"of shape {tuple(z.shape)}")
        if NOISE in point and CODE in point:
            strength = 0.5 if self.faults.get("ignores_strength") else o.strength
            z = (1 - strength) * point[CODE] + strength * point[NOISE]
        else:
            z = point[NOISE] if NOISE in point else point[CODE]
        prompt = getattr(o, "prompt", "")
        if prompt:  # a prompt shifts the latent along a direction of its own
            z = z + 0.5 * torch.randn(LATENT, generator=torch.Generator("cpu").manual_seed(zlib.crc32(prompt.encode())))
        return z

    def decode(self, point, options=None, progress=no_progress) -> torch.Tensor:
        pre = self._latent(point, options) @ self.weight + self.bias
        if self.faults.get("batch_dependent"):
            pre = pre - 0.5 * pre.mean(0, keepdim=True)
        return torch.tanh(pre).reshape(-1, 1, SIDE, SIDE)

    def encode(self, images, options=None, seed=0, progress=no_progress) -> dict:
        if ENCODE not in self.capabilities:
            raise NotImplementedError("toy cannot encode")
        if not self.faults.get("raw_errors") and (images.dim() != 4 or tuple(images.shape[1:]) != (1, SIDE, SIDE)):
            raise InputError(f"toy encodes images of shape (n, 1, {SIDE}, {SIDE}), got {tuple(images.shape)}")
        pre = torch.atanh(images.reshape(images.shape[0], -1).clamp(-0.999999, 0.999999)) - self.bias
        return {CODE: pre @ self.inverse}


def toy_backend(*, text: bool = False, img2img: bool = False, train: bool = False, encode: bool = True,
                **faults: object) -> ToyBackend:
    """A loaded toy with these capabilities and faults (see the module docstring)."""
    known = {"batch_dependent", "coding_std_scale", "raw_errors", "text_options", "ignores_strength", "train_writes"}
    assert set(faults) <= known, f"unknown toy faults {sorted(set(faults) - known)}"
    capabilities = {SAMPLE, DECODE} | {c for c, on in ((ENCODE, encode), (TEXT, text), (IMG2IMG, img2img),
                                                         (TRAIN, train)) if on}
    options = ToyOptions if not text else ToyTextOptions if faults.get("text_options", True) else LooseTextOptions
    cls = type("Toy", (ToyBackend,), {"capabilities": frozenset(capabilities), "Options": options,
                                      "faults": dict(faults)})
    return cls.load(None, None)
