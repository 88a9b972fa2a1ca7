"""Points in latent space: drawn from seeds, encoded from images, and checked against each other."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel

from studio.contract import ENCODE, SEED, Backend, Point, Progress, no_progress
from studio.errors import InputError


def truncate_normal(z: torch.Tensor, threshold: float) -> torch.Tensor:
    """Map standard-normal draws to a normal truncated to [-threshold, threshold] by inverse CDF.

    Deterministic: the same draw gives the same truncated value, so a seed still fixes the sample.
    """
    normal = torch.distributions.Normal(0.0, 1.0)
    lo = normal.cdf(torch.tensor(-threshold, dtype=torch.float64))
    u = normal.cdf(z.double())
    u = lo + u * (1 - 2 * lo)
    return normal.icdf(u.clamp(1e-12, 1 - 1e-12)).to(z.dtype)


def random_point(backend: Backend, seeds: Sequence[int], options: BaseModel | None = None,
                 temperature: float = 1.0, truncation: float | None = None) -> Point:
    """One item per seed: every SEED-role space drawn from its prior (temperature / truncation applied to
    Gaussian priors), plus the CONDITION-role latents for these options."""
    point: Point = {}
    for name, space in backend.spaces(options).items():
        if SEED not in space.roles:
            continue
        z = backend.sample_prior(name, list(seeds), options)
        if space.prior == "gaussian":
            if truncation is not None:
                z = truncate_normal(z, truncation)
            z = z * temperature
        point[name] = z
    point.update(backend.condition(len(seeds), options))
    return point


def encode_images(backend: Backend, images: torch.Tensor, options: BaseModel | None = None, seed: int = 0,
                  progress: Progress = no_progress) -> Point:
    if ENCODE not in backend.capabilities:
        raise InputError(f"backend {backend.name!r} cannot encode images (capabilities: "
                         f"{', '.join(sorted(backend.capabilities))})")
    return backend.encode(images, options, seed=seed, progress=progress)


def concat(points: Sequence[Point]) -> Point:
    check_compatible(points)
    return {k: torch.cat([p[k] for p in points]) for k in points[0]}


def check_compatible(points: Sequence[Point]) -> None:
    keys = {tuple(sorted(p)) for p in points}
    if len(keys) > 1:
        shown = " vs ".join("+".join(k) for k in sorted(keys))
        raise InputError(f"these latents live in different spaces ({shown}); use seeds for all of them or "
                         "images for all of them")
    for k in points[0]:
        shapes = {tuple(p[k].shape[1:]) for p in points}
        if len(shapes) > 1:
            raise InputError(f"latents of space {k!r} have different shapes {sorted(shapes)}")


def batch_size(point: Point) -> int:
    return next(iter(point.values())).shape[0]


def take(point: Point, index: int | slice) -> Point:
    if isinstance(index, int):
        index = slice(index, index + 1)
    return {k: v[index] for k, v in point.items()}


def decode_batched(backend: Backend, point: Point, options: BaseModel | None = None, batch: int = 64,
                   progress: Progress = no_progress) -> torch.Tensor:
    """Decode a point in chunks, reporting progress per chunk and the backend's own steps within each chunk
    (denoising steps, per-item work), so a progress callback that raises Cancelled stops at the next step."""
    n = batch_size(point)
    chunks = max(1, (n + batch - 1) // batch)
    out = []
    for i, start in enumerate(range(0, n, batch)):
        def inner(step: int, total: int, message: str = "", preview: object = None, _i: int = i) -> None:
            if total > 0:
                progress(_i * total + step, chunks * total, message or "decoding", preview)

        out.append(backend.decode(take(point, slice(start, start + batch)), options, progress=inner))
        progress(i + 1, chunks, "decoding")
    return torch.cat(out)
