"""The core's own ops, each declared once (spec, traits and handler in one class), registered through the
`latent_studio.ops` entry point `builtin`, exactly as a plugin's ops are. Nothing here imports torch at import."""

from __future__ import annotations

from collections.abc import Callable

from studio.builtin_ops.codec import RoundtripSpec
from studio.builtin_ops.generate import (
    AnalogySpec,
    EditSpec,
    Img2ImgSpec,
    InterpolateSpec,
    SampleSpec,
    TraverseSpec,
    WalkSpec,
)
from studio.builtin_ops.grid import GridSpec
from studio.builtin_ops.latent import AnomaliesSpec, EvaluateSpec, FitVectorSpec, ProjectSpec
from studio.builtin_ops.train import TrainSpec

BUILTIN = (SampleSpec, Img2ImgSpec, InterpolateSpec, EditSpec, TraverseSpec, AnalogySpec, RoundtripSpec, FitVectorSpec,
           EvaluateSpec, WalkSpec, ProjectSpec, AnomaliesSpec, TrainSpec, GridSpec)


def register(register_op: Callable[[type], None]) -> None:
    """The entry-point hook of the core's ops."""
    for cls in BUILTIN:
        register_op(cls)


__all__ = ["BUILTIN", "register", *(cls.__name__ for cls in BUILTIN)]
