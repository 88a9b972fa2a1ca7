"""The built-in VAE backend: registered through the `latent_studio.backends` entry point like any plugin."""

from __future__ import annotations

from collections.abc import Callable


def register(register_backend: Callable[[type], None]) -> None:
    """Entry-point hook: register the VAE backend class."""
    from .backend import VAEBackend

    register_backend(VAEBackend)
