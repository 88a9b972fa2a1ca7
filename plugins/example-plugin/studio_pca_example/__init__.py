"""An example third-party plugin: a linear (PCA) latent model of the scikit-learn digits.

It shows the whole contract in one small file: declare spaces and capabilities, implement
sample_prior (inherited), encode and decode. Every studio operation then works on it. Importing it is cheap:
torch loads only with a model, so `studio plugins` and `studio submit` never pay for it (declare the spaces a
model has in `model_spaces` and `model_image_shape` so listings show them without loading).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, ClassVar

from studio.contract import CODEC, DECODE, ENCODE, SAMPLE, SEED, Backend, LatentSpace, ModelInfo, no_progress
from studio.errors import InputError, NotFound

if TYPE_CHECKING:
    import torch

LATENT = 16
SHAPE = (1, 28, 28)


class PCABackend(Backend):
    """Whitened PCA coordinates of 28x28 digits: z ~ N(0, I) decodes to a digit-like image."""

    name: ClassVar[str] = "pca"
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = "Example plugin: PCA of the scikit-learn digits (16 components)."
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE, ENCODE, DECODE})

    @classmethod
    def available_models(cls, settings) -> list[ModelInfo]:
        digest = hashlib.sha256(f"sklearn-digits-pca-{LATENT}".encode()).hexdigest()
        return [ModelInfo("digits", "sklearn:load_digits", digest, "PCA fitted at load time (deterministic)")]

    @classmethod
    def load(cls, model, settings, device="cpu", dtype="float32") -> PCABackend:
        models = {m.name: m for m in cls.available_models(settings)}
        if model not in (None, *models):
            raise NotFound(f"pca has no model {model!r} (available: {', '.join(models)})")
        import numpy as np
        import torch
        from sklearn.decomposition import PCA

        from studio.datasets import load_dataset

        x = load_dataset("digits", "train", settings=settings).images.reshape(-1, 28 * 28).numpy()
        pca = PCA(n_components=LATENT, random_state=0).fit(x)
        backend = cls(models["digits"], device, dtype)
        backend._mean = torch.from_numpy(pca.mean_.astype(np.float32))
        scale = np.sqrt(pca.explained_variance_).astype(np.float32)
        backend._basis = torch.from_numpy(pca.components_.astype(np.float32) * scale[:, None])  # z -> pixels
        backend._inverse = torch.from_numpy((pca.components_ / scale[:, None]).astype(np.float32))  # pixels -> z
        return backend

    @classmethod
    def model_spaces(cls, model, settings) -> dict[str, LatentSpace]:
        """Every model has the same space, known without loading it."""
        return {"z": LatentSpace("z", (LATENT,), "gaussian", frozenset({SEED, CODEC}))}

    @classmethod
    def model_image_shape(cls, model, settings) -> tuple[int, int, int]:
        return SHAPE

    def spaces(self, options=None) -> dict[str, LatentSpace]:
        return self.model_spaces(self.model, None)

    def image_shape(self, options=None) -> tuple[int, int, int]:
        return SHAPE

    def decode(self, point, options=None, progress=no_progress) -> torch.Tensor:
        z = point["z"]
        if z.dim() != 2 or z.shape[1] != LATENT:
            raise InputError(f"pca latents have shape (N, {LATENT}), got {tuple(z.shape)}")
        return (self._mean + z.float() @ self._basis).clamp(-1, 1).reshape(-1, 1, 28, 28)

    def encode(self, images, options=None, seed=0, progress=no_progress):
        if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28):
            raise InputError(f"pca encodes images of shape (N, 1, 28, 28), got {tuple(images.shape)}")
        return {"z": (images.reshape(-1, 28 * 28).float() - self._mean) @ self._inverse.T}


def register(register_backend) -> None:
    """The entry-point hook: Latent Studio calls it with a function that registers backend classes."""
    register_backend(PCABackend)
