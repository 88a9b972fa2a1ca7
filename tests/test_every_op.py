"""Every op on every installed backend, in-process through the executor, at tiny sizes.

Each (backend, op) pair either runs and makes outputs, or is refused with one clear line because the backend
lacks what the op needs (a capability, or the MNIST image shape for evaluate). Nothing is skipped: a new op,
or a new built-in backend, fails `test_the_matrix_covers_every_op_and_backend` until it is added here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from studio.config import load_settings
from studio.errors import StudioError
from studio.executor import Runtime, execute
from studio.registry import load_registry, op_names

BACKENDS = ("vae", "gan", "sd", "pca")
OPTIONS = {  # the cheapest settings of each backend
    "vae": {},
    "gan": {"invert_steps": 2, "invert_restarts": 1},
    "sd": {"steps": 2, "guidance": 1.0, "prompt": "a photo of a cat"},
    "pca": {},
}
IMAGE = {"image": {"dataset": "digits", "split": "test", "index": 0}}
IMAGE_B = {"image": {"dataset": "digits", "split": "test", "index": 1}}

# One spec per op (fit_vector twice: from a dataset, and as a text direction, which needs TEXT; edit twice: one
# vector at several strengths, and two vectors at once).
SPECS: dict[str, dict] = {
    "sample": {"op": "sample", "n": 2},
    "img2img": {"op": "img2img", "image": IMAGE["image"], "n": 2},
    "interpolate": {"op": "interpolate", "start": IMAGE, "end": IMAGE_B, "steps": 2},
    "edit": {"op": "edit", "vector": "every-op", "source": {"seed": 5}, "strengths": [0.0, 1.0]},
    "edit_chained": {"op": "edit", "vectors": {"every-op": 1.5, "every-op-b": -1.0}, "source": {"seed": 5}},
    "traverse": {"op": "traverse", "source": {"seed": 3}, "dims": [0, 1], "steps": 2},
    "analogy": {"op": "analogy", "a": {"seed": 1}, "b": {"seed": 2}, "c": {"seed": 3}},
    "roundtrip": {"op": "roundtrip", "image": IMAGE["image"], "bits": 6},
    "fit_vector": {"op": "fit_vector", "name": "every-op-data", "dataset": "digits", "attribute": "class:1",
                   "method": "mean", "limit": 20},  # two 1s among them: gan inverts every image it fits on
    "fit_vector_text": {"op": "fit_vector", "name": "every-op-text", "with_options": {"prompt": "a red cat"},
                        "without_options": {"prompt": "a blue cat"}},
    "evaluate": {"op": "evaluate", "n": 10, "repeats": 1},
    "walk": {"op": "walk", "keyframes": [{"seed": 1}, {"seed": 2}], "frames_per_segment": 2},
    "project": {"op": "project", "dataset": "digits", "limit": 10, "method": "pca"},
    "anomalies": {"op": "anomalies", "dataset": "digits", "limit": 10, "top": 2},
    "train": {"op": "train", "dataset": "mnist", "limit": 64, "epochs": 1},
    "neighbours": {"op": "neighbours", "seed": 3, "dataset": "digits", "k": 2, "limit": 10},
    "grid": {"op": "grid", "base": {"op": "sample", "n": 1}, "x": {"param": "seed", "values": [1, 2]},
             "y": {"param": "temperature", "values": [0.5, 1.0]}},  # the backend's options reach every cell
}
TRAIN_OPTIONS = {  # the smallest recipe of each backend that trains (its `train` checks these)
    "vae": {"batch_size": 32},
    "gan": {"batch_size": 32, "ngf": 8, "ndf": 8, "mapping_width": 16, "encoder_steps": 4, "encoder_width": 8},
    "sd": {"vae_steps": 3, "batch_size": 16, "threads": 1},
}
# (backend, op) -> words the one-line refusal must contain; every other pair must run.
REFUSED = {
    ("vae", "fit_vector_text"): "lacks text",
    ("gan", "fit_vector_text"): "lacks text",
    ("pca", "fit_vector_text"): "lacks text",
    ("sd", "evaluate"): "needs 1x28x28 images",
    ("vae", "img2img"): "img2img (capabilities",
    ("gan", "img2img"): "img2img (capabilities",
    ("pca", "img2img"): "img2img (capabilities",
    ("pca", "train"): "lacks train",
}
CASES = [(b, op) for b in BACKENDS for op in SPECS]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runtime(studio_home, tiny_sd_models) -> Runtime:
    """One runtime (backends loaded once) over a model root that holds the tiny SD pipeline; sd's default model is
    the shipped text-to-image one (mnist-fashion)."""
    env = {"STUDIO_HOME": str(studio_home), "STUDIO_MODEL_ROOTS": str(tiny_sd_models), "STUDIO_DEVICE": "cpu"}
    return Runtime(load_settings(env=env))


def test_the_matrix_covers_every_op_and_backend():
    assert {spec["op"] for spec in SPECS.values()} == set(op_names())
    assert set(BACKENDS) <= set(load_registry().backends), load_registry().errors


def _run(runtime: Runtime, backend: str, op: str, tmp_path: Path):
    spec = {**SPECS[op], "backend": backend, "options": OPTIONS[backend]}
    if op == "train":  # weights registered as model `every-op-<backend>` (studio.modelstore)
        spec = {**spec, "name": f"every-op-{backend}", "options": TRAIN_OPTIONS.get(backend, {})}
        if backend == "sd":  # its folder lands in the first model root: a fresh one, not the shared tiny-sd root
            settings = runtime.settings
            runtime = Runtime(load_settings(env={"STUDIO_HOME": str(settings.home), "STUDIO_DEVICE": "cpu",
                                                 "STUDIO_MODEL_ROOTS": str(tmp_path / "models")}))
            spec = {**spec, "dataset": "digits"}
    if SPECS[op]["op"] == "edit":  # an edit needs stored vectors of this backend's weights: fit from picked seeds
        for name, seeds in (("every-op", [1, 2, 3, 4]), ("every-op-b", [6, 7, 8, 9]))[:1 + (op == "edit_chained")]:
            execute({"op": "fit_vector", "backend": backend, "options": OPTIONS[backend], "name": name,
                     "with_seeds": seeds[:2], "without_seeds": seeds[2:]}, runtime)
    return execute(spec, runtime)


@pytest.mark.parametrize("backend, op", CASES, ids=[f"{b}-{op}" for b, op in CASES])
def test_every_op_runs_or_is_refused_in_one_line(runtime, backend, op, tmp_path):
    if (backend, op) in REFUSED:
        with pytest.raises(StudioError) as exc:
            _run(runtime, backend, op, tmp_path)
        message = str(exc.value)
        assert REFUSED[(backend, op)] in message, message
        assert f"{backend!r}" in message and "\n" not in message and len(message) < 300, message
        return
    result = _run(runtime, backend, op, tmp_path)
    assert result.artifacts, f"{backend} {op} made no artifacts"
    assert result.metrics["seconds"] >= 0
    if op == "edit_chained":  # both vectors applied in one job: the original, then the combined edit
        assert result.metrics["vectors"] == SPECS[op]["vectors"] and result.metrics["strengths"] == [0.0, 1.0]
    if op in ("project", "anomalies"):
        names = {a.name for a in result.artifacts}
        assert ("plot.png" in names) if op == "project" else ("anomalies.json" in names), names


def test_gan_encoding_works_under_an_outer_no_grad(runtime):
    """The explore ops encode under torch.no_grad(); GAN inversion must switch gradients on for itself."""
    backend = runtime.get_backend("gan", None)
    images = torch.zeros(2, *backend.image_shape())
    opts = backend.parse_options(OPTIONS["gan"])
    with torch.no_grad():
        point = backend.encode(images, opts)
    assert point["z"].shape == (2, backend.config.nz) and not point["z"].requires_grad
    with torch.no_grad():  # the caller's grad mode is left as it was
        backend.encode(images, opts)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        assert backend.encode(images, opts)["z"].shape == (2, backend.config.nz)
