"""Tests of the shipped Fashion-MNIST GAN (`--backend gan --model fashion`): listing, loading, samples that the
project's fashion classifier recognises as garments, a round trip through inversion, and the recipe's class head
and determinism on Fashion-MNIST labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from studio_gan.backend import GANBackend
from studio_gan.importer import load_weights
from studio_gan.train import train_gan

from studio.config import load_settings
from studio.hashing import file_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEIGHTS = Path(__file__).resolve().parents[1] / "plugins" / "studio_gan" / "weights"
SHIPPED = WEIGHTS / "fashion.safetensors"
N_SAMPLES = 200


@pytest.fixture(scope="module")
def settings():
    return load_settings()  # the session's STUDIO_HOME (conftest), so the dataset cache is built once


@pytest.fixture(scope="module")
def fashion(settings):
    return GANBackend.load("fashion", settings)


@pytest.fixture(scope="module")
def mnist(settings):
    return GANBackend.load("mnist", settings)


def samples(backend: GANBackend, n: int = N_SAMPLES) -> torch.Tensor:
    return backend.decode({"z": backend.sample_prior("z", list(range(n)))})


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1.0 / (((a - b) / 2) ** 2).flatten(1).mean(1).clamp_min(1e-10))


def test_fashion_is_listed_after_the_default_mnist_and_records_its_recipe(settings):
    models = GANBackend.available_models(settings)
    names = [m.name for m in models]
    assert names[0] == "mnist" and "fashion" in names  # mnist stays the default
    info = models[names.index("fashion")]
    assert info.sha256 == file_sha256(SHIPPED)
    assert GANBackend.model_image_shape(info, settings) == (1, 28, 28)
    generator, encoder, meta = load_weights(SHIPPED)
    training = json.loads(meta["training"])
    assert training["dataset"] == "fashion" and training["images"] == 60000
    assert training["class_weight"] > 0  # the class head learned Fashion-MNIST's labels
    assert encoder is not None  # the learned inversion encoder is shipped with it


def test_fashion_samples_have_the_right_shape_range_and_are_deterministic(fashion):
    assert fashion.model.name == "fashion" and fashion.image_shape() == (1, 28, 28)
    z = fashion.sample_prior("z", [0, 1, 2, 3])
    assert z.shape == (4, fashion.config.nz)
    images = fashion.decode({"z": z})
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.1
    assert torch.equal(images, fashion.decode({"z": fashion.sample_prior("z", [0, 1, 2, 3])}))
    assert not torch.allclose(images[0], images[1], atol=1e-2)


def test_fashion_samples_are_recognised_as_garments(fashion, mnist):
    from studio.classifier import load_classifier

    classifier = load_classifier("fashion")
    ours, digits = samples(fashion), samples(mnist)
    p_ours, p_digits = classifier.predict_proba(ours), classifier.predict_proba(digits)
    confident_ours = float((p_ours.max(1).values >= 0.9).float().mean())
    confident_digits = float((p_digits.max(1).values >= 0.9).float().mean())
    assert confident_ours >= 0.6, confident_ours
    assert confident_ours >= confident_digits + 0.2, (confident_ours, confident_digits)
    shares = torch.bincount(p_ours.argmax(1), minlength=10).float() / len(ours)
    assert int((shares >= 0.03).sum()) >= 8, shares.tolist()  # most garment classes are made, not one
    # the classifier's features of our samples lie closer to real garments' than the digit GAN's do
    from studio.datasets import load_dataset

    real = classifier.features(load_dataset("fashion", "test", limit=N_SAMPLES, settings=fashion.settings).images)
    gap = [(classifier.features(x).mean(0) - real.mean(0)).norm().item() for x in (ours, digits)]
    assert gap[0] < 0.5 * gap[1], gap


@pytest.mark.slow  # two inversions (default options: 60 steps x 4 restarts) of 4 images
def test_fashion_round_trip_beats_the_digit_model_on_garments(fashion, mnist):
    from studio.datasets import load_dataset
    from studio.ops.compression import roundtrip

    images = load_dataset("fashion", "test", limit=4, settings=fashion.settings).images
    ours = roundtrip(fashion, images, 8, baselines=False)
    digits = roundtrip(mnist, images, 8, baselines=False)
    assert ours.reconstructions.shape == images.shape
    assert ours.metrics["bytes_per_image"] > 0
    assert psnr(ours.reconstructions, images).mean() == pytest.approx(ours.metrics["psnr"], abs=0.05)
    assert ours.metrics["psnr"] >= 14.0, ours.metrics["psnr"]
    assert ours.metrics["psnr"] >= digits.metrics["psnr"] + 2.0, (ours.metrics["psnr"], digits.metrics["psnr"])


def test_recipe_trains_with_fashion_labels_deterministically(settings, tmp_path):
    kwargs = dict(settings=settings, nz=8, ngf=4, ndf=4, mapping=1, mapping_width=8, batch_size=16, limit=48,
                  encoder_steps=2, encoder_width=4)
    train_gan("fashion", 1, tmp_path / "a.safetensors", seed=1, **kwargs)
    train_gan("fashion", 1, tmp_path / "b.safetensors", seed=1, **kwargs)
    a, b = (tmp_path / f"{x}.safetensors" for x in "ab")
    assert a.read_bytes() == b.read_bytes()
    _, encoder, meta = load_weights(a)
    training = json.loads(meta["training"])
    assert training["dataset"] == "fashion" and training["class_weight"] == 3.0  # labels found: class head on
    assert encoder is not None
