"""Explore ops: projections (PCA / t-SNE / UMAP, cached) and anomaly ranking by reconstruction error.

Most tests use a tiny linear autoencoder (PCA of sklearn digits) as the backend; one slow test checks the real
VAE separates MNIST from Fashion-MNIST.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from studio.config import Settings, load_settings
from studio.contract import CODEC, DECODE, ENCODE, SAMPLE, SEED, Backend, LatentSpace, ModelInfo
from studio.datasets import load_dataset
from studio.errors import InputError
from studio.ops.explore import anomalies, encode_flat, project, reconstruction_errors

K = 6  # latent size of the linear autoencoder


class LinearAE(Backend):
    """A linear autoencoder: the top-K principal directions of a training set (exact PCA reconstruction)."""

    name: ClassVar[str] = "linear-ae"
    version: ClassVar[str] = "0.0.1"
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE, ENCODE, DECODE})

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, shape: tuple[int, int, int],
                 sha: str = "cd" * 32) -> None:
        super().__init__(ModelInfo("pca", "<memory>", sha))
        self.mean, self.basis, self.shape = mean, basis, shape  # basis: (k, D)
        self.encode_calls = 0

    @classmethod
    def fit(cls, train_images: torch.Tensor, k: int = K) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        flat = train_images.reshape(len(train_images), -1).double()
        mean = flat.mean(0)
        _, _, vt = torch.linalg.svd(flat - mean, full_matrices=False)
        return mean, vt[:k], tuple(train_images.shape[1:])

    @classmethod
    def available_models(cls, settings: Settings) -> list[ModelInfo]:
        return []

    @classmethod
    def load(cls, model, settings, device="cpu", dtype="float32"):  # pragma: no cover - not loaded by name
        raise NotImplementedError

    def spaces(self, options=None) -> dict[str, LatentSpace]:
        return {"z": LatentSpace("z", (len(self.basis),), "gaussian", frozenset({SEED, CODEC}))}

    def image_shape(self, options=None) -> tuple[int, int, int]:
        return self.shape

    def encode(self, images: torch.Tensor, options=None, seed: int = 0, progress=None) -> dict:
        self.encode_calls += 1
        flat = images.reshape(len(images), -1).double()
        return {"z": ((flat - self.mean) @ self.basis.T).float()}

    def decode(self, point: dict, options=None, progress=None) -> torch.Tensor:
        flat = point["z"].double() @ self.basis + self.mean
        return flat.float().reshape(len(flat), *self.shape).clamp(-1, 1)


class DecodeOnly(LinearAE):
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE, DECODE})


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One STUDIO_HOME for the module, so the datasets' .npz cache is built once."""
    return tmp_path_factory.mktemp("explore-home")


@pytest.fixture
def settings(home, monkeypatch) -> Settings:
    import shutil

    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.delenv("STUDIO_CONFIG", raising=False)
    settings = load_settings()
    shutil.rmtree(settings.cache_path / "projections", ignore_errors=True)
    return settings


@pytest.fixture(scope="module")
def pca_parts(home) -> tuple:
    return LinearAE.fit(load_dataset("digits", "train", settings=load_settings({"STUDIO_HOME": str(home)})).images)


@pytest.fixture
def backend(pca_parts, settings) -> LinearAE:
    return LinearAE(*pca_parts)


def _recorder() -> tuple[list, Callable[..., None]]:
    calls: list[tuple[int, int, str]] = []

    def progress(step: int, total: int, message: str = "", preview: object = None) -> None:
        calls.append((step, total, message))

    return calls, progress


# ----- projections -----

def test_pca_projection_matches_sklearn_on_the_encoded_latents(backend, settings):
    from sklearn.decomposition import PCA

    calls, progress = _recorder()
    res = project(backend, "digits", "test", "pca", 120, 0, settings, progress)
    ds = load_dataset("digits", "test", limit=120, settings=settings)
    expected = PCA(n_components=2, random_state=0).fit_transform(encode_flat(backend, ds.images))
    coords = np.asarray(res["coords"])
    assert coords.shape == (120, 2)
    np.testing.assert_allclose(np.abs(coords), np.abs(expected), atol=1e-3)  # PCA signs are arbitrary
    assert res["labels"] == ds.labels.tolist()
    assert res["classes"] == [str(i) for i in range(10)]
    assert res["method"] == "pca" and res["cached"] is False
    plot = Image.open(io.BytesIO(res["plot_png"]))
    assert plot.format == "PNG" and plot.width >= 400
    assert np.asarray(plot.convert("L")).std() > 10  # something was drawn
    assert calls and calls[-1][0] == calls[-1][1]  # progress reached its end


