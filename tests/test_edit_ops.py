"""Point operations: edit strips, traversal grids, analogies (shapes and exact values)."""

from __future__ import annotations

import pytest
import torch

from studio.errors import InputError
from studio.ops.edit import analogy, apply_vector, batch_size, repeat_point, traverse


def _point(batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"z": torch.randn(batch, 3, 2, generator=g), "text": torch.randn(batch, 5, generator=g)}


def test_apply_vector_is_item_major_with_exact_values():
    point = _point(2)
    vector = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    strengths = [-2.0, 0.0, 0.5]
    out = apply_vector(point, "z", vector, strengths)
    assert out["z"].shape == (6, 3, 2) and out["text"].shape == (6, 5)
    for item in range(2):
        for j, s in enumerate(strengths):
            row = item * len(strengths) + j
            assert torch.equal(out["z"][row], point["z"][item] + s * vector)
            assert torch.equal(out["text"][row], point["text"][item])
    assert torch.equal(out["z"][1], point["z"][0])  # strength 0 leaves the latent as it was


def test_apply_vector_leaves_input_untouched_and_checks_shapes():
    point = _point(1)
    before = {k: v.clone() for k, v in point.items()}
    apply_vector(point, "z", torch.ones(3, 2), [1.0])
    assert all(torch.equal(point[k], before[k]) for k in point)
    with pytest.raises(InputError, match="shape"):
        apply_vector(point, "z", torch.ones(6), [1.0])
    with pytest.raises(InputError, match="no space 'w'"):
        apply_vector(point, "w", torch.ones(3, 2), [1.0])
    with pytest.raises(InputError, match="strength"):
        apply_vector(point, "z", torch.ones(3, 2), [])


def test_repeat_point_and_batch_size():
    point = _point(2)
    rep = repeat_point(point, 3)
    assert batch_size(rep) == 6
    assert torch.equal(rep["z"][2], point["z"][0]) and torch.equal(rep["z"][3], point["z"][1])
    with pytest.raises(InputError, match="batch size"):
        batch_size({"a": torch.zeros(2, 1), "b": torch.zeros(3, 1)})
    with pytest.raises(InputError):
        repeat_point(point, 0)


def test_traverse_grid_rows_are_dims_and_columns_are_steps():
    point = _point(1)
    out = traverse(point, "z", dims=[0, 5], lo=-3, hi=3, steps=4)
    assert out["z"].shape == (8, 3, 2) and out["text"].shape == (8, 5)
    values = torch.tensor([-3.0, -1.0, 1.0, 3.0])
    flat = out["z"].reshape(8, -1)
    base = point["z"].reshape(-1)
    for r, d in enumerate([0, 5]):
        for c in range(4):
            expected = base.clone()
            expected[d] = values[c]
            assert torch.allclose(flat[r * 4 + c], expected)
    assert torch.equal(out["text"][7], point["text"][0])


def test_traverse_relative_adds_to_the_item_value():
    point = _point(1)
    out = traverse(point, "z", dims=[1], lo=-1, hi=1, steps=3, relative=True)
    flat, base = out["z"].reshape(3, -1), point["z"].reshape(-1)
    assert torch.allclose(flat[:, 1], base[1] + torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(flat[:, 0], base[0].expand(3))


def test_traverse_refuses_bad_input():
    with pytest.raises(InputError, match=r"out of range.*0-5"):
        traverse(_point(1), "z", dims=[6], lo=-1, hi=1, steps=3)
    with pytest.raises(InputError, match="single item"):
        traverse(_point(2), "z", dims=[0], lo=-1, hi=1, steps=3)
    with pytest.raises(InputError, match="steps"):
        traverse(_point(1), "z", dims=[0], lo=-1, hi=1, steps=0)
    one = traverse(_point(1), "z", dims=[2], lo=0.5, hi=9, steps=1)
    assert one["z"].reshape(-1)[2] == 0.5


def test_analogy_is_a_minus_b_plus_c_in_every_space():
    a, b, c = _point(2), repeat_point({k: v[:1] for k, v in _point(2).items()}, 2), _point(2)
    c = {k: v * 2 + 1 for k, v in c.items()}
    out = analogy(a, b, c)
    for k in a:
        assert torch.equal(out[k], a[k] - b[k] + c[k])
    assert torch.allclose(analogy(a, a, c)["z"], c["z"])


def test_analogy_needs_matching_spaces_and_shapes():
    a = _point(1)
    with pytest.raises(InputError, match="different spaces"):
        analogy(a, {"z": a["z"]}, a)
    with pytest.raises(InputError, match="differ in shape"):
        analogy(a, _point(2), a)
