"""Chained edits (issue 14 item 6): one edit applies several vectors at once, each at its own strength.

The spec (`vectors: {"thick": 1.5, "slant": -1}`), the point arithmetic (studio.ops.edit.apply_vectors), the op on
the shipped vae backend with vectors stored directly (no fitting), old one-vector records replaying pixel for pixel,
and the CLI's repeatable `--vector NAME=STRENGTH`. Every backend runs the chained form in tests/test_every_op.py
(`edit_chained`).
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from studio.errors import InputError, NotFound
from studio.executor import decode_batched, execute
from studio.ops.edit import apply_vector, apply_vectors, combine_vectors
from studio.record import read_record
from studio.spec import parse_spec, spec_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SEED = 7


# ----- the spec -----

def _spec(**fields: object) -> dict:
    return {"op": "edit", "backend": "vae", "source": {"seed": 1}, **fields}


def test_spec_takes_one_vector_or_several_and_chained_strengths_default_to_0_and_1():
    one = parse_spec(_spec(vector="thick"))
    assert one.vector == "thick" and one.vectors is None and one.strengths == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert "vectors" not in spec_dict(one)  # what records carry for a one-vector edit is unchanged
    chained = parse_spec(_spec(vectors={"thick": 1.5, "slant": -1}))
    assert chained.vectors == {"thick": 1.5, "slant": -1.0} and chained.strengths == [0.0, 1.0]
    assert list(chained.vectors) == ["thick", "slant"]  # in the order given
    assert parse_spec(_spec(vectors={"thick": 1}, strengths=[-1, 1])).strengths == [-1.0, 1.0]
    assert chained.output_count() == 2


@pytest.mark.parametrize("fields, words", [
    ({}, "give `vector`"),
    ({"vector": "a", "vectors": {"b": 1}}, "one of them"),
    ({"vectors": {}}, "at least one vector"),
    ({"vectors": {"b@d": 1}}, "vector name 'b@d'"),
    ({"vectors": {"thick": "lots"}}, "vectors.thick"),
    ({"vectors": {"thick": float("nan")}}, "vector 'thick': strength nan"),
    ({"vectors": {f"v{i}": 1 for i in range(17)}}, "at most 16 vectors"),
])
def test_bad_chained_specs_are_refused_in_one_line_naming_the_vector(fields, words):
    with pytest.raises(InputError) as exc:
        parse_spec(_spec(**fields))
    message = str(exc.value)
    assert words in message and "\n" not in message and len(message) < 300, message


# ----- the point arithmetic -----

def _point() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"z": torch.randn(2, 3, 2, generator=g), "text": torch.randn(2, 5, generator=g)}


def test_chained_vectors_equal_applying_each_in_turn():
    point = _point()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    out = apply_vectors(point, combine_vectors([("a", "z", a, 1.5), ("b", "z", b, -1.0)]), [0.0, 0.5, 1.0])
    assert out["z"].shape == (6, 3, 2) and out["text"].shape == (6, 5)
    for item in range(2):
        for j, s in enumerate([0.0, 0.5, 1.0]):
            step = apply_vector(apply_vector({k: v[item:item + 1] for k, v in point.items()}, "z", a, [1.5 * s]),
                                "z", b, [-1.0 * s])  # a at 1.5 s, then b at -s: the same edit, one at a time
            assert torch.allclose(out["z"][item * 3 + j], step["z"][0], atol=1e-6)
            assert torch.equal(out["text"][item * 3 + j], point["text"][item])


def test_one_vector_at_weight_one_is_exactly_the_old_edit_and_spaces_combine_apart():
    point = _point()
    v = torch.randn(3, 2, generator=torch.Generator().manual_seed(2))
    old = apply_vector(point, "z", v, [-2.0, 0.0, 1.0])
    assert torch.equal(apply_vectors(point, combine_vectors([("v", "z", v, 1.0)]), [-2.0, 0.0, 1.0])["z"], old["z"])
    t = torch.ones(5)
    both = apply_vectors(point, combine_vectors([("v", "z", v, 1.0), ("t", "text", t, 2.0)]), [1.0])
    assert torch.equal(both["z"], old["z"][2::3]) and torch.equal(both["text"], point["text"] + 2.0)
    with pytest.raises(InputError, match="vector 'w' has shape"):
        combine_vectors([("v", "z", v, 1.0), ("w", "z", torch.ones(6), 1.0)])
    with pytest.raises(InputError, match="no space 'w'"):
        apply_vectors(point, {"w": t}, [1.0])
    with pytest.raises(InputError, match="strength"):
        apply_vectors(point, {"z": v}, [])


# ----- the op on the vae backend -----

@pytest.fixture(scope="module")
def vae(runtime):
    """The vae backend with two stored vectors `ce-a` and `ce-b` in its space `z` (random, saved directly)."""
    from studio.vectorstore import save_vector

    backend = runtime.get_backend("vae", None)
    shape = backend.spaces(backend.parse_options({}))["z"].shape
    g = torch.Generator().manual_seed(3)
    vectors = {name: torch.randn(*shape, generator=g) for name in ("ce-a", "ce-b")}
    for name, v in vectors.items():
        save_vector(runtime.settings, "vae", backend.model.sha256, name, v, {"space": "z"})
    return backend, vectors


def _pixels(result, prefix: str = "edit_") -> list[torch.Tensor]:
    out = []
    for a in sorted((a for a in result.artifacts if a.name.startswith(prefix)), key=lambda a: a.name):
        with Image.open(io.BytesIO(a.data)) as im:
            out.append(torch.tensor(list(im.getdata()), dtype=torch.float32))
    return out


def _expected(backend, direction: torch.Tensor, strengths: list[float]) -> list[torch.Tensor]:
    """The images of seed SEED moved along `direction` at each strength, computed here without the op."""
    from studio import images as imgs
    from studio.points import random_point

    opts = backend.parse_options({})
    point = apply_vector(random_point(backend, [SEED], opts), "z", direction, strengths)
    return [torch.tensor(list(im.getdata()), dtype=torch.float32)
            for im in imgs.to_pil(decode_batched(backend, point, opts))]


def test_a_chained_edit_renders_the_weighted_sum_of_its_vectors(runtime, vae):
    backend, vectors = vae
    result = execute(_spec(source={"seed": SEED}, vectors={"ce-a": 1.5, "ce-b": -1.0}), runtime)
    got = _pixels(result)
    want = _expected(backend, 1.5 * vectors["ce-a"] - vectors["ce-b"], [0.0, 1.0])
    assert len(got) == 2 and {a.name for a in result.artifacts} >= {"strip.png"}
    for g, w in zip(got, want, strict=True):
        assert (g - w).abs().max() <= 1  # one grey level: the sum is formed in another order
    assert (got[1] - got[0]).abs().mean() > 1  # and it is an edit
    record = read_record(Image.open(io.BytesIO(next(a.data for a in result.artifacts if a.name == "edit_001.png"))))
    assert record["item"]["vectors"] == {"ce-a": 1.5, "ce-b": -1.0} and record["spec"]["vectors"]["ce-b"] == -1.0
    assert result.metrics["vectors"] == {"ce-a": 1.5, "ce-b": -1.0} and result.metrics["spaces"] == {"ce-a": "z",
                                                                                                     "ce-b": "z"}
    # the strip scales the combination: {a: 2} at 0.5 is a at 1, exactly
    half = execute(_spec(source={"seed": SEED}, vectors={"ce-a": 2.0}, strengths=[0.0, 0.5, 1.0]), runtime)
    plain = execute(_spec(source={"seed": SEED}, vector="ce-a", strengths=[0.0, 1.0, 2.0]), runtime)
    assert all(torch.equal(a, b) for a, b in zip(_pixels(half), _pixels(plain), strict=True))


def test_a_missing_vector_of_a_chained_edit_is_named(runtime, vae):
    with pytest.raises(NotFound, match="no vector 'ce-missing'"):
        execute(_spec(source={"seed": SEED}, vectors={"ce-a": 1.0, "ce-missing": 2.0}), runtime)


def test_an_old_one_vector_record_replays_identically(runtime, vae):
    """A record written before chained edits (no `vectors` key) is still valid, keeps its exact spec, and renders
    the same pixels as the one-vector edit computed directly."""
    backend, vectors = vae
    legacy = {"op": "edit", "backend": "vae", "options": {}, "vector": "ce-a", "strengths": [-2.0, 0.0, 1.5],
              "source": {"seed": SEED}}
    assert spec_dict(parse_spec(legacy)) == legacy
    result = execute(legacy, runtime)
    assert all(torch.equal(g, w) for g, w in
               zip(_pixels(result), _expected(backend, vectors["ce-a"], legacy["strengths"]), strict=True))
    png = next(a.data for a in result.artifacts if a.name == "edit_002.png")
    record = read_record(Image.open(io.BytesIO(png)))
    assert record["spec"] == legacy and record["item"] == {"name": "edit_002.png", "index": 2, "strength": 1.5}
    again = execute(record["spec"], runtime)  # what `studio replay` submits
    assert [a.data for a in again.artifacts if a.name.startswith("edit_")] == \
        [a.data for a in result.artifacts if a.name.startswith("edit_")]


# ----- the CLI -----

def _cli(capsys, *args: str) -> tuple[int, str]:
    from studio.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0), capsys.readouterr().err


def test_cli_vector_is_repeatable_and_a_bare_name_keeps_its_meaning():
    from studio.cli.ops import edit

    chained = edit(backend="vae", vector=["thick=1.5", "slant=-1"], seed=3)
    assert chained["vectors"] == {"thick": 1.5, "slant": -1.0} and "vector" not in chained
    assert chained["strengths"] is None  # the spec's default for a chained edit: [0, 1]
    assert edit(backend="vae", vector=["thick=2"], strengths="0,0.5,1", seed=3)["strengths"] == [0.0, 0.5, 1.0]
    old = edit(backend="vae", vector=["thick"], strengths="-1,1", seed=3)
    assert old["vector"] == "thick" and old["strengths"] == [-1.0, 1.0] and "vectors" not in old
    assert edit(backend="vae", vector=["thick"], seed=3)["strengths"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    for args, words in ((["thick=lots"], "--vector 'thick=lots': the strength of 'thick' is not a number"),
                        (["thick", "slant"], "--vector 'thick': give NAME=STRENGTH"),
                        (["thick=1", "=2"], "--vector '=2'"),
                        (["thick=1", "thick=2"], "--vector 'thick' is given twice")):
        with pytest.raises(InputError) as exc:
            edit(backend="vae", vector=args, seed=3)
        assert words in str(exc.value), exc.value


def test_cli_runs_a_chained_edit_and_refuses_a_bad_one_in_one_line(capsys, tmp_path, vae):
    code, err = _cli(capsys, "run", "edit", "--backend", "vae", "--vector", "ce-a=1.5", "--vector", "ce-b=-1",
                     "--seed", str(SEED), "--out", str(tmp_path))
    assert code == 0, err
    record = read_record(tmp_path / "edit_001.png")
    assert record["spec"]["vectors"] == {"ce-a": 1.5, "ce-b": -1.0} and record["spec"]["strengths"] == [0.0, 1.0]
    code, err = _cli(capsys, "run", "edit", "--backend", "vae", "--vector", "ce-a=1", "--vector", "b@d=2",
                     "--seed", "1", "--out", str(tmp_path / "bad"))
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (main() twice warns of commands)
    assert code == 2 and len(errors) == 1 and "vector name 'b@d'" in errors[0], err


# ----- the UI's helpers (studio.ui.tabs.edit, studio.ui.tabs.toolbox) -----

def test_edit_tab_combines_the_main_vector_with_the_picked_ones_in_order():
    from studio.ui.tabs.edit import MAX_MORE, combined_vectors, more_sliders, strength_line

    assert combined_vectors("thick", 2, ["slant", "thick", "round"], [-1.0, 0.5, 0.25]) == \
        {"thick": 2.0, "slant": -1.0, "round": 0.25}  # the main vector is not added twice
    assert combined_vectors("thick", 2, None, []) == {"thick": 2.0}
    assert strength_line({"thick": 2.0, "slant": -1.0}) == "thick +2.00, slant -1.00"
    shown = more_sliders(["round", "slant"], ["slant", "round"], [-1.0, 0.5, 1.0, 1.0])
    assert [(u["visible"], u.get("label"), u["value"]) for u in shown[:3]] == \
        [(True, "Strength of round", 0.5), (True, "Strength of slant", -1.0), (False, None, 1.0)]
    assert len(shown) == MAX_MORE and more_sliders(["new"], [], [3.0] * MAX_MORE)[0]["value"] == 1.0


def test_toolbox_keyframes_take_seeds_and_image_slots(settings, tmp_path):
    from studio.ui.tabs.toolbox import parse_keyframes, source_of

    png = tmp_path / "k.png"
    Image.new("L", (8, 8), 200).save(png)
    keys = parse_keyframes("4, img2, 9", [None, str(png), None], settings)
    assert keys[0] == {"seed": 4} and set(keys[1]) == {"image"} and keys[2] == {"seed": 9}
    assert source_of("Seed", 3, None, settings, "A") == {"seed": 3}
    for text, images, words in (("1", [None], "at least two"), ("1, img4", [None] * 3, "'img4' is no image slot"),
                                ("1, x", [None], "'x' is neither a seed"), ("1, img1", [None], "upload one")):
        with pytest.raises(InputError) as exc:
            parse_keyframes(text, images, settings)
        assert words in str(exc.value) and "\n" not in str(exc.value), exc.value
