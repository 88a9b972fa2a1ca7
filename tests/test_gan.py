"""Tests of the GAN plugin: models, sampling, the face weights, import, inversion and training."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from studio_gan.backend import GANBackend, GANOptions
from studio_gan.importer import import_dcgan_tutorial, infer_config, load_weights
from studio_gan.invert import InversionSettings, invert
from studio_gan.models import Generator, GeneratorConfig
from studio_gan.train import train_gan

from studio.config import load_settings
from studio.contract import CODEC, SEED
from studio.errors import InputError, NotFound
from studio.hashing import file_sha256

SHIPPED = Path(__file__).resolve().parents[1] / "plugins" / "studio_gan" / "weights" / "mnist.safetensors"


@pytest.fixture()
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    for var in ("STUDIO_MODEL_ROOTS", "STUDIO_DATA_ROOTS", "STUDIO_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return load_settings()


@pytest.fixture(scope="module")
def mnist_backend(tmp_path_factory):
    home = tmp_path_factory.mktemp("gan-home")
    return GANBackend.load("mnist", load_settings({"STUDIO_HOME": str(home)}))


def tiny_tutorial_generator(seed: int = 0, nc: int = 3) -> Generator:
    """A small randomly initialised DCGAN-tutorial generator (16x16), with non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    generator = Generator(GeneratorConfig(nz=8, ngf=4, nc=nc, size=16, start=4))
    with torch.no_grad():
        generator.main[-2].weight.mul_(40.0)  # default init makes near-constant images; spread them over [-1, 1]
    generator.train()
    with torch.no_grad():
        for _ in range(3):
            generator(torch.randn(16, 8))
    return generator.eval()


