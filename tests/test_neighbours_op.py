"""The example plugin's `neighbours` op (plugins/example-plugin: an op added through the `latent_studio.ops` entry
point): in-process on vae and pca, from the generated CLI, and on the queue with a real worker process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from studio import images as imgs
from studio.contract import CODEC, DECODE, SAMPLE, SEED, LatentSpace
from studio.datasets import load_dataset
from studio.errors import InputError, StudioError
from studio.executor import Runtime, execute
from studio.points import random_point
from studio.queue.testing import QueueHarness, ToyBackend
from studio.record import read_record
from studio.registry import load_registry
from studio.spec import parse_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIDE = 28


class NoEncodeToy(ToyBackend):
    """The toy backend without ENCODE."""

    name: ClassVar[str] = "noencode"
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE, DECODE})


class SeedNotCodecToy(ToyBackend):
    """Seeds live in an 8-d space `w`; encode returns the pixels as a 64-d codec space `z`."""

    name: ClassVar[str] = "seedw"

    def spaces(self, options=None) -> dict[str, LatentSpace]:
        return {"w": LatentSpace("w", (8,), "gaussian", frozenset({SEED})),
                "z": LatentSpace("z", (64,), "none", frozenset({CODEC}))}

    def decode(self, point, options=None, progress=None) -> torch.Tensor:
        if "w" in point:
            return super().decode({"z": point["w"]}, options)
        return point["z"].reshape(-1, 1, 8, 8).clamp(-1, 1)

    def encode(self, images, options=None, seed=0, progress=None) -> dict:
        return {"z": torch.as_tensor(images).float().reshape(len(images), -1)}


@pytest.fixture
def toys() -> Iterator[None]:
    """The two toy backends, registered directly in this process's registry (removed afterwards)."""
    registry = load_registry()
    for cls in (NoEncodeToy, SeedNotCodecToy):
        registry.register_backend(cls)
    yield
    for cls in (NoEncodeToy, SeedNotCodecToy):
        registry.backends.pop(cls.name, None)
        registry.sources.pop(cls.name, None)


def _json(result, name: str = "neighbours.json") -> dict:
    return json.loads(next(a.data for a in result.artifacts if a.name == name))


def _codes(runtime: Runtime, backend: str, images: torch.Tensor) -> np.ndarray:
    """Each image's codec latent, encoded in one batch here (independently of the op)."""
    b = runtime.get_backend(backend, None)
    with torch.no_grad():
        return b.encode(images)["z"].reshape(len(images), -1).double().numpy()


def _check_k_smallest(neighbours: list[dict], distances: np.ndarray, k: int) -> None:
    """The op's neighbours are the k smallest of `distances` (computed independently), in increasing order."""
    got = [n["distance"] for n in neighbours]
    assert len(neighbours) == k and got == sorted(got)
    np.testing.assert_allclose(got, np.sort(distances)[:k], atol=1e-4)
    np.testing.assert_allclose([distances[n["index"]] for n in neighbours], got, atol=1e-4)


@pytest.mark.parametrize("backend", ["vae", "pca"])
def test_a_dataset_image_finds_itself_first_then_the_nearest_codes(runtime: Runtime, backend: str,
                                                                    tmp_path: Path) -> None:
    index, k, limit = 7, 6, 300
    spec = {"op": "neighbours", "backend": backend, "dataset": "mnist", "limit": limit, "k": k,
            "image": {"dataset": "mnist", "split": "test", "index": index}}
    result = execute(spec, runtime)
    found = _json(result)
    ds = load_dataset("mnist", "test", limit=limit, settings=runtime.settings)
    codes = _codes(runtime, backend, ds.images)
    distances = np.sqrt(((codes - codes[index]) ** 2).sum(1))
    first = found["neighbours"][0]
    assert first["index"] == index and first["distance"] < 1e-3, first
    _check_k_smallest(found["neighbours"], distances, k)
    assert [n["label"] for n in found["neighbours"]] == [int(ds.labels[n["index"]]) for n in found["neighbours"]]

    metrics = result.metrics
    query_label = int(ds.labels[index])
    assert found["query"] == {"image": {"dataset": "mnist", "split": "test", "index": index}, "label": query_label}
    assert metrics["query_label"] == query_label and metrics["agreement_with"] == "query"
    share = np.mean([n["label"] == query_label for n in found["neighbours"]])
    assert metrics["label_agreement"] == pytest.approx(share)
    assert (metrics["k"], metrics["dataset"], metrics["space"], metrics["searched"]) == (k, "mnist", "z", limit)
    assert metrics["nearest_distance"] == first["distance"]

    result.write(tmp_path)  # the strip: the query, then the k neighbours, carrying a replayable record
    strip = Image.open(tmp_path / "neighbours.png")
    assert strip.size == ((k + 1) * SIDE + (k + 2) * 2, SIDE + 4)
    tiles = [np.asarray(strip.crop((2 + i * (SIDE + 2), 2, 2 + i * (SIDE + 2) + SIDE, 2 + SIDE))) for i in range(2)]
    query = np.asarray(imgs.to_pil(ds.images[index:index + 1])[0])
    assert np.array_equal(tiles[0], query) and np.array_equal(tiles[1], query)
    record = read_record(tmp_path / "neighbours.png")
    assert parse_spec(record["spec"]).model_dump() == parse_spec(spec).model_dump()
    assert record["item"]["indices"] == [n["index"] for n in found["neighbours"]]


