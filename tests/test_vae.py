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


FASHION_PSNR_FLOOR = 20.0  # measured 21.6 dB on these 300 images (21.27 dB on the full test set)
# Confident share of 300 prior samples (seeds 0-299) from the shipped mixture priors. mnist: the goal, 0.70;
# fashion (whose real test images score 0.75): the measured level less a margin.
CONFIDENT_FLOOR = {"mnist": 0.70, "fashion": 0.62}  # measured 0.900 and 0.707


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
    with pytest.raises(NotFound, match="available: mnist, fashion, .*tiny"):
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


def test_shipped_vae_reconstructs_mnist_above_24_db(settings: Settings, mnist_test) -> None:
    backend = VAEBackend.load("mnist", settings)
    images = mnist_test.images[:500]
    rec = backend.decode(backend.encode(images))
    psnr = psnr_per_image(images, rec)
    assert float(psnr.mean()) >= 24.0
    pooled = 10 * torch.log10(1 / (((images - rec) / 2) ** 2).mean())
    assert float(pooled) >= 22.0


@pytest.mark.parametrize("model", ["mnist", "fashion"])
def test_shipped_prior_samples_are_recognised_with_confidence(settings: Settings, model: str) -> None:
    """Prior samples recognised with confidence (classifier max prob >= 0.9) on 300 samples: at least the
    issue's 70% for mnist (a single whitened Gaussian gave 0.43 here), the measured level less a margin for
    fashion (0.34 before the mixture prior)."""
    from studio.evaluate import confident_share, sample_images

    backend = VAEBackend.load(model, settings)
    share = confident_share(sample_images(backend, 300, seed=0), dataset=model)
    assert share >= CONFIDENT_FLOOR[model]


def test_shipped_fashion_model_reconstructs_fashion_better_than_the_mnist_model(settings: Settings) -> None:
    from studio.datasets import load_dataset

    images = load_dataset("fashion", "test", limit=300, settings=settings).images
    fashion = VAEBackend.load("fashion", settings)
    assert fashion.model.extra["dataset"] == "fashion" and fashion.model.name == "fashion"
    psnr = {name: float(psnr_per_image(images, b.decode(b.encode(images))).mean())
            for name, b in (("fashion", fashion), ("mnist", VAEBackend.load("mnist", settings)))}
    assert psnr["fashion"] >= FASHION_PSNR_FLOOR and psnr["fashion"] > psnr["mnist"] + 5


@pytest.mark.parametrize("model", ["mnist", "fashion"])
def test_shipped_models_are_whitened_and_encode_to_a_standard_latent(settings: Settings, model: str) -> None:
    """Encoded test images have about zero mean and unit std per dimension (what N(0, I) seeds assume), the
    declared coding statistics match, and decode(encode(x)) equals decoding the raw posterior mean."""
    from studio.datasets import load_dataset

    backend = VAEBackend.load(model, settings)
    assert backend.net.whitening is not None and backend.describe()["whitened"] is True
    images = load_dataset(model, "test", limit=500, settings=settings).images
    z = backend.encode(images)["z"]
    assert z.mean(0).abs().max() < 0.25 and ((z.std(0) - 1).abs() < 0.25).all()
    space = backend.spaces()["z"]
    assert space.coding_mean == pytest.approx([0.0] * z.shape[1], abs=1e-4)
    assert space.coding_std == pytest.approx([1.0] * z.shape[1], abs=1e-3)
    with torch.no_grad():
        raw = backend.net.decode(backend.net.encode_stats(images[:50])[0]).clamp(-1, 1)
    assert torch.allclose(backend.decode({"z": z[:50]}), raw, atol=1e-4)


def test_shipped_metadata_records_the_training(settings: Settings) -> None:
    meta = read_metadata(SHIPPED)
    assert meta["dataset"] == "mnist" and meta["seed"] == "0" and int(meta["epochs"]) >= 1
    assert json.loads(meta["metrics"])["test_psnr"] >= 24.0
    backend = VAEBackend.load(None, settings)
    assert backend.model.name == "mnist"
    space = backend.spaces()["z"]
    assert len(space.coding_std) == backend.config.latent_dim and min(space.coding_std) > 0


