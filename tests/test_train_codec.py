"""The codec model: its training recipe (quantisation as the coder does it, reproducible) and the shipped
`mnist-codec` weights against every baseline on a small MNIST subset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from studio_vae import train_codec as tc
from studio_vae.backend import SHIPPED, VAEBackend
from studio_vae.model import load_vae

from studio.config import load_settings
from studio.contract import CODEC, LatentSpace
from studio.datasets import load_dataset
from studio.ops import compression as comp

CODEC_WEIGHTS = SHIPPED.parent / "mnist-codec.safetensors"


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))
    return load_settings()


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 10])
def test_training_quantiser_is_the_coders_quantiser(bits):
    assert tc.RANGE_STDS == comp.RANGE_STDS
    gen = torch.Generator().manual_seed(bits)
    mean, std = torch.randn(6, generator=gen), torch.rand(6, generator=gen) + 0.2
    z = mean + std * 2.5 * torch.randn(300, 6, generator=gen)  # includes values beyond +- 4 std
    space = LatentSpace("z", (6,), "gaussian", frozenset({CODEC}), coding_mean=tuple(mean.tolist()),
                        coding_std=tuple(std.tolist()))
    expected = comp.dequantise(comp.quantise(z, space, bits), space, bits)
    units = ((z - mean) / std).requires_grad_()
    got = mean + std * tc.quantise_ste(units, torch.full((300,), bits), {bits: tc.centroid_table(bits)})
    np.testing.assert_allclose(got.detach().numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    got.sum().backward()  # straight-through: the gradient is the identity's
    np.testing.assert_allclose(units.grad.numpy(), np.broadcast_to(std.numpy(), (300, 6)), rtol=1e-6)


def test_training_is_reproducible_and_loadable_by_the_vae_backend(tmp_path, settings):
    kwargs = dict(limit=64, batch_size=32, latent_dim=6, base_width=4, bits=(1, 4, 8), settings=settings)
    a = tc.train_codec("mnist", 1, tmp_path / "a.safetensors", seed=3, **kwargs)
    b = tc.train_codec("mnist", 1, tmp_path / "b.safetensors", seed=3, **kwargs)
    digest = [hashlib.sha256(Path(r["out"]).read_bytes()).hexdigest() for r in (a, b)]
    assert digest[0] == digest[1]
    model, meta = load_vae(tmp_path / "a.safetensors")
    assert meta["format"] == "studio-vae/1" and model.config.latent_dim == 6
    assert len(json.loads(meta["coding_mean"])) == len(json.loads(meta["coding_std"])) == 6
    metrics = json.loads(meta["metrics"])
    assert {"test_psnr_unquantised", "test_psnr_bits1", "test_psnr_bits8"} <= set(metrics)
    assert json.loads(meta["training"])["recipe"] == "studio_vae.train_codec"
    # The vae backend uses it as it is, with the saved coding statistics as its codec space.
    info = next(m for m in VAEBackend.available_models(settings) if m.name == "mnist")
    backend = VAEBackend(type(info)("tiny-codec", str(tmp_path / "a.safetensors"), info.sha256), "cpu")
    space = backend.space_for(CODEC)
    assert space.coding_std == tuple(json.loads(meta["coding_std"]))


def test_training_refuses_bad_arguments(tmp_path, settings):
    with pytest.raises(comp.InputError, match="bits"):
        tc.train_codec("mnist", 1, tmp_path / "x.safetensors", bits=(0, 4), limit=8, settings=settings)
    with pytest.raises(comp.InputError, match="epochs"):
        tc.train_codec("mnist", 0, tmp_path / "x.safetensors", limit=8, settings=settings)
    assert tc.main(["--out", str(tmp_path / "x.safetensors"), "--epochs", "0"]) == 2


def test_shipped_codec_beats_every_baseline_by_3_db_on_an_mnist_subset(settings):
    assert CODEC_WEIGHTS.exists()
    assert "mnist-codec" in [m.name for m in VAEBackend.available_models(settings)]
    backend = VAEBackend.load("mnist-codec", settings)
    images = load_dataset("mnist", "test", limit=12, settings=settings).images
    for bits in (4, 6, 8):  # the operating points where baseline files fit (about 50, 80 and 115 bytes)
        m = comp.roundtrip(backend, images, bits).metrics
        assert 16 <= m["bytes_per_image"] <= 128
        assert m["best_baseline_coverage"] > 0.5
        assert m["psnr_gain_over_best_baseline"] >= 3.0, (bits, m["psnr_gain_over_best_baseline"])
