"""lerp and slerp between latents, with their edge cases specified.

Both take tensors `a`, `b` of the same shape (one latent each, any shape) and a sequence of `t`, and
return a stack of len(t) latents.

- lerp(a, b, t) = (1 - t) a + t b, for any real t (t outside [0, 1] extrapolates along the line).
- slerp moves the *direction* along the great circle from a to b and the *norm* linearly from |a| to |b|:
  slerp(a, b, t) = ((1 - t)|a| + t|b|) * (sin((1 - t)θ) â + sin(tθ) b̂) / sin θ, θ the angle between them.
  * t outside [0, 1] keeps rotating along the same circle; the norm extrapolates and is clamped at 0.
  * nearly parallel (θ < 1e-4 rad): the direction is the normalised lerp of the directions.
  * antipodal (π - θ < 1e-4 rad): the circle is not unique; the studio picks the one through the axis of
    `a` that is closest to orthogonal to it (a deterministic choice), so the path stays on the shell.
  * a zero vector: the direction of the other end is used (lerp when both are zero).
Midpoints of slerp keep the norm of the endpoints; lerp's midpoint between independent Gaussian samples
drops it by about 1/sqrt(2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PARALLEL_EPS = 1e-4


def lerp(a: torch.Tensor, b: torch.Tensor, ts: Sequence[float]) -> torch.Tensor:
    t = torch.tensor(list(ts), dtype=a.dtype).view(-1, *([1] * a.dim()))
    return (1 - t) * a.unsqueeze(0) + t * b.unsqueeze(0)


def _orthogonal_direction(u: torch.Tensor) -> torch.Tensor:
    """A unit vector orthogonal to unit vector u (flattened), chosen deterministically."""
    axis = torch.zeros_like(u)
    axis[int(torch.argmin(u.abs()))] = 1.0
    v = axis - (axis @ u) * u
    return v / v.norm()


def slerp(a: torch.Tensor, b: torch.Tensor, ts: Sequence[float]) -> torch.Tensor:
    shape = a.shape
    af, bf = a.reshape(-1).double(), b.reshape(-1).double()
    na, nb = af.norm(), bf.norm()
    if na == 0 and nb == 0:
        return lerp(a, b, ts)
    ua = af / na if na > 0 else bf / nb
    ub = bf / nb if nb > 0 else ua
    cos = torch.clamp(ua @ ub, -1.0, 1.0)
    theta = float(torch.arccos(cos))
    out = []
    for t in ts:
        norm = max(0.0, float((1 - t) * na + t * nb))
        if theta < PARALLEL_EPS:
            d = (1 - t) * ua + t * ub
            d = d / d.norm() if d.norm() > 0 else ua
        elif math.pi - theta < PARALLEL_EPS:
            v = _orthogonal_direction(ua)
            d = math.cos(t * math.pi) * ua + math.sin(t * math.pi) * v
        else:
            d = (math.sin((1 - t) * theta) * ua + math.sin(t * theta) * ub) / math.sin(theta)
        out.append((norm * d).to(a.dtype).reshape(shape))
    return torch.stack(out)


def interpolate(a: torch.Tensor, b: torch.Tensor, ts: Sequence[float], method: str) -> torch.Tensor:
    if method == "lerp":
        return lerp(a, b, ts)
    if method == "slerp":
        return slerp(a, b, ts)
    raise ValueError(f"unknown interpolation method {method!r} (use lerp or slerp)")


def steps(n: int) -> list[float]:
    """n evenly spaced t values from 0 to 1 inclusive."""
    return [0.0] if n == 1 else [i / (n - 1) for i in range(n)]
