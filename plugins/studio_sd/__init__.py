"""Stable Diffusion backend plugin (diffusers). Registered through the `latent_studio.backends` entry point.

Importing this package is cheap: torch and diffusers load only when a backend is loaded or used.
"""

from __future__ import annotations

from collections.abc import Callable


def register(register_backend: Callable[[type], None]) -> None:
    """Entry-point hook: register the `sd` backend."""
    from .backend import SDBackend

    register_backend(SDBackend)


def build_tiny_sd(path, seed: int = 0):  # noqa: ANN001 - re-exported lazily, see tiny.build_tiny_sd
    """Build a tiny random SD pipeline into `path` (see studio_sd.tiny.build_tiny_sd)."""
    from .tiny import build_tiny_sd as build

    return build(path, seed=seed)


__all__ = ["build_tiny_sd", "register"]
