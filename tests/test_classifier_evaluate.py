"""The project's classifiers (MNIST, Fashion-MNIST) and the sample-quality metrics built on them (FCD, KID,
confident share)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from studio.classifier import FEATURES, load_classifier
from studio.config import Settings, load_settings
from studio.contract import SEED, Backend, LatentSpace, ModelInfo
from studio.errors import InputError
from studio.evaluate import confident_share, evaluate_backend, frechet_distance, kernel_distance

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # two torch threads spin against each other on 2 cores



@pytest.fixture(scope="module")
def mnist_test(studio_home: Path):
    from studio.datasets import load_dataset

    return load_dataset("mnist", "test", settings=load_settings({"STUDIO_HOME": str(studio_home)}))


@pytest.fixture(scope="module")
def fashion_test(studio_home: Path):
    from studio.datasets import load_dataset

    return load_dataset("fashion", "test", settings=load_settings({"STUDIO_HOME": str(studio_home)}))


class PoolBackend(Backend):
    """A stand-in generator: seed i 'decodes' to image i of a fixed pool (optionally distorted)."""

    name: ClassVar[str] = "pool"
    version: ClassVar[str] = "0"
    pool: torch.Tensor
    shape: tuple[int, int, int] = (1, 28, 28)

    @classmethod
    def available_models(cls, settings: Settings) -> list[ModelInfo]:
        return [ModelInfo("pool", "", "")]

    @classmethod
    def load(cls, model, settings, device="cpu", dtype="float32") -> PoolBackend:
        return cls(ModelInfo("pool", "", ""))

    def spaces(self, options=None) -> dict[str, LatentSpace]:
        return {"index": LatentSpace("index", (1,), "none", frozenset({SEED}))}

    def image_shape(self, options=None) -> tuple[int, int, int]:
        return self.shape

    def sample_prior(self, space, seeds, options=None) -> torch.Tensor:
        return torch.tensor([[float(s)] for s in seeds])

    def decode(self, point, options=None, progress=None) -> torch.Tensor:
        return self.pool[point["index"][:, 0].long() % len(self.pool)]


def test_classifier_is_accurate_on_mnist_test_images(mnist_test) -> None:
    model = load_classifier()
    proba = model.predict_proba(mnist_test.images[:1000])
    assert proba.shape == (1000, 10)
    assert torch.allclose(proba.sum(1), torch.ones(1000), atol=1e-5)
    accuracy = float((proba.argmax(1).numpy() == mnist_test.labels[:1000]).mean())
    assert accuracy >= 0.97
    assert load_classifier() is model and not model.training


def test_classifier_features_and_input_checks(mnist_test) -> None:
    model = load_classifier()
    feats = model.features(mnist_test.images[:600])
    assert feats.shape == (600, FEATURES) and 64 <= FEATURES <= 128
    assert torch.allclose(feats[:3], model.features(mnist_test.images[:3]), atol=1e-5)  # batching does not matter
    with pytest.raises(InputError, match="shape"):
        model.predict_proba(torch.zeros(2, 3, 28, 28))


def test_frechet_distance_is_zero_for_same_data_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shifts = [frechet_distance(a, a + s) for s in (0.5, 1.0, 2.0)]
    assert shifts == pytest.approx([8 * 0.25, 8 * 1.0, 8 * 4.0], rel=1e-6)  # mean term only: d * s^2
    # Scale: cov I vs 4I gives tr(I + 4I - 2 * 2I) = d, up to sampling error.
    assert frechet_distance(a, 2 * rng.normal(size=(20000, 8))) == pytest.approx(8.0, rel=0.1)
    with pytest.raises(InputError):
        frechet_distance(a, a[:, :4])


def test_frechet_distance_matches_the_scipy_formula() -> None:
    from scipy import linalg

    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 0.3
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_confident_share_separates_digits_from_noise(mnist_test) -> None:
    assert confident_share(mnist_test.images[:300]) >= 0.9
    noise = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert confident_share(noise) < confident_share(mnist_test.images[:300])
    assert confident_share(mnist_test.images[:300], threshold=1.01) == 0.0


@pytest.mark.slow
def test_evaluate_backend_scores_real_digits_near_the_floor_and_noise_far_above(settings: Settings,
                                                                                  mnist_test) -> None:
    real = PoolBackend.load(None, settings)
    real.pool = mnist_test.images[:1500]
    steps: list[tuple[int, int]] = []
    good = evaluate_backend(real, n=300, seed=0, settings=settings, progress=lambda s, t, *a: steps.append((s, t)))
    assert set(good) == {"fcd", "fcd_floor", "fcd_ratio", "fcd_range", "fcd_floor_range", "kid", "kid_floor",
                         "kid_range", "kid_floor_range", "confident_share", "class_share", "dataset", "n", "repeats",
                         "seed", "backend", "model"}
    assert (good["dataset"], good["n"], good["repeats"]) == ("mnist", 300, 5)
    assert steps[-1] == (6, 6)  # 5 draws of 300 samples, in chunks of 250
    assert good["fcd"] < 2 * good["fcd_floor"] and good["confident_share"] > 0.9
    for key in ("fcd", "fcd_floor", "kid", "kid_floor"):  # a mean of the draws lies within their range
        low, high = good[f"{key}_range"]
        assert low <= good[key] <= high and low < high

    blurred = PoolBackend.load(None, settings)
    blurred.pool = torch.nn.functional.avg_pool2d(mnist_test.images[:1500], 5, 1, 2)
    bad = evaluate_backend(blurred, n=300, seed=0, settings=settings)
    assert bad["fcd"] > 3 * bad["fcd_floor"] and bad["fcd_floor"] == pytest.approx(good["fcd_floor"])
    assert bad["kid"] > 10 * max(good["kid"], good["kid_floor"], 1e-6) and bad["kid_floor"] == good["kid_floor"]


def test_evaluate_backend_refuses_other_image_shapes(settings: Settings) -> None:
    faces = PoolBackend.load(None, settings)
    faces.shape = (3, 64, 64)
    with pytest.raises(InputError, match="^evaluate on mnist needs 1x28x28 images .* makes 3x64x64$"):
        evaluate_backend(faces, n=100, settings=settings)


def test_evaluate_with_one_draw_is_the_plain_frechet_distance(settings: Settings, mnist_test) -> None:
    from studio.evaluate import dataset_features

    real = PoolBackend.load(None, settings)
    real.pool = mnist_test.images[:200]
    result = evaluate_backend(real, n=200, seed=0, repeats=1, settings=settings)
    feats = load_classifier().features(mnist_test.images[:200]).numpy()
    reference = dataset_features("mnist", "test", settings)
    assert result["fcd"] == pytest.approx(frechet_distance(feats, reference.feats), abs=1e-3)
    assert frechet_distance(feats, reference.feats, reference) == pytest.approx(frechet_distance(feats,
                                                                                               reference.feats))
    assert result["kid"] == pytest.approx(kernel_distance(feats, reference.feats), abs=1e-3)
    assert reference.self_kernel == pytest.approx(kernel_distance(feats, reference.feats)
                                                  - kernel_distance(feats, reference.feats, 0.0))
    assert result["fcd_range"] == [result["fcd"], result["fcd"]] and result["repeats"] == 1
    with pytest.raises(InputError, match="repeats of at least 1"):
        evaluate_backend(real, n=200, repeats=0, settings=settings)
    with pytest.raises(InputError, match="^evaluate on mnist needs n x repeats of at most 60000 "):
        evaluate_backend(real, n=20000, repeats=4, settings=settings)


def test_evaluate_shipped_vae(settings: Settings) -> None:
    from studio_vae.backend import VAEBackend

    result = evaluate_backend(VAEBackend.load("mnist", settings), n=500, seed=0, settings=settings)
    assert 0 < result["fcd_floor"] < result["fcd"] and result["kid_floor"] < result["kid"]
    assert result["confident_share"] >= 0.3  # blurry VAE samples: measured 0.47 at n=500
    assert max(result["class_share"]) < 0.3  # samples cover the digits, not one class


def test_shipped_gan_meets_the_fcd_goal(settings: Settings) -> None:
    """Issue goal: the shipped MNIST GAN's FCD is at most 3x the floor, with `studio evaluate`'s defaults."""
    from studio_gan.backend import GANBackend

    result = evaluate_backend(GANBackend.load("mnist", settings), n=2000, seed=0, repeats=5, settings=settings)
    assert result["fcd"] <= 3 * result["fcd_floor"], result
    assert result["confident_share"] >= 0.8  # clear digits, not blends
    assert max(result["class_share"]) < 0.15 and min(result["class_share"]) > 0.05  # every digit, none dominant


def test_kernel_distance_is_the_unbiased_mmd_with_the_cubic_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    import studio.evaluate

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.2

    def k(x: np.ndarray, y: np.ndarray) -> float:
        return (x @ y / 3 + 1) ** 3

    def within(x: np.ndarray) -> float:
        return sum(k(x[i], x[j]) for i in range(len(x)) for j in range(len(x)) if i != j) / (len(x) * (len(x) - 1))

    expected = within(a) + within(b) - 2 * sum(k(x, y) for x in a for y in b) / (len(a) * len(b))
    monkeypatch.setattr(studio.evaluate, "KERNEL_BLOCK", 2)  # blocked sums add up to the whole
    assert kernel_distance(a, b) == pytest.approx(expected, rel=1e-5)
    assert kernel_distance(a, b, b_self=within(b)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InputError):
        kernel_distance(a, b[:, :2])


def test_kid_is_about_zero_for_one_distribution_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(1)
    same = [kernel_distance(rng.normal(size=(200, 16)), rng.normal(size=(300, 16))) for _ in range(50)]
    # Unbiased: single estimates fall on both sides of 0 and their mean is within 4 standard errors of it
    # (the Fréchet distance of the same draws is biased: about 0.5 every time).
    assert min(same) < 0 < max(same)
    assert abs(np.mean(same)) < 4 * np.std(same) / np.sqrt(len(same))
    assert frechet_distance(rng.normal(size=(200, 16)), rng.normal(size=(300, 16))) > 0.3
    shifted = [kernel_distance(rng.normal(size=(200, 16)), rng.normal(size=(300, 16)) + s) for s in (0.25, 0.5)]
    assert max(np.abs(same)) < shifted[0] < shifted[1]


def test_fashion_classifier_is_shipped_and_accurate(fashion_test) -> None:
    model = load_classifier("fashion")
    assert model is load_classifier("fashion") and model is not load_classifier("mnist") and not model.training
    accuracy = float((model.predict(fashion_test.images[:2000]).numpy() == fashion_test.labels[:2000]).mean())
    assert accuracy >= 0.88
    assert model.features(fashion_test.images[:5]).shape == (5, FEATURES)


@pytest.mark.parametrize("dataset", ["animals", "digits", "folder:clothes", "cifar"])
def test_a_dataset_without_a_classifier_is_one_line_error(settings: Settings, dataset: str) -> None:
    backend = PoolBackend.load(None, settings)  # no pool: refused before any sampling
    message = f"^no classifier for dataset '{dataset}': the project has one for fashion, mnist$"
    with pytest.raises(InputError, match=message):
        evaluate_backend(backend, n=100, settings=settings, dataset=dataset)
    with pytest.raises(InputError, match=message):
        load_classifier(dataset)


@pytest.mark.parametrize("shape", [(3, 28, 28), (1, 32, 32)])
def test_evaluate_refuses_a_backend_whose_images_do_not_fit_the_dataset(settings: Settings, shape) -> None:
    backend = PoolBackend.load(None, settings)
    backend.shape = shape
    made = "x".join(map(str, shape))
    with pytest.raises(InputError, match=f"^evaluate on fashion needs 1x28x28 images .* makes {made}$"):
        evaluate_backend(backend, n=100, settings=settings, dataset="fashion")
    backend.shape = (1, 28, 28)
    with pytest.raises(InputError, match="^evaluate on fashion needs n x repeats of at most 60000 .*, got 20000 x 4$"):
        evaluate_backend(backend, n=20000, repeats=4, settings=settings, dataset="fashion")


@pytest.mark.slow
def test_evaluate_scores_against_the_named_dataset(settings: Settings, fashion_test) -> None:
    clothes = PoolBackend.load(None, settings)
    clothes.pool = fashion_test.images[:1000]
    on_fashion = evaluate_backend(clothes, n=500, repeats=2, settings=settings, dataset="fashion")
    on_mnist = evaluate_backend(clothes, n=500, repeats=2, settings=settings)
    assert (on_fashion["dataset"], on_mnist["dataset"]) == ("fashion", "mnist")
    # Real clothes score near the Fashion-MNIST floor and far above MNIST's, in both distances.
    assert on_fashion["fcd"] < 2 * on_fashion["fcd_floor"] and on_fashion["confident_share"] > 0.7
    assert on_mnist["fcd"] > 20 * on_mnist["fcd_floor"]
    assert on_mnist["kid"] > 100 * max(abs(on_fashion["kid"]), abs(on_fashion["kid_floor"]), abs(on_mnist["kid_floor"]))
    assert on_fashion["fcd_floor"] != on_mnist["fcd_floor"]  # each floor is its own dataset's
