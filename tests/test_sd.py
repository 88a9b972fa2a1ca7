"""The Stable Diffusion backend on a tiny random pipeline built from configs (mechanics, not quality)."""

from __future__ import annotations

import time

import pytest
import torch
from studio_sd.backend import SDBackend, SDOptions
from studio_sd.models import weights_sha256
from studio_sd.optimise import RuntimeOptions, choose_runtime
from studio_sd.tiny import build_sd_pipeline, build_tiny_sd

from studio.config import load_settings
from studio.contract import CODEC, CONDITION, SEED
from studio.errors import Cancelled, InputError, NotFound
from studio.hashing import CACHE_FILE

PROMPT = "a photo of a smiling cat"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def roots(tmp_path_factory, tiny_sd_models):
    base = tmp_path_factory.mktemp("sd")
    return {"STUDIO_HOME": str(base / "home"), "STUDIO_MODEL_ROOTS": str(tiny_sd_models), "HF_HOME": str(base / "hf")}


@pytest.fixture(autouse=True)
def studio_env(monkeypatch, roots):
    for key, value in roots.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for key in ("STUDIO_SD_COMPILE", "STUDIO_SD_CHANNELS_LAST", "STUDIO_SD_VAE_TILING", "STUDIO_SD_VAE_SLICING",
                "STUDIO_SD_ATTENTION", "STUDIO_SD_SAFETY_CHECKER"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="module")
def settings(roots):
    return load_settings(env=dict(roots))


@pytest.fixture(scope="module")
def backend(settings):
    return SDBackend.load("tiny", settings, "cpu", "float32")


def opts(**kw) -> SDOptions:
    return SDBackend.parse_options({"prompt": PROMPT, "steps": 2, **kw})


def generate(backend, seeds=(1,), **kw) -> torch.Tensor:
    o = opts(**kw)
    return backend.decode({"noise": backend.sample_prior("noise", list(seeds), o)}, o)


# ----- building, discovery, loading -----
def test_tiny_build_is_deterministic_by_seed(tmp_path):
    a, b, c = (build_tiny_sd(tmp_path / name, seed=s) for name, s in (("a", 3), ("b", 3), ("c", 4)))
    assert (a / "model_index.json").is_file() and list(a.glob("unet/*.safetensors"))
    assert not list(a.rglob("*.bin"))
    assert weights_sha256(a) == weights_sha256(b) != weights_sha256(c)


def test_registered_through_the_entry_point():
    from studio.registry import load_registry

    cls = load_registry(refresh=True).get("sd")
    assert cls is SDBackend and cls.version == "0.1.0"
    assert {"sample", "encode", "decode", "text", "img2img", "train"} == set(cls.capabilities)


def test_available_models_lists_folders_under_sd(settings, roots, monkeypatch):
    from studio import hashing

    monkeypatch.setattr(hashing, "_memory", {})  # as in a fresh process (the shared tiny model was hashed before)
    models = SDBackend.available_models(settings)
    assert [m.name for m in models] == ["mnist-fashion", "tiny"]  # the shipped model first: the default
    assert len(models[1].sha256) == 64 and models[1].sha256 == weights_sha256(settings.model_root_paths[0] / "sd/tiny")
    assert (settings.cache_path / CACHE_FILE).is_file()  # per-file hashes cached on disk


def test_load_by_name_and_by_relative_folder(settings, backend):
    assert SDBackend.load("tiny", settings).model.sha256 == backend.model.sha256
    assert SDBackend.load("sd/tiny", settings).model.path == backend.model.path


def test_no_model_installed_says_how_to_get_one(tmp_path, monkeypatch):
    from studio_sd import models

    monkeypatch.setattr(models, "SHIPPED_DIR", tmp_path / "no-shipped-models")
    empty = load_settings(env={"STUDIO_HOME": str(tmp_path), "STUDIO_MODEL_ROOTS": str(tmp_path / "m")})
    with pytest.raises(NotFound, match="studio sd tiny"):
        SDBackend.load(None, empty)


def test_model_folder_outside_the_roots_is_refused(settings, tmp_path):
    outside = build_tiny_sd(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="outside the configured roots"):
        SDBackend.load(str(outside), settings)


def test_folder_that_is_not_a_pipeline_is_refused(settings):
    (settings.model_root_paths[0] / "junk").mkdir(exist_ok=True)
    with pytest.raises(InputError, match="model_index.json"):
        SDBackend.load(str(settings.model_root_paths[0] / "junk"), settings)
    with pytest.raises(NotFound, match="not an installed SD model"):
        SDBackend.load("no-such-model", settings)


