"""The GAN plugin of Latent Studio: DCGAN generators (MNIST trained here, pretrained faces), weight import
from DCGAN-tutorial checkpoints, and encoding by inversion. Registers backend `gan`."""

from __future__ import annotations

from collections.abc import Callable


def register(register_backend: Callable[[type], None]) -> None:
    """Entry point of group `latent_studio.backends`: register the `gan` backend."""
    from .backend import GANBackend

    register_backend(GANBackend)
