"""The VAE backend: discovery, loading, the latent interface, training determinism, shipped-weight quality."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from studio_vae.backend import SHIPPED, VAEBackend
from studio_vae.model import ConvVAE, VAEConfig, load_vae
from studio_vae.train import psnr_per_image

from studio.config import Settings, load_settings
from studio.contract import CODEC, DECODE, ENCODE, SAMPLE, SEED, TRAIN
from studio.errors import InputError, NotFound
from studio.safetensors_io import read_metadata, save_weights


@pytest.fixture
def settings(studio_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The session's tmp STUDIO_HOME (shared dataset cache) with a model root of this test's own."""
    monkeypatch.setenv("STUDIO_HOME", str(studio_home))
    monkeypatch.setenv("STUDIO_MODEL_ROOTS", str(tmp_path / "models"))
    return load_settings()


@pytest.fixture(scope="module")
def mnist_test(studio_home: Path):
    from studio.datasets import load_dataset

    return load_dataset("mnist", "test", settings=load_settings({"STUDIO_HOME": str(studio_home)}))


def write_tiny_vae(settings: Settings, name: str = "tiny", seed: int = 0) -> Path:
    """A randomly initialised VAE (base width 4) with coding statistics, under <model_root>/vae/."""
    torch.manual_seed(seed)
    net = ConvVAE(VAEConfig(base_width=4))
    path = settings.model_root_paths[0] / "vae" / f"{name}.safetensors"
    mean = [0.1 * i for i in range(16)]
    meta = {"config": net.config.to_json(), "coding_mean": json.dumps(mean), "coding_std": json.dumps([2.0] * 16)}
    save_weights(path, net.state_dict(), meta)
    return path


def test_shipped_model_is_listed_with_its_sha256(settings: Settings) -> None:
    tiny = write_tiny_vae(settings)
    models = {m.name: m for m in VAEBackend.available_models(settings)}
    assert list(models)[0] == "mnist"
    assert models["mnist"].path == str(SHIPPED)
    assert models["mnist"].sha256 == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert models["tiny"].sha256 == hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert models["mnist"].extra["dataset"] == "mnist"


def test_unknown_model_is_not_found_and_lists_the_available_ones(settings: Settings) -> None:
    write_tiny_vae(settings)
    with pytest.raises(NotFound, match="available: mnist, tiny"):
        VAEBackend.load("nope", settings)


def test_corrupt_weights_give_a_clear_error(settings: Settings) -> None:
    bad = settings.model_root_paths[0] / "vae" / "broken.safetensors"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(InputError, match="not readable"):
        VAEBackend.load("broken", settings)


def test_declared_spaces_and_capabilities(settings: Settings) -> None:
    write_tiny_vae(settings)
    backend = VAEBackend.load("tiny", settings)
    assert backend.capabilities == {SAMPLE, ENCODE, DECODE, TRAIN}
    space = backend.spaces()["z"]
    assert space.shape == (16,) and space.prior == "gaussian" and space.roles == {SEED, CODEC}
    assert space.coding_mean == pytest.approx([0.1 * i for i in range(16)])
    assert space.coding_std == pytest.approx([2.0] * 16)
    assert backend.image_shape() == (1, 28, 28)
    assert backend.space_for(CODEC).name == "z"


def test_sampling_is_deterministic_by_seed_and_in_range(settings: Settings) -> None:
    write_tiny_vae(settings)
    backend = VAEBackend.load("tiny", settings)
    z = backend.sample_prior("z", seeds=[3, 4, 5])
    images = backend.decode({"z": z})
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert images.min() >= -1 and images.max() <= 1
    again = backend.decode({"z": backend.sample_prior("z", seeds=[5, 4, 3])})
    assert torch.equal(images, again.flip(0))
    assert not torch.equal(images[0], images[1])