def test_hub_id_offline_fails_fast_with_one_line(settings):
    start = time.monotonic()
    with pytest.raises(NotFound) as err:
        SDBackend.load("runwayml/stable-diffusion-v1-5", settings)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "\n" not in message and "runwayml/stable-diffusion-v1-5" in message and "offline" in message
    assert str(settings.model_root_paths[0]) in message


# ----- options and spaces -----
@pytest.mark.parametrize(("bad", "words"), [
    ({"width": 100}, "multiple of 8"), ({"height": 32}, "greater than or equal to 64"),
    ({"scheduler": "plms"}, "scheduler"), ({"steps": 0}, "steps"), ({"guidance": 31}, "guidance"),
    ({"strength": 1.5}, "strength"), ({"seed": 1}, "seed"),
])
def test_bad_options_are_clear_input_errors(bad, words):
    with pytest.raises(InputError, match=words):
        SDBackend.parse_options(bad)


def test_spaces_shapes_roles_and_priors(backend):
    spaces = backend.spaces(opts())
    assert spaces["noise"].shape == (4, 8, 8) and spaces["noise"].prior == "gaussian" and SEED in spaces["noise"].roles
    assert spaces["codec"].shape == (4, 8, 8) and spaces["codec"].prior == "none" and CODEC in spaces["codec"].roles
    assert spaces["condition"].shape == (77, 32) and CONDITION in spaces["condition"].roles
    assert backend.image_shape(opts()) == (3, 64, 64)
    wide = opts(width=128, height=96)
    assert backend.spaces(wide)["noise"].shape == (4, 12, 16) and backend.image_shape(wide) == (3, 96, 128)
    noise = backend.sample_prior("noise", [5, 6], wide)
    assert noise.shape == (2, 4, 12, 16)
    assert torch.equal(noise[0], torch.randn((4, 12, 16), generator=torch.Generator().manual_seed(5)))


def test_condition_is_the_prompt_embedding_repeated(backend):
    cond = backend.condition(3, opts())["condition"]
    assert cond.shape == (3, 77, 32) and cond.dtype == torch.float32 and cond.device.type == "cpu"
    assert torch.equal(cond[0], cond[2])
    assert not torch.equal(cond, backend.condition(3, opts(prompt="a red dog"))["condition"])


# ----- generation -----
def test_generation_shapes_range_and_determinism(backend):
    a = generate(backend, seeds=(1, 2))
    assert a.shape == (2, 3, 64, 64) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, generate(backend, seeds=(1, 2)))
    assert not torch.equal(a[0], a[1])
    # an item does not depend on its batch (up to float rounding: kernels differ by batch size)
    assert torch.allclose(a[1:], generate(backend, seeds=(2,)), atol=1e-5)


def test_decode_equals_a_raw_diffusers_call(backend):
    o = opts(negative_prompt="blurry", guidance=5.0, steps=3)
    noise = backend.sample_prior("noise", [7], o)
    ours = backend.decode({"noise": noise}, o)
    raw = backend.pipe(prompt=PROMPT, negative_prompt="blurry", guidance_scale=5.0, num_inference_steps=3,
                       latents=noise, output_type="pt").images * 2 - 1
    assert torch.allclose(ours, raw, atol=1e-6)


def test_prompt_embeddings_are_the_same_cached_or_not(backend):
    o = opts(negative_prompt="a blue dog")
    noise = backend.sample_prior("noise", [4], o)
    backend._embeddings.clear()
    both_at_once = backend.decode({"noise": noise}, o)  # prompt and negative in one encode_prompt call
    assert torch.equal(both_at_once, backend.decode({"noise": noise}, o))  # both from the cache
    backend._embeddings.clear()
    separately = backend.decode({"noise": noise, **backend.condition(1, o)}, o)
    assert torch.equal(both_at_once, separately)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpmpp"])
def test_each_scheduler_runs_deterministically(backend, scheduler):
    a = generate(backend, scheduler=scheduler, steps=3)
    assert a.shape == (1, 3, 64, 64) and torch.isfinite(a).all()
    assert torch.equal(a, generate(backend, scheduler=scheduler, steps=3))
    assert type(backend.pipe.scheduler).__name__ == {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
                                                     "dpmpp": "DPMSolverMultistepScheduler"}[scheduler]


def test_schedulers_give_different_images(backend):
    images = [generate(backend, scheduler=s, steps=3) for s in ("ddim", "euler", "dpmpp")]
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[0], images[2])


def test_prompt_and_negative_prompt_change_the_output(backend):
    base = generate(backend)
    assert not torch.equal(base, generate(backend, prompt="a blue portrait painting"))
    assert not torch.equal(base, generate(backend, negative_prompt="a dog"))
    # without guidance the negative prompt plays no part
    assert torch.equal(generate(backend, guidance=1.0), generate(backend, guidance=1.0, negative_prompt="a dog"))


