"""Point operations: edit along a vector (or several at once), traverse single dimensions, analogies.

A point is a dict from space name to a batch-first tensor (see `studio.contract`). Every function returns
a new point and leaves its input untouched; spaces an operation does not touch are repeated so that
every space keeps the same batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from studio.contract import Point
from studio.errors import InputError


def batch_size(point: Point) -> int:
    """The batch size shared by every space of a point."""
    sizes = {name: int(t.shape[0]) for name, t in point.items()}
    if not sizes:
        raise InputError("the point holds no latent space")
    if len(set(sizes.values())) != 1:
        raise InputError(f"the spaces of a point differ in batch size: {sizes}")
    return next(iter(sizes.values()))


def repeat_point(point: Point, k: int) -> Point:
    """Each item repeated k times in place (item-major): [a, b] -> [a, a, b, b] for k = 2."""
    if k < 1:
        raise InputError(f"repeat count must be at least 1, got {k}")
    return {name: t.repeat_interleave(k, dim=0) for name, t in point.items()}


def _space(point: Point, space: str) -> torch.Tensor:
    if space not in point:
        raise InputError(f"the point has no space {space!r} (it has {', '.join(sorted(point)) or 'none'})")
    return point[space]


def apply_vector(point: Point, space: str, vector: torch.Tensor, strengths: Sequence[float]) -> Point:
    """point[space] + s * vector for each strength s, item-major: B items x S strengths = B*S entries."""
    latents = _space(point, space)
    batch_size(point)
    strengths = [float(s) for s in strengths]
    if not strengths:
        raise InputError("give at least one strength")
    if tuple(vector.shape) != tuple(latents.shape[1:]):
        raise InputError(f"the vector has shape {tuple(vector.shape)} but space {space!r} has shape "
                         f"{tuple(latents.shape[1:])}")
    s = torch.tensor(strengths, dtype=latents.dtype).view(1, -1, *([1] * vector.dim()))
    edited = latents.unsqueeze(1) + s * vector.to(latents.dtype).unsqueeze(0).unsqueeze(0)
    out = repeat_point(point, len(strengths))
    out[space] = edited.reshape(-1, *latents.shape[1:])
    return out


def traverse(point: Point, space: str, dims: Sequence[int], lo: float, hi: float, steps: int,
             relative: bool = False) -> Point:
    """A traversal grid for a single-item point: rows are `dims`, columns are `steps` values from lo to hi.

    `dims` index the flattened latent of `space`. Each entry sets that one element to the value (or adds
    the value to it when `relative`); every other element keeps the item's value. Entry r * steps + c is
    row r, column c.
    """
    latents = _space(point, space)
    if batch_size(point) != 1:
        raise InputError(f"traverse takes a single item, got a batch of {latents.shape[0]}")
    dims = [int(d) for d in dims]
    size = latents[0].numel()
    if not dims:
        raise InputError("give at least one dimension to traverse")
    bad = [d for d in dims if not 0 <= d < size]
    if bad:
        raise InputError(f"dimensions {bad} are out of range for space {space!r} with {size} elements (0-{size - 1})")
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    values = torch.linspace(float(lo), float(hi), steps, dtype=latents.dtype) if steps > 1 else \
        torch.tensor([float(lo)], dtype=latents.dtype)
    grid = latents.reshape(1, -1).repeat(len(dims) * steps, 1)
    for r, d in enumerate(dims):
        rows = slice(r * steps, (r + 1) * steps)
        grid[rows, d] = grid[rows, d] + values if relative else values
    out = repeat_point(point, len(dims) * steps)
    out[space] = grid.reshape(-1, *latents.shape[1:])
    return out


def analogy(a: Point, b: Point, c: Point) -> Point:
    """a - b + c in every space ("b is to a as c is to ?"); the three points must match in keys and shapes."""
    if set(a) != set(b) or set(a) != set(c):
        raise InputError(f"analogy points hold different spaces: {sorted(a)}, {sorted(b)}, {sorted(c)}")
    for name in a:
        shapes = {tuple(p[name].shape) for p in (a, b, c)}
        if len(shapes) != 1:
            raise InputError(f"analogy points differ in shape in space {name!r}: {sorted(shapes)}")
    return {name: a[name] - b[name] + c[name] for name in a}


def combine_vectors(terms: Sequence[tuple[str, str, torch.Tensor, float]]) -> dict[str, torch.Tensor]:
    """One direction per latent space from (name, space, vector, weight) terms: the weighted sum of the vectors that
    live in that space, in the order given. Vectors of one space must share its shape."""
    if not terms:
        raise InputError("give at least one vector")
    out: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, space, vector, weight in terms:
        shape = tuple(vector.shape)
        first = shapes.setdefault(space, (name, shape))
        if first[1] != shape:
            raise InputError(f"vector {name!r} has shape {shape}, but vector {first[0]!r} of the same space "
                             f"{space!r} has {first[1]}")
        term = float(weight) * vector.to(torch.float32)
        out[space] = term if space not in out else out[space] + term
    return out


def apply_vectors(point: Point, directions: dict[str, torch.Tensor], strengths: Sequence[float]) -> Point:
    """point[space] + s * directions[space] in every space of `directions` for each strength s, item-major (as
    `apply_vector`, which this equals for one space): B items x S strengths = B*S entries."""
    if not directions:
        raise InputError("give at least one vector")
    strengths = [float(s) for s in strengths]
    if not strengths:
        raise InputError("give at least one strength")
    for space, direction in directions.items():
        latents = _space(point, space)
        if tuple(direction.shape) != tuple(latents.shape[1:]):
            raise InputError(f"the direction of space {space!r} has shape {tuple(direction.shape)} but the space has "
                             f"shape {tuple(latents.shape[1:])}")
    batch_size(point)
    out = repeat_point(point, len(strengths))
    for space, direction in directions.items():
        latents = point[space]
        s = torch.tensor(strengths, dtype=latents.dtype).view(1, -1, *([1] * direction.dim()))
        edited = latents.unsqueeze(1) + s * direction.to(latents.dtype).unsqueeze(0).unsqueeze(0)
        out[space] = edited.reshape(-1, *latents.shape[1:])
    return out