def test_default_config_keeps_the_original_architecture_and_json() -> None:
    """Weights written before `extra_convs`/`hidden` existed load unchanged: same JSON, same state-dict keys."""
    assert VAEConfig().to_json() == '{"base_width": 32, "channels": 1, "latent_dim": 16, "size": 28}'
    assert VAEConfig.from_json('{"base_width": 32, "channels": 1, "latent_dim": 16, "size": 28}') == VAEConfig()
    keys = ["decoder.0.bias", "decoder.0.weight", "decoder.2.bias", "decoder.2.weight", "encoder.0.bias",
            "encoder.0.weight", "encoder.2.bias", "encoder.2.weight", "from_latent.0.bias", "from_latent.0.weight",
            "to_stats.bias", "to_stats.weight"]
    assert sorted(ConvVAE(VAEConfig()).state_dict()) == keys
    bigger = VAEConfig(extra_convs=1, hidden=8)
    assert VAEConfig.from_json(bigger.to_json()) == bigger and '"extra_convs": 1' in bigger.to_json()
    net = ConvVAE(bigger)
    assert len(net.state_dict()) > len(keys) and net.decode(torch.zeros(2, 16)).shape == (2, 1, 28, 28)


def test_whitening_makes_encode_and_decode_exact_inverses(settings: Settings) -> None:
    """A whitened model's latent is L^-1 (mu - m); decode maps it back to mu, so decode(encode(x)) decodes the
    posterior mean, and the whitened training means are standard."""
    from studio_vae.model import Whitening

    torch.manual_seed(0)
    net = ConvVAE(VAEConfig(base_width=4, latent_dim=4))
    images = torch.rand(200, 1, 28, 28) * 2 - 1
    mixing = torch.tensor([[3.0, 0, 0, 0], [1.0, 0.5, 0, 0], [0, -2.0, 1.0, 0], [0.5, 0, 0, 2.0]])
    data = torch.randn(1000, 4) @ mixing.T + torch.tensor([1.0, -2.0, 0.0, 3.0])  # correlated, shifted
    whitening = Whitening.fit(data)
    white = whitening.whiten(data)
    assert torch.allclose(white.mean(0), torch.zeros(4), atol=1e-4)
    assert torch.allclose(torch.cov(white.T), torch.eye(4), atol=1e-3)
    with torch.no_grad():
        mu = net.encode_stats(images)[0]
        w = whitening.whiten(mu)
        assert torch.allclose(whitening.unwhiten(w), mu, atol=1e-5)
    path = settings.model_root_paths[0] / "vae" / "white.safetensors"
    meta = {"config": net.config.to_json(), **whitening.to_metadata()}
    save_weights(path, net.state_dict(), meta)
    backend = VAEBackend.load("white", settings)
    assert torch.equal(backend.net.whitening.chol, whitening.chol)
    z = backend.encode(images)["z"]
    assert torch.allclose(z, w, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(backend.decode({"z": z}), net.decode(mu).clamp(-1, 1), atol=1e-5)
        seeds = backend.sample_prior("z", seeds=[1, 2])  # N(0, I) seeds decode from m + L eps
        expected = net.decode(whitening.mean + seeds @ whitening.chol.T).clamp(-1, 1)
    assert torch.allclose(backend.decode({"z": seeds}), expected, atol=1e-5)


def test_malformed_whitening_is_a_clear_error(settings: Settings) -> None:
    net = ConvVAE(VAEConfig(base_width=4, latent_dim=4))
    path = settings.model_root_paths[0] / "vae" / "bad.safetensors"
    meta = {"config": net.config.to_json(), "whitening_mean": json.dumps([0.0] * 4),
            "whitening_chol": json.dumps([[1.0, 0, 0, 0]] * 3)}
    save_weights(path, net.state_dict(), meta)
    with pytest.raises(InputError, match="not readable.*whitening"):
        VAEBackend.load("bad", settings)
    eye = torch.eye(4)
    eye[2, 2] = -1.0
    save_weights(path, net.state_dict(), {**meta, "whitening_chol": json.dumps(eye.tolist())})
    with pytest.raises(InputError, match="non-positive diagonal"):
        VAEBackend.load("bad", settings)


def test_training_with_the_new_options_writes_a_whitened_bigger_model(settings: Settings, tmp_path: Path) -> None:
    """extra_convs, hidden and whiten reach `train_vae` through `VAEBackend.train`'s kwargs (what
    `--train-option` passes): the file holds the bigger architecture and a whitening, its coding statistics are
    those of what encode returns for the training images, and the recipe records `whiten`."""
    out = tmp_path / "w.safetensors"
    metrics = VAEBackend.train("mnist", 1, str(out), 3, settings, limit=128, batch_size=64, base_width=4,
                               latent_dim=4, extra_convs=1, hidden=8, kl_weight=0.1, whiten=True)
    meta = read_metadata(out)
    assert json.loads(meta["training"])["whiten"] is True and json.loads(meta["training"])["kl_weight"] == 0.1
    net, _ = load_vae(out)
    assert net.config == VAEConfig(base_width=4, latent_dim=4, extra_convs=1, hidden=8)
    assert net.whitening is not None and metrics["parameters"] > 0
    from studio.datasets import load_dataset

    z = net.encode_latent(load_dataset("mnist", "train", limit=128, settings=settings).images).detach()
    assert json.loads(meta["coding_mean"]) == pytest.approx(z.mean(0).tolist(), abs=1e-4)
    assert json.loads(meta["coding_std"]) == pytest.approx(z.std(0).tolist(), abs=1e-4)
    assert max(abs(v) for v in json.loads(meta["coding_mean"])) < 1e-3  # whitened: centred
    with pytest.raises(InputError, match="at least 0"):
        VAEBackend.train("mnist", 1, str(out), 3, settings, limit=64, extra_convs=-1)


def _clustered_latents(n: int = 600, seed: int = 0) -> torch.Tensor:
    """Three well separated clusters in 4-d: what a single Gaussian fits badly and a mixture well."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[6.0, 0, 0, 0], [-6.0, 0, 0, 0], [0, 6.0, 0, 0]])
    return centres[torch.arange(n) % 3] + 0.3 * torch.randn(n, 4, generator=g)


def test_mixture_prior_draws_each_seed_on_its_own_and_near_the_data() -> None:
    """A seed's latent is mean[k] + chol[k] @ eps, with eps the seed's standard-normal draw: deterministic,
    independent of its batch, and (unlike N(0, I) after whitening) on the clusters, not between them."""
    from studio_vae.prior import MixturePrior

    prior = MixturePrior.fit(_clustered_latents(), components=3, seed=0)
    z = prior.sample(range(200))
    assert z.shape == (200, 4) and torch.equal(z, prior.sample(range(200)))
    assert torch.equal(prior.sample([7])[0], z[7])
    eps = torch.randn(4, generator=torch.Generator().manual_seed(7))
    assert any(torch.allclose(z[7], prior.means[k] + prior.chols[k] @ eps, atol=1e-5) for k in range(3))
    nearest = torch.cdist(z, prior.means).min(1).values
    assert float(nearest.max()) < 3.0  # every draw lies on a cluster (std 0.3 per axis); origin is 6 away
    centres = torch.tensor([[6.0, 0, 0, 0], [-6.0, 0, 0, 0], [0, 6.0, 0, 0]])
    assert torch.cdist(prior.means, centres).min(1).values.max() < 0.2
    counts = torch.bincount(torch.cdist(z, centres).argmin(1), minlength=3)
    assert counts.min() > 40  # all three components are drawn, about equally (weights 1/3)


def test_a_model_with_a_prior_samples_from_it_and_encodes_as_before(settings: Settings, tmp_path: Path) -> None:
    """`add_prior` (what `python -m studio_vae.prior` runs) fits the mixture to the encoded training set and
    stores it in the weights; loading gives a backend whose seeds come from it, while encode, decode and every
    other tensor and metadata entry stay as they were."""
    from studio_vae.prior import PRIOR_KEY, add_prior, main

    path = write_tiny_vae(settings, "plain")
    before = VAEBackend.load("plain", settings)
    images = torch.rand(8, 1, 28, 28) * 2 - 1
    z_before = before.encode(images)["z"]
    out = path.with_name("mixed.safetensors")
    info = add_prior(path, "mnist", components=4, seed=1, out=out)
    assert info == {"kind": "gaussian_mixture", "components": 4, "seed": 1, "dataset": "mnist",
                    "train_images": 60000}
    after = VAEBackend.load("mixed", settings)
    assert after.net.prior is not None and after.net.prior.components == 4
    assert after.describe()["prior"] == "gaussian mixture of 4"
    assert torch.equal(after.encode(images)["z"], z_before)
    seeds = after.sample_prior("z", [3, 4])
    assert torch.equal(seeds, after.net.prior.sample([3, 4]))
    assert not torch.allclose(seeds, before.sample_prior("z", [3, 4]))
    meta_before, meta_after = read_metadata(path), read_metadata(out)
    assert json.loads(meta_after.pop(PRIOR_KEY)) == info and meta_after == meta_before
    main([str(out), "--dataset", "mnist", "--components", "2"])  # in place, replacing the old prior
    assert load_vae(out)[0].prior.components == 2
    with pytest.raises(InputError, match="no latent space 'w'"):
        after.sample_prior("w", [1])


@pytest.mark.parametrize(("change", "message"), [
    ({"prior.chols": None}, "incomplete"),
    ({"prior.weights": torch.tensor([0.5, 0.6])}, "sum to 1"),
    ({"prior.means": torch.zeros(2, 3)}, r"means \(K, 4\)"),
    ({"prior.chols": -torch.eye(4).repeat(2, 1, 1)}, "positive diagonal"),
    ({"prior.means": torch.full((2, 4), float("nan"))}, "non-finite"),
])
def test_malformed_prior_is_a_clear_error(settings: Settings, change: dict, message: str) -> None:
    net = ConvVAE(VAEConfig(base_width=4, latent_dim=4))
    prior = {"prior.weights": torch.tensor([0.5, 0.5]), "prior.means": torch.zeros(2, 4),
             "prior.chols": torch.eye(4).repeat(2, 1, 1)}
    for key, value in change.items():
        prior.pop(key) if value is None else prior.__setitem__(key, value)
    path = settings.model_root_paths[0] / "vae" / "bad.safetensors"
    save_weights(path, {**net.state_dict(), **prior}, {"config": net.config.to_json()})
    with pytest.raises(InputError, match=f"not readable.*{message}"):
        VAEBackend.load("bad", settings)


def test_training_with_prior_components_stores_a_fitted_prior(settings: Settings, tmp_path: Path) -> None:
    """`--train-option prior_components=K` fits the mixture to the public (whitened) training latents at the end
    of training and stores it with its settings in the metadata."""
    from studio_vae.prior import MixturePrior

    out = tmp_path / "p.safetensors"
    VAEBackend.train("mnist", 1, str(out), 3, settings, limit=128, batch_size=64, base_width=4, latent_dim=4,
                     whiten=True, prior_components=3)
    net, meta = load_vae(out)
    assert json.loads(meta["prior"]) == {"kind": "gaussian_mixture", "components": 3, "seed": 3,
                                         "dataset": "mnist", "train_images": 128}
    from studio.datasets import load_dataset

    z = net.encode_latent(load_dataset("mnist", "train", limit=128, settings=settings).images).detach()
    refit = MixturePrior.fit(z, 3, seed=3)
    assert torch.allclose(net.prior.means, refit.means, atol=1e-4)
    with pytest.raises(InputError, match="at least 0"):
        VAEBackend.train("mnist", 1, str(out), 3, settings, limit=64, prior_components=-1)
