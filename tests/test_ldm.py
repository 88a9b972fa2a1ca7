"""The shipped text-to-image model `mnist-fashion` (a Stable Diffusion pipeline trained here by `studio train ldm`):
every sd code path on it gives images that mean what was asked, scored by the project's classifiers on small
samples (bench/bench_ldm.py reports the full numbers)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio.classifier import load_classifier
from studio.config import load_settings
from studio.executor import execute
from studio.record import read_record

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "mnist-fashion"
ROOT = Path(__file__).resolve().parents[1]
SHIPPED_SHA256 = "31ac66378bcfd69c3d43d02a455884d06c3863541350226de65c44a355e3c793"  # docs/TRAINING.md


@pytest.fixture(scope="module")
def backend(runtime):
    return runtime.get_backend("sd", MODEL)


def images_of(result, prefix: str) -> torch.Tensor:
    from studio import images as imgs

    pngs = [Image.open(io.BytesIO(a.data)) for a in result.artifacts if a.name.startswith(prefix)]
    return imgs.to_tensor(pngs, (1, 28, 28))


def predict(images: torch.Tensor, dataset: str = "mnist") -> np.ndarray:
    from studio_sd.quality import for_classifier

    if images.shape[1:] != (1, 28, 28):
        images = for_classifier(images)
    return load_classifier(dataset).predict(images).numpy()


# ----- the model and where it comes from -----
def test_the_shipped_model_is_the_sd_default_and_a_plain_diffusers_folder(runtime, backend):
    from diffusers import StableDiffusionPipeline
    from studio_sd.backend import SDBackend, weights_problem
    from studio_sd.models import SHIPPED_DIR

    folder = SHIPPED_DIR / MODEL
    assert SDBackend.available_models(runtime.settings)[0].name == MODEL
    assert runtime.get_backend("sd", None).model.sha256 == backend.model.sha256 == SHIPPED_SHA256
    assert weights_problem(folder) == ""  # every weights header validates
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 8_000_000  # a few MB
    assert not list(folder.rglob("*.bin")) and len(list(folder.rglob("*.safetensors"))) == 3
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)  # no special case needed
    assert (pipe.unet.config.sample_size, pipe.vae_scale_factor, pipe.vae.config.latent_channels) == (8, 4, 4)
    assert backend.spaces()["codec"].shape == (4, 8, 8) and backend.image_shape() == (3, 32, 32)
    training = json.loads((folder / "training.json").read_text())
    assert training["recipe"] == "studio_sd.train_ldm" and training["dataset"] == "mnist-fashion"


def test_the_recipe_is_deterministic_by_seed(tmp_path, studio_home):
    from studio_sd.backend import SDBackend
    from studio_sd.models import weights_sha256

    settings = load_settings(env={"STUDIO_HOME": str(studio_home)})
    small = {"limit": 32, "vae_steps": 3, "batch_size": 16, "threads": 1}
    hashes = [SDBackend.train("digits", 1, str(tmp_path / name), seed, settings, **small) and
              weights_sha256(tmp_path / name) for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    assert hashes[0] == hashes[1] != hashes[2]


# ----- prompts, guidance, negative prompts -----
def test_digit_prompts_draw_their_digit(backend):
    from studio_sd.quality import adherence

    found = adherence(backend, "digit", per_class=8)
    assert found["share"] >= 0.9, found


def test_fashion_prompts_draw_their_item(backend):
    from studio_sd.quality import adherence

    found = adherence(backend, "fashion", per_class=8)
    assert found["share"] >= 0.8, found


def test_number_words_work_like_numerals(backend):
    from studio_sd.quality import generate

    words = generate(backend, range(8), prompt="a handwritten digit seven")
    assert (predict(words) == 7).mean() >= 0.75


def test_guidance_makes_prompts_count(backend):
    from studio_sd.quality import adherence

    off = adherence(backend, "digit", per_class=6, guidance=1.0, classes=(3, 5, 8))["share"]
    on = adherence(backend, "digit", per_class=6, guidance=7.5, classes=(3, 5, 8))["share"]
    assert on > off, (on, off)


def test_thick_prompts_and_negative_prompts_steer_the_stroke(backend):
    from studio_sd.quality import generate, ink

    seeds = range(12)
    plain = ink(generate(backend, seeds, prompt="a handwritten digit 3"))
    thick = ink(generate(backend, seeds, prompt="a thick handwritten digit 3"))
    thin = ink(generate(backend, seeds, prompt="a handwritten digit 3", negative_prompt="a thick handwritten digit 3"))
    assert thick > plain * 1.1 and thin < plain, (thin, plain, thick)


# ----- the core's ops on it -----
def test_the_cli_draws_sevens_and_sneakers(tmp_path, studio_home):
    env = {"STUDIO_HOME": str(studio_home), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for prompt, dataset, label in (("a handwritten digit 7", "mnist", 7), ("a photo of a sneaker", "fashion", 7)):
        out = tmp_path / dataset
        subprocess.run([sys.executable, "-m", "studio.cli", "run", "sample", "--backend", "sd", "--model", MODEL,
                        "--prompt", prompt, "--n", "16", "--seed", "0", "--out", str(out)],
                       check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)
        from studio import images as imgs

        pngs = [Image.open(p) for p in sorted(out.glob("sample_*.png"))]
        assert len(pngs) == 16 and pngs[0].size == (32, 32)
        record = read_record(out / "sample_000.png")  # every PNG carries its replayable record
        assert record["spec"]["options"]["prompt"] == prompt and record["model"] == MODEL, record
        assert record["weights_sha256"] == SHIPPED_SHA256
        share = (predict(imgs.to_tensor(pngs, (1, 28, 28)), dataset) == label).mean()
        assert share >= 0.8, (prompt, share)


def test_prompt_interpolation_goes_from_3_to_8(runtime):
    result = execute({"op": "interpolate", "backend": "sd", "model": MODEL, "steps": 5,
                      "start": {"seed": 4, "options": {"prompt": "a handwritten digit 3"}},
                      "end": {"seed": 4, "options": {"prompt": "a handwritten digit 8"}}}, runtime)
    frames = images_of(result, "frame_")
    guesses = predict(frames)
    assert len(frames) == 5 and guesses[0] == 3 and guesses[-1] == 8, guesses


def test_a_text_direction_thickens_digits(runtime):
    from studio_sd.quality import ink

    execute({"op": "fit_vector", "backend": "sd", "model": MODEL, "name": "thick",
             "with_options": {"prompt": "a thick handwritten digit 2"},
             "without_options": {"prompt": "a handwritten digit 2"}}, runtime)
    result = execute({"op": "edit", "backend": "sd", "model": MODEL, "vector": "thick", "strengths": [0.0, 1.5],
                      "source": {"seed": 6, "options": {"prompt": "a handwritten digit 2"}}}, runtime)
    frames = images_of(result, "edit_")
    assert len(frames) == 2 and ink(frames[1]) > ink(frames[0]) * 1.1


def test_img2img_keeps_the_digit_at_low_strength_and_follows_the_prompt_at_high(runtime):
    seven = {"dataset": "mnist", "split": "test", "index": 0}  # MNIST's first test image is a 7
    low = execute({"op": "img2img", "backend": "sd", "model": MODEL, "image": seven, "n": 4,
                   "options": {"prompt": "a handwritten digit 2", "strength": 0.2}}, runtime)
    high = execute({"op": "img2img", "backend": "sd", "model": MODEL, "image": seven, "n": 4,
                    "options": {"prompt": "a handwritten digit 2", "strength": 0.9}}, runtime)
    assert (predict(images_of(low, "img2img_")) == 7).mean() >= 0.75
    assert (predict(images_of(high, "img2img_")) == 2).mean() >= 0.75


def test_compression_round_trips_through_its_autoencoder(runtime):
    result = execute({"op": "roundtrip", "backend": "sd", "model": MODEL, "dataset": "mnist", "limit": 100,
                      "bits": 8}, runtime)
    assert result.metrics["psnr"] >= 20, result.metrics


def test_a_train_job_installs_an_sd_folder_that_every_op_then_finds(tmp_path, studio_home):
    """The train job (the UI's Train tab, `studio submit train`) trains sd too: its diffusers folder lands in the
    first model root, listed by name; a retry of the same job reports it rather than training again."""
    from studio.errors import InputError
    from studio.executor import Runtime

    settings = load_settings(env={"STUDIO_HOME": str(studio_home), "STUDIO_MODEL_ROOTS": str(tmp_path / "models"),
                                  "STUDIO_DEVICE": "cpu"})
    runtime = Runtime(settings)
    spec = {"op": "train", "backend": "sd", "name": "my-sd", "dataset": "digits", "epochs": 1, "limit": 32, "seed": 1,
            "options": {"vae_steps": 3, "batch_size": 16, "threads": 1}}
    first = execute(spec, runtime)
    folder = tmp_path / "models" / "sd" / "my-sd"
    assert (folder / "model_index.json").is_file() and first.metrics["name"] == "my-sd"
    assert first.metrics["sha256"] and first.metrics["size"] > 0 and str(tmp_path) not in json.dumps(first.metrics)
    steps: list = []
    again = execute(spec, runtime, progress=lambda *args: steps.append(args))  # retried: reported, not trained
    assert again.metrics["sha256"] == first.metrics["sha256"] and not steps
    with pytest.raises(InputError, match="is taken"):
        execute({**spec, "seed": 2}, runtime)
    images = execute({"op": "sample", "backend": "sd", "model": "my-sd", "n": 2, "seed": 0,
                      "options": {"prompt": "a handwritten digit 3", "steps": 2}}, runtime)
    assert [a.name for a in images.artifacts if a.name.startswith("sample_")] == ["sample_000.png", "sample_001.png"]