def test_condition_in_the_point_overrides_the_prompt(backend):
    o = opts(prompt="a red dog")
    noise = backend.sample_prior("noise", [3], o)
    cat = backend.condition(1, opts())
    from_point = backend.decode({"noise": noise, **cat}, o)
    assert torch.equal(from_point, generate(backend, seeds=(3,)))
    halfway = {"condition": 0.5 * cat["condition"] + 0.5 * backend.condition(1, o)["condition"]}
    assert torch.isfinite(backend.decode({"noise": noise, **halfway}, o)).all()


def test_progress_per_step_and_cancel_propagates(backend):
    o = opts(steps=3)
    noise = backend.sample_prior("noise", [1], o)
    seen = []
    backend.decode({"noise": noise}, o, progress=lambda step, total, *a, **k: seen.append((step, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]

    def cancel(step, total, *a, **k):
        raise Cancelled("job cancelled")

    with pytest.raises(Cancelled):
        backend.decode({"noise": noise}, o, progress=cancel)


@pytest.mark.parametrize(("point", "words"), [
    ({"latent": torch.zeros(1, 4, 8, 8)}, "unknown spaces"),
    ({"noise": torch.zeros(1, 4, 9, 8)}, "expected"),
    ({"condition": torch.zeros(1, 77, 32)}, "needs 'noise'"),
    ({"noise": torch.full((1, 4, 8, 8), float("nan"))}, "NaN"),
    ({"noise": torch.zeros(2, 4, 8, 8), "condition": torch.zeros(3, 77, 32)}, "batch sizes"),
])
def test_bad_points_are_input_errors(backend, point, words):
    with pytest.raises(InputError, match=words):
        backend.decode(point, opts())


# ----- codec: encode, decode, img2img -----
def test_encode_decode_round_trip_mechanics(backend):
    images = generate(backend, seeds=(1, 2))
    code = backend.encode(images, opts())
    assert set(code) == {"codec"} and code["codec"].shape == (2, 4, 8, 8) and torch.isfinite(code["codec"]).all()
    assert torch.equal(code["codec"], backend.encode(images, opts())["codec"])  # posterior mean: deterministic
    recon = backend.decode(code, opts())
    assert recon.shape == images.shape and recon.min() >= -1 and recon.max() <= 1
    mse = float(((recon - images) ** 2).mean())
    psnr = 10 * torch.log10(torch.tensor(4.0 / mse))
    assert mse > 0 and torch.isfinite(psnr)
    with pytest.raises(InputError, match="expected"):
        backend.encode(torch.zeros(1, 3, 32, 32), opts())
    gray = backend.encode(images[:, :1], opts())["codec"]
    assert torch.equal(gray, backend.encode(images[:, :1].repeat(1, 3, 1, 1), opts())["codec"])


def test_shipped_tiny_vae_reconstructs_held_out_images(backend):
    from studio_sd.train_tiny_vae import make_images

    images = torch.from_numpy(make_images(8, seed=123))
    code = backend.encode(images, opts())["codec"]
    assert 0.5 < float(code.std()) < 2.0  # scaling_factor brings codec latents to about unit std
    mse = ((backend.decode({"codec": code}, opts()) - images) ** 2).flatten(1).mean(1)
    assert float((10 * torch.log10(4.0 / mse)).mean()) > 15.0
    random_vae = SDBackend.from_pipeline(build_sd_pipeline("tiny", trained_vae=False))
    mse_random = ((random_vae.decode(random_vae.encode(images, opts()), opts()) - images) ** 2).mean()
    assert float(mse_random) > 2 * float(mse.mean())


def test_img2img_follows_strength_and_matches_diffusers(backend):
    from diffusers import StableDiffusionImg2ImgPipeline
    from studio_sd.schedulers import make_scheduler

    o = opts(steps=4, strength=0.5)
    codec = backend.encode(generate(backend, seeds=(1, 2)), o)["codec"]
    noise = backend.sample_prior("noise", [8, 9], o)
    ours = backend.decode({"codec": codec, "noise": noise}, o)
    assert ours.shape == (2, 3, 64, 64)
    assert torch.equal(ours, backend.decode({"codec": codec, "noise": noise}, o))
    stronger = backend.decode({"codec": codec, "noise": noise}, o.model_copy(update={"strength": 0.9}))
    assert not torch.equal(ours, stronger)
    untouched = backend.decode({"codec": codec, "noise": noise}, o.model_copy(update={"strength": 0.0}))
    assert torch.equal(untouched, backend.decode({"codec": codec}, o))
    reference = StableDiffusionImg2ImgPipeline(**backend.pipe.components)
    reference.set_progress_bar_config(disable=True)
    reference.scheduler = make_scheduler("ddim", dict(backend.pipe.scheduler.config))
    raw = reference(prompt=[PROMPT] * 2, image=codec, strength=0.5, num_inference_steps=4, output_type="pt",
                    generator=[torch.Generator().manual_seed(s) for s in (8, 9)]).images * 2 - 1
    assert torch.allclose(ours, raw, atol=1e-5)


# ----- runtime options -----
def test_cpu_runtime_is_float32_without_compile():
    r = choose_runtime("cpu", "float16", env={"STUDIO_SD_COMPILE": "1"}, cuda_available=False)
    assert (r.device, r.dtype, r.compile_unet, r.channels_last, r.vae_tiling) == ("cpu", "float32", False, False, False)
    assert any("float16" in n for n in r.notes) and any("COMPILE" in n for n in r.notes)
    assert choose_runtime("auto", "auto", env={}, cuda_available=False).device == "cpu"


def test_cuda_runtime_choices_follow_config():
    r = choose_runtime("auto", "auto", env={}, cuda_available=True)
    assert (r.device, r.dtype, r.attention) == ("cuda", "float16", "sdpa")
    assert r.channels_last and r.vae_slicing and r.vae_tiling and not r.compile_unet
    env = {"STUDIO_SD_COMPILE": "1", "STUDIO_SD_COMPILE_MODE": "max-autotune", "STUDIO_SD_CHANNELS_LAST": "0",
           "STUDIO_SD_VAE_TILING": "off", "STUDIO_SD_ATTENTION": "classic"}
    r = choose_runtime("cuda:1", "bfloat16", env=env, cuda_available=True, bf16_supported=True)
    assert (r.device, r.dtype, r.compile_unet, r.compile_mode, r.attention) == (
        "cuda:1", "bfloat16", True, "max-autotune", "classic")
    assert not r.channels_last and not r.vae_tiling and r.vae_slicing
    r = choose_runtime("cuda", "bfloat16", env={}, cuda_available=True, bf16_supported=False)
    assert r.dtype == "float16" and r.notes


@pytest.mark.parametrize(("device", "dtype", "env", "words"), [
    ("cuda", "auto", {}, "no CUDA GPU"), ("tpu", "auto", {}, "unknown device"), ("cpu", "int8", {}, "unknown dtype"),
    ("cpu", "auto", {"STUDIO_SD_COMPILE": "maybe"}, "STUDIO_SD_COMPILE"),
    ("cpu", "auto", {"STUDIO_SD_COMPILE_MODE": "fast"}, "STUDIO_SD_COMPILE_MODE"),
])
def test_bad_runtime_config_is_an_input_error(device, dtype, env, words):
    with pytest.raises(InputError, match=words):
        choose_runtime(device, dtype, env=env, cuda_available=False)


def test_runtime_options_are_applied_and_keep_the_output(backend):
    from diffusers.models.attention_processor import AttnProcessor

    tuned = SDBackend.from_pipeline(build_sd_pipeline("tiny", seed=0), runtime=RuntimeOptions(
        attention="classic", channels_last=True, vae_slicing=True, vae_tiling=True))
    assert all(isinstance(p, AttnProcessor) for p in tuned.pipe.unet.attn_processors.values())
    assert tuned.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert tuned.pipe.vae.use_slicing and tuned.pipe.vae.use_tiling
    assert tuned.describe()["runtime"]["channels_last"] is True
    assert torch.allclose(generate(tuned, seeds=(1, 2)), generate(backend, seeds=(1, 2)), atol=1e-4)
    assert generate(tuned, width=128, height=128).shape == (1, 3, 128, 128)  # larger than a tile: tiled decode


# ----- walks over SD spaces -----
def test_seed_and_prompt_walk_over_sd(backend, tmp_path):
    from PIL import Image

    from studio.images import to_pil
    from studio.ops.walk import walk

    o = opts()
    keys = [{"noise": backend.sample_prior("noise", [s], o), **backend.condition(1, opts(prompt=p))}
            for s, p in ((1, "a cat"), (2, "a dog"))]
    paths = walk(backend, keys, 2, "slerp", o, tmp_path / "walk")
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    for path, key in ((paths[0], keys[0]), (paths[-1], keys[1])):
        expected = to_pil(backend.decode(key, o))[0]
        assert list(Image.open(path).convert("RGB").getdata()) == list(expected.getdata())