def test_encode_returns_posterior_means_in_batches(settings: Settings) -> None:
    write_tiny_vae(settings)
    backend = VAEBackend.load("tiny", settings)
    images = torch.rand(600, 1, 28, 28) * 2 - 1
    calls: list[tuple[int, int]] = []
    point = backend.encode(images, progress=lambda step, total, *a, **k: calls.append((step, total)))
    assert set(point) == {"z"} and point["z"].shape == (600, 16)
    assert calls == [(1, 2), (2, 2)]
    assert torch.allclose(point["z"][:5], backend.net.encode_stats(images[:5])[0], atol=1e-5)
    assert torch.equal(point["z"], backend.encode(images)["z"])
    assert backend.decode(point).shape == (600, 1, 28, 28)


def test_bad_points_and_images_are_refused(settings: Settings) -> None:
    write_tiny_vae(settings)
    backend = VAEBackend.load("tiny", settings)
    with pytest.raises(InputError, match="shape"):
        backend.encode(torch.zeros(2, 3, 28, 28))
    with pytest.raises(InputError, match="space 'z'"):
        backend.decode({"w": torch.zeros(2, 16)})
    with pytest.raises(InputError, match=r"\(N, 16\)"):
        backend.decode({"z": torch.zeros(2, 8)})
    with pytest.raises(InputError, match="NaN"):
        backend.decode({"z": torch.full((1, 16), float("nan"))})


def test_plugin_registers_through_its_hook() -> None:
    import studio_vae

    seen: list[type] = []
    studio_vae.register(seen.append)
    assert seen == [VAEBackend]


@pytest.mark.slow
def test_training_is_deterministic_by_seed(settings: Settings, tmp_path: Path) -> None:
    steps: list[tuple[int, int, str]] = []
    args = dict(dataset="mnist", epochs=1, seed=7, settings=settings, limit=256, batch_size=64, base_width=4)
    m1 = VAEBackend.train(out=str(tmp_path / "a.safetensors"), progress=lambda s, t, m="": steps.append((s, t, m)),
                          **args)
    VAEBackend.train(out=str(tmp_path / "b.safetensors"), **args)
    VAEBackend.train(out=str(tmp_path / "c.safetensors"), **{**args, "seed": 8})
    a, b, c = ((tmp_path / f"{x}.safetensors").read_bytes() for x in "abc")
    assert a == b and a != c
    assert [s[:2] for s in steps] == [(i, 4) for i in range(1, 5)] and steps[-1][2].startswith("epoch 1/1")
    assert {"train_loss", "test_psnr", "test_psnr_pooled"} <= set(m1) and m1["train_images"] == 256
    meta = read_metadata(tmp_path / "a.safetensors")
    assert meta["seed"] == "7" and meta["dataset"] == "mnist" and len(json.loads(meta["coding_std"])) == 16
    assert json.loads(meta["metrics"])["test_psnr"] == m1["test_psnr"]
    net, _ = load_vae(tmp_path / "a.safetensors")
    assert net.config == VAEConfig(base_width=4)


def test_training_refuses_unknown_options(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown training options for vae: colour"):
        VAEBackend.train("mnist", 1, str(tmp_path / "x.safetensors"), 0, settings, colour="red")
    with pytest.raises(NotFound, match="unknown dataset"):
        VAEBackend.train("cifar", 1, str(tmp_path / "x.safetensors"), 0, settings)


def test_shipped_vae_reconstructs_mnist_above_20_db(settings: Settings, mnist_test) -> None:
    backend = VAEBackend.load("mnist", settings)
    images = mnist_test.images[:500]
    rec = backend.decode(backend.encode(images))
    psnr = psnr_per_image(images, rec)
    assert float(psnr.mean()) >= 20.0
    pooled = 10 * torch.log10(1 / (((images - rec) / 2) ** 2).mean())
    assert float(pooled) >= 20.0


def test_shipped_metadata_records_the_training(settings: Settings) -> None:
    meta = read_metadata(SHIPPED)
    assert meta["dataset"] == "mnist" and meta["seed"] == "0" and int(meta["epochs"]) >= 1
    assert json.loads(meta["metrics"])["test_psnr"] >= 20.0
    backend = VAEBackend.load(None, settings)
    assert backend.model.name == "mnist"
    assert len(backend.spaces()["z"].coding_std) == 16 and min(backend.spaces()["z"].coding_std) > 0
