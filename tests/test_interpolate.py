"""lerp and slerp: the specified behaviour, edge cases included."""

import math

import pytest
import torch

from studio.ops.interpolate import interpolate, lerp, slerp, steps


def gaussian(seed: int, d: int = 64) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def test_endpoints_are_exact():
    a, b = gaussian(1), gaussian(2)
    for fn in (lerp, slerp):
        out = fn(a, b, [0.0, 1.0])
        assert torch.allclose(out[0], a, atol=1e-5) and torch.allclose(out[1], b, atol=1e-5)


def test_slerp_keeps_the_norm_and_lerp_drops_it():
    drops, keeps = [], []
    for s in range(50):
        a, b = gaussian(2 * s, 256), gaussian(2 * s + 1, 256)
        ends = (a.norm() + b.norm()) / 2
        keeps.append(float(slerp(a, b, [0.5])[0].norm() / ends))
        drops.append(float(lerp(a, b, [0.5])[0].norm() / ends))
    assert all(abs(k - 1) < 0.02 for k in keeps)
    assert abs(sum(drops) / len(drops) - 1 / math.sqrt(2)) < 0.03


def test_slerp_follows_the_great_circle():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(a, b, [0.5])[0]
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)


def test_t_outside_unit_interval_extrapolates():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(lerp(a, b, [2.0])[0], torch.tensor([-1.0, 2.0]))
    beyond = slerp(a, b, [2.0])[0]  # keeps rotating: 180 degrees from a, norm 1
    assert torch.allclose(beyond, torch.tensor([-1.0, 0.0]), atol=1e-6)
    before = slerp(a, b, [-1.0])[0]
    assert torch.allclose(before, torch.tensor([0.0, -1.0]), atol=1e-6)


def test_norm_extrapolation_is_clamped_at_zero():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 1.0])
    assert slerp(a, b, [5.0])[0].norm() == 0


def test_nearly_parallel_vectors_fall_back_smoothly():
    a = gaussian(3)
    b = a * 1.5 + 1e-7 * gaussian(4)
    out = slerp(a, b, steps(5))
    assert torch.isfinite(out).all()
    norms = out.norm(dim=1)
    assert torch.allclose(norms, torch.linspace(float(a.norm()), float(b.norm()), 5), rtol=1e-4)


def test_antipodal_vectors_take_a_defined_path_on_the_shell():
    a = gaussian(5)
    b = -a
    out = slerp(a, b, steps(9))
    assert torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=1), a.norm().expand(9), rtol=1e-5)
    assert torch.allclose(out[4] @ a, torch.tensor(0.0), atol=1e-3)  # the midpoint is orthogonal to both ends
    assert torch.equal(out, slerp(a, b, steps(9)))  # the choice is deterministic


def test_zero_vector_end():
    a = gaussian(6)
    out = slerp(a, torch.zeros_like(a), [0.0, 0.5, 1.0])
    assert torch.allclose(out[1], a / 2, atol=1e-6) and out[2].norm() == 0


def test_shapes_are_kept_for_tensor_latents():
    a, b = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    assert slerp(a, b, [0.0, 0.3, 1.0]).shape == (3, 4, 8, 8)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown interpolation method"):
        interpolate(gaussian(1), gaussian(2), [0.5], "cubic")