def test_projection_is_cached_by_method_limit_and_seed(backend, settings):
    first = project(backend, "digits", "test", "pca", 50, 0, settings)
    calls_after_first = backend.encode_calls
    again = project(backend, "digits", "test", "pca", 50, 0, settings)
    assert again["cached"] is True and backend.encode_calls == calls_after_first  # nothing re-encoded
    assert again["coords"] == first["coords"] and again["labels"] == first["labels"]
    files = sorted((settings.cache_path / "projections").glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as z:
        assert z["coords"].shape == (50, 2)
    assert project(backend, "digits", "test", "pca", 60, 0, settings)["cached"] is False
    assert project(backend, "digits", "test", "pca", 50, 1, settings)["cached"] is False
    other_weights = LinearAE(backend.mean, backend.basis, backend.shape, sha="ef" * 32)
    assert project(other_weights, "digits", "test", "pca", 50, 0, settings)["cached"] is False
    assert len(list((settings.cache_path / "projections").glob("*.npz"))) == 4


def test_tsne_projection_separates_classes_better_than_chance(backend, settings):
    res = project(backend, "digits", "test", "tsne", 150, 0, settings)
    coords, labels = np.asarray(res["coords"]), np.asarray(res["labels"])
    assert coords.shape == (150, 2) and np.isfinite(coords).all()
    # nearest neighbour in the map shares the label far more often than chance (0.1)
    d = ((coords[:, None] - coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    agreement = float((labels[d.argmin(1)] == labels).mean())
    assert agreement > 0.5


@pytest.mark.slow
def test_umap_projection(backend, settings):
    res = project(backend, "digits", "test", "umap", 120, 0, settings)
    coords = np.asarray(res["coords"])
    assert coords.shape == (120, 2) and np.isfinite(coords).all() and coords.std() > 0


def test_projection_refuses_bad_input(backend, settings):
    with pytest.raises(InputError, match="unknown projection method"):
        project(backend, "digits", "test", "isomap", 50, 0, settings)
    with pytest.raises(InputError, match="cannot encode"):
        project(DecodeOnly(backend.mean, backend.basis, backend.shape), "digits", "test", "pca", 50, 0, settings)
    with pytest.raises(InputError, match="UMAP needs at least 4 images, got 3"):  # was a scipy TypeError
        project(backend, "digits", "test", "umap", 3, 0, settings)


# ----- anomalies -----

def test_anomaly_scores_are_per_image_reconstruction_mse(backend, settings):
    ds = load_dataset("digits", "test", limit=40, settings=settings)
    scores = reconstruction_errors(backend, ds.images)
    z = backend.encode(ds.images)["z"]
    expected = ((backend.decode({"z": z}) - ds.images) ** 2).reshape(40, -1).mean(1).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    res = anomalies(backend, "digits", "test", 40, None, settings, top=5)
    ranked = [r["score"] for r in res["ranking"]]
    assert ranked == sorted(ranked, reverse=True) and len(ranked) == res["n"] == 40
    assert res["ranking"][0]["index"] == int(np.argmax(expected))
    assert res["ranking"][0]["label"] == int(ds.labels[int(np.argmax(expected))])
    assert {r["source"] for r in res["ranking"]} == {"in"}
    assert res["auroc"] is None and res["mean_score"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert len(res["top_images"]) == 5 and res["top_images"][0].size == (28, 28)
    top = np.asarray(res["top_images"][0], dtype=np.float32) / 127.5 - 1
    np.testing.assert_allclose(top, ds.images[res["ranking"][0]["index"], 0].numpy(), atol=1 / 127.5)


def test_anomalies_report_auroc_against_an_out_of_distribution_set(backend, settings):
    calls, progress = _recorder()
    res = anomalies(backend, "digits", "test", 150, "fashion", settings, progress)
    assert res["n"] == 300
    assert {r["source"] for r in res["ranking"]} == {"in", "ood"}
    # a PCA of digits reconstructs digits far better than clothes
    assert res["auroc"] > 0.8
    assert res["mean_score_ood"] > res["mean_score"]
    top20 = [r["source"] for r in res["ranking"][:20]]
    assert top20.count("ood") >= 15
    assert calls[-1][0] == calls[-1][1]


def test_anomalies_need_encode_and_a_different_ood_set(backend, settings):
    with pytest.raises(InputError, match="cannot encode and decode"):
        anomalies(DecodeOnly(backend.mean, backend.basis, backend.shape), "digits", "test", 20, None, settings)
    with pytest.raises(InputError, match="must differ"):
        anomalies(backend, "digits", "test", 20, "digits", settings)


# ----- the real VAE -----

def _vae_weights() -> Path:
    import studio_vae.backend as vae

    return vae.SHIPPED


@pytest.mark.slow
def test_real_vae_separates_mnist_from_fashion(settings):
    """The shipped VAE: AUROC of MNIST vs Fashion-MNIST by reconstruction error on 500 images each."""
    from studio.registry import get_backend_class

    assert _vae_weights().is_file(), f"the shipped VAE weights are missing: {_vae_weights()}"
    vae = get_backend_class("vae").load(None, settings)
    res = anomalies(vae, "mnist", "test", 500, "fashion", settings)
    assert res["auroc"] > 0.8, res["auroc"]


@pytest.mark.slow
def test_cli_anomalies_json(settings, tmp_path):
    """`studio run anomalies --backend vae --dataset mnist --ood fashion --limit N --json` prints the metrics."""
    import json

    env = {**os.environ, "STUDIO_HOME": str(settings.home)}
    out = subprocess.run([sys.executable, "-m", "studio", "run", "anomalies", "--backend", "vae", "--dataset",
                          "mnist", "--ood", "fashion", "--limit", "200", "--out", str(tmp_path / "out"), "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout)
    assert metrics["n"] == 400 and metrics["auroc"] > 0.8
    assert len(metrics["top"]) == 16
    assert (tmp_path / "out" / "anomalies.json").is_file() and (tmp_path / "out" / "top_anomalies.png").is_file()


class ScaledAE(LinearAE):
    """LinearAE whose options scale its codec latents: a job's options must reach encode and decode."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        scale: float = 1.0

    def encode(self, images: torch.Tensor, options=None, seed: int = 0, progress=None) -> dict:
        z = super().encode(images)["z"]
        return {"z": z * (options.scale if options is not None else 1.0)}

    def decode(self, point: dict, options=None, progress=None) -> torch.Tensor:
        scale = options.scale if options is not None else 1.0
        return super().decode({"z": point["z"] / scale})


def test_project_and_anomalies_encode_with_the_jobs_options(pca_parts, settings):
    """The options of a project or anomalies job reach the backend (a GAN's inversion steps were dropped): the
    coordinates follow the option, and a cached projection is never served for other options."""
    backend = ScaledAE(*pca_parts)
    plain = project(backend, "digits", "test", "pca", 60, 0, settings)
    scaled = project(backend, "digits", "test", "pca", 60, 0, settings, options=ScaledAE.Options(scale=3.0))
    assert not scaled["cached"]
    np.testing.assert_allclose(np.abs(scaled["coords"]), 3 * np.abs(plain["coords"]), rtol=1e-3, atol=1e-3)
    wrong = ScaledAE.Options(scale=3.0)
    score_ok = reconstruction_errors(backend, load_dataset("digits", "test", limit=20, settings=settings).images,
                                     options=wrong)
    plain_scores = reconstruction_errors(backend, load_dataset("digits", "test", limit=20, settings=settings).images)
    np.testing.assert_allclose(score_ok, plain_scores, rtol=1e-4, atol=1e-6)  # same options both ways round