def test_a_seed_whose_space_is_the_codec_is_searched_as_it_is(runtime: Runtime) -> None:
    k, limit = 5, 300
    result = execute({"op": "neighbours", "backend": "vae", "seed": 3, "k": k, "limit": limit}, runtime)
    found = _json(result)
    ds = load_dataset("mnist", "test", limit=limit, settings=runtime.settings)
    z = random_point(runtime.get_backend("vae", None), [3])["z"].reshape(-1).double().numpy()
    _check_k_smallest(found["neighbours"], np.sqrt(((_codes(runtime, "vae", ds.images) - z) ** 2).sum(1)), k)
    labels = [n["label"] for n in found["neighbours"]]
    assert found["query"] == {"seed": 3, "label": None}
    assert result.metrics["agreement_with"] == "majority"
    assert result.metrics["label_agreement"] == pytest.approx(max(labels.count(v) for v in labels) / k)


def test_a_seed_outside_the_codec_space_is_decoded_then_encoded(runtime: Runtime, toys: None) -> None:
    k, limit = 4, 100
    result = execute({"op": "neighbours", "backend": "seedw", "seed": 11, "dataset": "digits", "k": k,
                      "limit": limit}, runtime)
    found = _json(result)
    backend = runtime.get_backend("seedw", None)
    query = backend.decode(random_point(backend, [11])).reshape(-1).double().numpy()  # its pixels are its code
    ds = load_dataset("digits", "test", limit=limit, settings=runtime.settings)
    pixels = imgs.to_tensor(imgs.to_pil(ds.images), (1, 8, 8)).reshape(limit, -1).double().numpy()
    _check_k_smallest(found["neighbours"], np.sqrt(((pixels - query) ** 2).sum(1)), k)
    assert result.metrics["space"] == "z"


def test_refusals_are_one_line(runtime: Runtime, toys: None) -> None:
    both = {"seed": 1, "image": {"dataset": "mnist", "index": 0}}
    cases = [({"backend": "noencode", "seed": 1}, "lacks encode"),
             ({"backend": "vae", **both}, "give either a seed or an image"),
             ({"backend": "vae"}, "give either a seed or an image"),
             ({"backend": "vae", "seed": 1, "k": 65}, "k: Input should be less than or equal to 64"),
             ({"backend": "vae", "seed": 1, "k": 9, "limit": 8}, "must be at most limit")]
    for extra, words in cases:
        with pytest.raises(StudioError) as exc:
            execute({"op": "neighbours", **extra}, runtime)
        message = str(exc.value)
        assert words in message and "\n" not in message and len(message) < 300, message
    with pytest.raises(InputError, match="lacks encode"):
        execute({"op": "neighbours", "backend": "noencode", "image": {"dataset": "mnist", "index": 0}}, runtime)


@pytest.mark.slow
def test_the_generated_cli_runs_it(tmp_path: Path) -> None:
    studio = Path(sys.executable).parent / "studio"
    out = tmp_path / "out"
    proc = subprocess.run([str(studio), "run", "neighbours", "--backend", "vae", "--seed", "3", "--dataset", "mnist",
                           "--k", "8", "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["neighbours.json", "neighbours.png"]
    found = json.loads((out / "neighbours.json").read_text())
    distances = [n["distance"] for n in found["neighbours"]]
    assert len(distances) == 8 and distances == sorted(distances) and found["searched"] == 2000
    record = read_record(out / "neighbours.png")
    assert {k: record["spec"][k] for k in ("op", "backend", "seed", "dataset", "k")} == {
        "op": "neighbours", "backend": "vae", "seed": 3, "dataset": "mnist", "k": 8}


@pytest.mark.slow
@pytest.mark.integration
def test_a_real_worker_runs_it_from_the_queue(tmp_path_factory: pytest.TempPathFactory, runtime: Runtime) -> None:
    spec = {"op": "neighbours", "backend": "pca", "image": {"dataset": "digits", "split": "test", "index": 4},
            "dataset": "digits", "k": 5, "limit": 200}
    alone = _json(execute(spec, runtime))
    root = tmp_path_factory.mktemp("neighbours-queue")
    (root / "home" / "cache").mkdir(parents=True)  # the worker's home starts with the digits cache built above
    shutil.copy(runtime.settings.cache_path / "digits.npz", root / "home" / "cache" / "digits.npz")
    with QueueHarness.running(root, plugins="vae,pca") as harness:  # STUDIO_PLUGINS=pca: its backend and its op
        client = harness.client()
        try:
            job_id = client.submit(spec)
            final = client.wait(job_id, timeout=120)
            assert final["state"] == "SUCCEEDED", (final, harness.worker_log(harness.worker)[-2000:])
            assert sorted(a["name"] for a in final["artifacts"]) == ["neighbours.json", "neighbours.png"]
            queued = json.loads(client.artifact_path(job_id, "neighbours.json").read_text())
            assert client.result(job_id)["metrics"]["nearest_distance"] == queued["neighbours"][0]["distance"]
        finally:
            client.close()
    assert [n["index"] for n in queued["neighbours"]] == [n["index"] for n in alone["neighbours"]]
    assert queued["neighbours"][0]["index"] == 4
    np.testing.assert_allclose([n["distance"] for n in queued["neighbours"]],
                               [n["distance"] for n in alone["neighbours"]], atol=1e-5)