class RunsCode:
    """Unpickling this calls os.makedirs(path): what weights_only loading must refuse."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1.0 / (((a - b) / 2) ** 2).flatten(1).mean(1).clamp_min(1e-10))


# ----- models and registration -----

def test_plugin_registers_through_the_entry_point(monkeypatch):
    from studio.registry import load_registry

    monkeypatch.setenv("STUDIO_PLUGINS", "gan")
    registry = load_registry(refresh=True)
    try:
        assert registry.get("gan") is GANBackend, [e.error for e in registry.errors]
    finally:
        monkeypatch.delenv("STUDIO_PLUGINS")
        load_registry(refresh=True)


@pytest.mark.parametrize(("size", "start", "n_up"), [(64, 4, 4), (32, 4, 3), (28, 7, 2), (16, 4, 2)])
def test_generator_sizes(size, start, n_up):
    config = GeneratorConfig(nz=5, ngf=2, nc=1, size=size, start=start)
    assert config.n_up == n_up
    out = Generator(config).eval()(torch.randn(2, 5))
    assert tuple(out.shape) == (2, 1, size, size)
    assert infer_config(Generator(config).state_dict()) == config


def test_generator_with_a_mapping_network_round_trips_its_config():
    config = GeneratorConfig(nz=6, ngf=2, nc=1, size=28, start=7, mapping=2, mapping_width=16)
    generator = Generator(config).eval()
    assert tuple(generator(torch.randn(3, 6)).shape) == (3, 1, 28, 28)
    assert infer_config(generator.state_dict()) == config
    assert GeneratorConfig.from_metadata(config.metadata()) == config


def test_generator_config_refuses_impossible_sizes():
    with pytest.raises(ValueError):
        GeneratorConfig(nz=5, ngf=2, nc=1, size=30, start=4).validate()
    with pytest.raises(ValueError):
        GeneratorConfig(nz=5, ngf=2, nc=2, size=16, start=4).validate()
    with pytest.raises(ValueError):
        GeneratorConfig(nz=5, ngf=2, nc=1, size=16, start=4, mapping=2, mapping_width=0).validate()


# ----- the shipped MNIST model -----

def test_shipped_mnist_declares_its_space_and_shape(mnist_backend):
    z_space = mnist_backend.spaces()["z"]
    assert z_space.roles == frozenset({SEED, CODEC}) and z_space.prior == "gaussian"
    assert z_space.shape == (mnist_backend.config.nz,)
    assert mnist_backend.image_shape() == (1, 28, 28)
    assert mnist_backend.model.sha256 == file_sha256(SHIPPED)


def test_sample_shapes_range_and_determinism(mnist_backend):
    z = mnist_backend.sample_prior("z", [0, 1, 2])
    images = mnist_backend.decode({"z": z})
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.1  # not a blank image
    again = mnist_backend.decode({"z": mnist_backend.sample_prior("z", [0, 1, 2])})
    assert torch.equal(images, again)
    alone = mnist_backend.decode({"z": mnist_backend.sample_prior("z", [1])})
    assert torch.allclose(alone[0], images[1], atol=1e-5)  # a sample does not depend on its batch
    other = mnist_backend.decode({"z": mnist_backend.sample_prior("z", [3])})
    assert not torch.allclose(other[0], images[0], atol=1e-2)


def test_decode_and_encode_refuse_bad_shapes(mnist_backend):
    with pytest.raises(InputError, match="shape"):
        mnist_backend.decode({"z": torch.zeros(2, 3)})
    with pytest.raises(InputError, match="shape"):
        mnist_backend.decode({"w": torch.zeros(2, mnist_backend.config.nz)})
    with pytest.raises(InputError, match="NaN"):
        mnist_backend.decode({"z": torch.full((1, mnist_backend.config.nz), float("nan"))})
    with pytest.raises(InputError, match="shape"):
        mnist_backend.encode(torch.zeros(1, 3, 28, 28))


def test_options_forbid_unknown_fields_and_bad_values():
    assert GANBackend.parse_options({}) == GANOptions()
    with pytest.raises(InputError, match="invert_stepz"):
        GANBackend.parse_options({"invert_stepz": 3})
    with pytest.raises(InputError, match="invert_restarts"):
        GANBackend.parse_options({"invert_restarts": 0})


def test_unknown_model_is_not_found(settings):
    with pytest.raises(NotFound, match="nope"):
        GANBackend.load("nope", settings)


# ----- the pretrained faces -----

def test_faces_model_converts_from_the_package_and_makes_faces(settings):
    models = {m.name: m for m in GANBackend.available_models(settings)}
    assert {"mnist", "faces"} <= set(models)
    converted = settings.model_root_paths[0] / "gan" / "faces.safetensors"
    assert not converted.exists() and models["faces"].sha256 == ""  # listing never converts (that needs torch)
    backend = GANBackend.load("faces", settings)  # loading converts, once
    models = {m.name: m for m in GANBackend.available_models(settings)}
    assert converted.is_file() and models["faces"].sha256 == file_sha256(converted) == backend.model.sha256
    assert backend.image_shape() == (3, 64, 64) and backend.config.nz == 100 and backend.config.ngf == 64
    assert sum(p.numel() for p in backend.generator.parameters()) == 3_576_704
    images = backend.decode({"z": backend.sample_prior("z", [0, 1])})
    assert images.shape == (2, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.1
    # the converted weights equal the package's checkpoint, read tensors-only
    from studio_gan.backend import faces_checkpoint
    from studio_gan.importer import read_tutorial_checkpoint

    original = read_tutorial_checkpoint(faces_checkpoint())
    state = backend.generator.state_dict()
    assert all(torch.equal(original[k], state[k]) for k in original)


# ----- import -----

@pytest.mark.parametrize("layout", ["tutorial", "bare", "data-parallel"])
def test_import_round_trip(settings, tmp_path, layout):
    generator = tiny_tutorial_generator()
    state = generator.state_dict()
    if layout == "data-parallel":
        state = {f"module.{k}": v for k, v in state.items()}
    checkpoint = {"netG_state_dict": state, "epoch": 3} if layout == "tutorial" else state
    path = tmp_path / "ckpt.pth"
    torch.save(checkpoint, path)
    info = import_dcgan_tutorial(path, "tiny", settings)
    assert Path(info.path) == settings.model_root_paths[0] / "gan" / "tiny.safetensors"
    assert info.extra["nz"] == 8 and info.extra["size"] == 16 and info.sha256 == file_sha256(info.path)
    assert "tiny" in {m.name for m in GANBackend.available_models(settings)}
    backend = GANBackend.load("tiny", settings)
    z = backend.sample_prior("z", [4, 5])
    with torch.no_grad():
        expected = generator(z)
    assert torch.allclose(backend.decode({"z": z}), expected, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_import_refuses_corrupt_files_code_and_wrong_layouts(settings, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(InputError, match="cannot be read") as exc:
        import_dcgan_tutorial(corrupt, "x", settings)
    assert "\n" not in str(exc.value)

    code = tmp_path / "code.pth"  # a pickle that would call a function when unpickled
    code.write_bytes(pickle.dumps({"netG_state_dict": Path("/tmp")}))
    with pytest.raises(InputError, match="objects other than tensors"):
        import_dcgan_tutorial(code, "x", settings)

    marker = tmp_path / "code-ran"
    torch.save({"netG_state_dict": RunsCode(str(marker))}, code)
    with pytest.raises(InputError, match="objects other than tensors"):
        import_dcgan_tutorial(code, "x", settings)
    assert not marker.exists()

    wrong = tmp_path / "wrong.pth"
    torch.save({"netG_state_dict": {"fc.weight": torch.zeros(3, 3)}}, wrong)
    with pytest.raises(InputError, match="not a DCGAN-tutorial generator"):
        import_dcgan_tutorial(wrong, "x", settings)

    truncated = tiny_tutorial_generator().state_dict()
    truncated["main.3.weight"] = torch.zeros(5, 5, 4, 4)
    torch.save(truncated, wrong)
    with pytest.raises(InputError, match="main.3.weight"):
        import_dcgan_tutorial(wrong, "x", settings)

    with pytest.raises(NotFound):
        import_dcgan_tutorial(tmp_path / "missing.pth", "x", settings)
    assert not (settings.model_root_paths[0] / "gan" / "x.safetensors").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 65, "mnist", "faces"])
def test_import_refuses_bad_names(settings, tmp_path, name):
    path = tmp_path / "ok.pth"
    torch.save(tiny_tutorial_generator().state_dict(), path)
    with pytest.raises(InputError):
        import_dcgan_tutorial(path, name, settings)


def test_corrupt_weights_in_the_model_root_get_a_clear_error(settings):
    folder = settings.model_root_paths[0] / "gan"
    folder.mkdir(parents=True)
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(InputError, match="broken"):
        GANBackend.load("broken", settings)


# ----- inversion -----

def test_inversion_recovers_a_tiny_generators_own_samples():
    generator = tiny_tutorial_generator(nc=1)
    target_z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        images = generator(target_z)
    calls = []
    z0, _ = invert(generator, images, 8, seed=0, settings=InversionSettings(steps=0, restarts=2))
    z, loss = invert(generator, images, 8, seed=0, settings=InversionSettings(steps=60, restarts=2),
                     progress=lambda step, total, *a, **k: calls.append((step, total)))
    assert calls[-1] == (60, 60) and len(calls) == 60
    with torch.no_grad():
        before, after = psnr(generator(z0), images), psnr(generator(z), images)
    assert (after > before + 3).all(), (before, after)
    assert all(p.requires_grad for p in generator.parameters())  # restored after inversion


def test_inversion_is_deterministic_and_init_is_used():
    generator = tiny_tutorial_generator(nc=1)
    with torch.no_grad():
        target_z = torch.randn(3, 8)
        images = generator(target_z)
    settings = InversionSettings(steps=5, restarts=3)
    a, _ = invert(generator, images, 8, seed=7, settings=settings)
    b, _ = invert(generator, images, 8, seed=7, settings=settings)
    assert torch.equal(a, b)
    exact, loss = invert(generator, images, 8, seed=7, init=target_z,
                         settings=InversionSettings(steps=0, restarts=3, prior_weight=0.0))
    assert torch.equal(exact, target_z)  # the perfect init wins the restarts


@pytest.mark.slow  # the first MNIST load in a fresh STUDIO_HOME builds the data cache (several seconds)
def test_inversion_improves_psnr_on_mnist_test_images(mnist_backend):
    from studio.datasets import load_dataset

    images = load_dataset("mnist", "test", limit=4, settings=mnist_backend.settings).images
    init = mnist_backend.encode(images, GANOptions(invert_steps=0, invert_restarts=1))
    tuned = mnist_backend.encode(images, GANOptions(invert_steps=25, invert_restarts=1))
    before = psnr(mnist_backend.decode(init), images).mean()
    after = psnr(mnist_backend.decode(tuned), images).mean()
    assert after > before + 1.0, (before, after)


@pytest.mark.slow
def test_default_inversion_reaches_16_db_on_mnist(mnist_backend):
    from studio.datasets import load_dataset

    images = load_dataset("mnist", "test", limit=10, settings=mnist_backend.settings).images
    point = mnist_backend.encode(images, seed=0)
    assert point["z"].shape == (10, mnist_backend.config.nz)
    assert psnr(mnist_backend.decode(point), images).mean() >= 16.0


# ----- training -----

def test_training_is_deterministic_by_seed(settings, tmp_path):
    kwargs = dict(settings=settings, nz=8, ngf=4, ndf=4, mapping=1, mapping_width=8, batch_size=16, limit=48,
                  encoder_steps=3, encoder_width=4)
    steps = []
    metrics = train_gan("digits", 1, tmp_path / "a.safetensors", seed=3,
                        progress=lambda step, total, message="", preview=None: steps.append((step, total)), **kwargs)
    train_gan("digits", 1, tmp_path / "b.safetensors", seed=3, **kwargs)
    train_gan("digits", 1, tmp_path / "c.safetensors", seed=4, **kwargs)
    assert metrics["steps"] == 3 and steps[-1] == (6, 6) and len(steps) == 6
    a, b, c = (tmp_path / f"{x}.safetensors" for x in "abc")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    generator, encoder, meta = load_weights(a)
    assert generator.config == GeneratorConfig(nz=8, ngf=4, nc=1, size=28, start=7, mapping=1, mapping_width=8)
    assert encoder is not None and meta["format"] == "studio-gan/1"
    assert tuple(generator(torch.randn(2, 8)).shape) == (2, 1, 28, 28)


def test_training_through_the_backend_refuses_bad_arguments(settings, tmp_path):
    with pytest.raises(InputError, match="epochs"):
        GANBackend.train("digits", 0, str(tmp_path / "x.safetensors"), 0, settings)
    with pytest.raises(InputError, match="size"):
        GANBackend.train("digits", 1, str(tmp_path / "x.safetensors"), 0, settings, size=30, limit=32)
