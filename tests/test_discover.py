"""Discovered directions (studio.ops.discover, `studio vectors discover`): orthonormal, ordered by how much they
change the image, stored as ordinary vectors that the edit op applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.config import Settings
from studio.errors import InputError
from studio.ops.discover import choose_method, discover, orthonormal_rows, save_discovery
from studio.ops.edit import apply_vector

pytestmark = pytest.mark.usefixtures("one_torch_thread")
K = 8




def test_orthonormal_rows_keep_the_first_direction_and_refuse_dependent_rows() -> None:
    rows = np.array([[3.0, 0.0, 0.0], [1.0, 2.0, 0.0], [1.0, 1.0, -5.0]])
    q = orthonormal_rows(rows)
    assert q @ q.T == pytest.approx(np.eye(3), abs=1e-12)
    assert q[0] == pytest.approx([1.0, 0.0, 0.0]) and q[1] == pytest.approx([0.0, 1.0, 0.0])
    assert q[2][np.abs(q[2]).argmax()] > 0  # signed: largest-magnitude element positive
    with pytest.raises(InputError, match="linearly dependent"):
        orthonormal_rows(np.array([[1.0, 2.0], [2.0, 4.0]]))


@pytest.mark.parametrize("backend, method", [("vae", "encoded"), ("gan", "features")])
def test_discovered_directions_are_orthonormal_and_ordered(runtime, settings: Settings, backend: str,
                                                           method: str) -> None:
    """On the shipped MNIST models: K orthonormal directions, and the same step changes the decoded image more
    along direction 0 than along direction K-1."""
    model = runtime.get_backend(backend, "mnist")
    found = discover(model, K, n=800, settings=settings)
    assert found.method == method and found.directions.shape == (K, *model.space_for("seed").shape)
    d = found.directions.flatten(1).double()
    assert d @ d.T == pytest.approx(torch.eye(K, dtype=torch.float64), abs=1e-5)
    assert found.explained == sorted(found.explained, reverse=True) and 0 < sum(found.explained) <= 1
    base = {found.space: model.sample_prior(found.space, range(500, 532))}
    before = model.decode(base)

    def change(i: int) -> float:
        return float(((model.decode(apply_vector(base, found.space, found.directions[i], [2.0])) - before) ** 2).mean())

    assert change(0) > change(K - 1), (change(0), change(K - 1))


def test_discovered_vectors_are_stored_and_the_edit_op_applies_them(runtime, settings: Settings) -> None:
    from studio.executor import execute
    from studio.vectorstore import list_vectors, load_vector

    vae = runtime.get_backend("vae", "mnist")
    found = discover(vae, 3, n=300, settings=settings)
    names = save_discovery(found, vae, settings, prefix="disc")
    assert names == ["disc0", "disc1", "disc2"]
    listed = {r["name"]: r for r in list_vectors(settings, "vae")}
    assert listed["disc1"]["method"] == "discover-encoded" and listed["disc1"]["index"] == 1
    vector, meta = load_vector(settings, "vae", vae.model.sha256, "disc0")
    assert torch.equal(vector, found.directions[0]) and meta["space"] == found.space
    result = execute({"op": "edit", "backend": "vae", "model": "mnist", "vector": "disc0", "source": {"seed": 4},
                      "strengths": [-3.0, 0.0, 3.0]}, runtime)
    assert len([a for a in result.artifacts if a.name.startswith("edit_")]) == 3


def test_discovery_input_errors(runtime, settings: Settings) -> None:
    vae = runtime.get_backend("vae", "mnist")
    with pytest.raises(InputError, match="does not expose intermediate features"):
        choose_method(vae, "features")
    with pytest.raises(InputError, match="unknown discovery method"):
        choose_method(vae, "ica")
    with pytest.raises(InputError, match="k must be between 1 and 64"):
        discover(vae, 0, n=100, settings=settings)
    with pytest.raises(InputError, match=r"k must be between 1 and \d+ for 20 samples .*got 60"):  # too few samples
        discover(vae, 60, n=20, settings=settings)
    assert choose_method(runtime.get_backend("gan", "mnist")) == "features"


def test_vectors_discover_command(studio_cli, settings: Settings) -> None:
    from studio.vectorstore import list_vectors

    ok = studio_cli("vectors", "discover", "--backend", "vae", "--k", "3", "--n", "200", "--name", "cli", "--json")
    assert ok.returncode == 0, ok.stderr
    assert '"cli2"' in ok.stdout and '"method": "encoded"' in ok.stdout
    assert {"cli0", "cli1", "cli2"} <= {r["name"] for r in list_vectors(settings, "vae")}



def test_vectors_discover_command_refuses_bad_input_before_loading_a_model() -> None:
    from studio.cli.local import vectors_discover

    with pytest.raises(InputError, match="^k must be between 1 and 64, got 0$"):
        vectors_discover(backend="vae", k=0)
    with pytest.raises(InputError, match="vector name prefix 'no/7' is invalid"):
        vectors_discover(backend="vae", k=8, name="no/")
