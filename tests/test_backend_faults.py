"""Faulty backends and weights: corrupt safetensors files, plugins that call sys.exit at import, and decode
outputs that break the contract (NaN/Inf, wrong dtype, wrong shape). None of them may take down a backend,
a command or a worker, and none of them is retried as if it were transient.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from studio.config import load_settings
from studio.contract import BackendError
from studio.errors import InputError, StudioError
from studio.executor import Runtime, execute
from studio.registry import load_registry
from studio.safetensors_io import read_metadata, save_weights

REDIS_URL = "redis://127.0.0.1:6379/12"
HUGE = (1 << 62).to_bytes(8, "little")  # a header length no file has: trusting it meant a MemoryError


def _valid_bytes(tmp_path: Path) -> bytes:
    path = save_weights(tmp_path / "valid.safetensors", {"w": torch.ones(2, 3)}, {"config": "{}"})
    return path.read_bytes()


def _header_file(tmp_path: Path, header: object, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


CORRUPT = {
    "huge_length": lambda tmp: HUGE + b"{}" + b"\0" * 64,
    "length_past_end": lambda tmp: (10_000).to_bytes(8, "little") + b'{"a": 1}',
    "shorter_than_8": lambda tmp: b"\x01\x02",
    "not_json": lambda tmp: (16).to_bytes(8, "little") + b"not json at all!",
    "not_utf8": lambda tmp: (4).to_bytes(8, "little") + b"\xff\xfe\xfd\xfc",
    "json_list": lambda tmp: _header_file(tmp, [1, 2]),
    "offsets_past_end": lambda tmp: _header_file(tmp, {"w": {"dtype": "F32", "shape": [4],
                                                              "data_offsets": [0, 16]}}, b"\0" * 8),
    "size_mismatch": lambda tmp: _header_file(tmp, {"w": {"dtype": "F32", "shape": [4],
                                                           "data_offsets": [0, 8]}}, b"\0" * 8),
    "metadata_not_strings": lambda tmp: _header_file(tmp, {"__metadata__": {"config": 3}}),
    "truncated_valid_file": lambda tmp: _valid_bytes(tmp)[:-4],
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_safetensors_headers_are_refused_with_one_line(tmp_path, kind):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(CORRUPT[kind](tmp_path))
    with pytest.raises(InputError) as exc:
        read_metadata(path)
    message = str(exc.value)
    assert "bad.safetensors" in message and "\n" not in message and len(message) < 300, message


def test_a_valid_file_still_reads(tmp_path):
    path = save_weights(tmp_path / "ok.safetensors", {"w": torch.ones(2, 3), "b": torch.zeros(0)}, {"k": "v"})
    assert read_metadata(path) == {"k": "v"}


# ----- a corrupt weights file is listed as broken; the backend's other models keep serving -----

@pytest.fixture
def roots(tmp_path, monkeypatch):
    models = tmp_path / "models"
    for sub in ("vae", "gan"):
        (models / sub).mkdir(parents=True)
        (models / sub / "junk.safetensors").write_bytes(HUGE + b"this is not a safetensors file" * 4)
    monkeypatch.setenv("STUDIO_MODEL_ROOTS", str(models))
    return models


@pytest.mark.parametrize("backend", ["vae", "gan"])
def test_corrupt_weights_are_listed_broken_and_the_other_models_serve(roots, backend):
    settings = load_settings()
    cls = load_registry().get(backend)
    models = {m.name: m for m in cls.available_models(settings)}
    assert "header length" in models["junk"].error and "junk.safetensors" in models["junk"].error
    assert models["junk"].describe()["error"] == models["junk"].error
    assert not models["mnist"].error
    runtime = Runtime(settings)
    result = execute({"op": "sample", "backend": backend, "n": 2}, runtime)  # the default model still serves
    assert result.metrics["n"] == 2
    with pytest.raises(StudioError, match="broken") as exc:
        execute({"op": "sample", "backend": backend, "model": "junk", "n": 1}, runtime)
    assert "header length" in str(exc.value) and "\n" not in str(exc.value)


def test_a_corrupt_sd_component_is_listed_broken(tmp_path, monkeypatch):
    from studio_sd import models as sd_models
    from studio_sd.tiny import build_tiny_sd

    monkeypatch.setattr(sd_models, "SHIPPED_DIR", tmp_path / "no-shipped-models")  # only the two below
    models = tmp_path / "models"
    build_tiny_sd(models / "sd" / "good")
    bad = build_tiny_sd(models / "sd" / "bad")
    (bad / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(HUGE + b"{}")
    monkeypatch.setenv("STUDIO_MODEL_ROOTS", str(models))
    settings = load_settings()
    cls = load_registry().get("sd")
    listed = {m.name: m for m in cls.available_models(settings)}
    assert listed["bad"].error.startswith("unet: ") and "header length" in listed["bad"].error
    assert not listed["good"].error
    with pytest.raises(StudioError, match="broken"):
        cls.load("bad", settings)
    assert cls.load(None, settings).model.name == "good"  # "bad" sorts first, but is skipped


# ----- a plugin that calls sys.exit at import -----

def _write_plugin(folder: Path, name: str, module_source: str) -> Path:
    """A throwaway installed plugin: a module and a dist-info declaring its entry point (as pip would)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = folder / f"{name}-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[latent_studio.backends]\n{name} = {name}:register\n")
    return folder


EXITING = """
import sys

sys.exit(1)  # a plugin that quits the process when imported


def register(register_backend):
    pass
"""


@pytest.mark.integration
def test_a_plugin_calling_sys_exit_does_not_take_down_the_commands(tmp_path, roots):
    plugins = _write_plugin(tmp_path / "plugins", "studio_exiting_plugin", EXITING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")]),
           "STUDIO_PLUGINS": "vae,studio_exiting_plugin", "STUDIO_HOME": str(tmp_path / "home")}

    def studio(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    listed = studio("plugins", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    info = json.loads(listed.stdout)
    errors = {e["plugin"]: e["error"] for e in info["errors"]}
    assert "sys.exit(1)" in errors["studio_exiting_plugin"]
    vae = next(b for b in info["backends"] if b["name"] == "vae")
    assert vae["spaces"] and "error" not in vae  # it loaded its default model
    models = {m["name"]: m for m in vae["models"]}
    assert "header length" in models["junk"]["error"] and "error" not in models["mnist"]

    text = studio("plugins")
    assert text.returncode == 0 and "studio_exiting_plugin: FAILED TO LOAD" in text.stdout, text.stderr[-2000:]
    ran = studio("run", "sample", "--backend", "vae", "--n", "1", "--out", str(tmp_path / "out"), "--json")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert (tmp_path / "out" / "sample_000.png").is_file()


def test_keyboard_interrupt_while_loading_a_plugin_is_not_swallowed(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    from studio.registry import GROUP, _call_hook

    _write_plugin(tmp_path, "studio_interrupted_plugin", "raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint("interrupted", "studio_interrupted_plugin:register", GROUP)
    errors: list = []
    with pytest.raises(KeyboardInterrupt):
        _call_hook(errors, ep, GROUP, lambda cls: None)
    assert errors == []


# ----- decode outputs that break the contract -----

FAULTY = """
import torch

from studio.contract import ModelInfo, no_progress
from studio.errors import NotFound
from studio.queue.testing import ToyBackend

KINDS = ("ok", "nan", "inf", "float64", "shape", "list")


class FaultyBackend(ToyBackend):
    \"\"\"The shared toy backend, except that its decode output breaks the contract as its model says.\"\"\"

    name = "faulty"

    @classmethod
    def available_models(cls, settings):
        return [ModelInfo(kind, "<builtin>", "0" * 64, "toy with a faulty decode") for kind in KINDS]

    @classmethod
    def load(cls, model, settings, device="cpu", dtype="float32"):
        if model not in (None, *KINDS):
            raise NotFound(f"no faulty model {model!r}")
        return cls(ModelInfo(model or "ok", "<builtin>", "0" * 64), device="cpu", dtype=dtype)

    def decode(self, point, options=None, progress=no_progress):
        images = super().decode(point, options, progress)
        kind = self.model.name
        if kind in ("nan", "inf"):
            images = images.clone()
            images[-1, 0, 0, 0] = float(kind)
        elif kind == "float64":
            images = images.double()
        elif kind == "shape":
            images = images[:, 0]  # N x H x W: imgs.to_pil failed on it with "axes don't match array"
        elif kind == "list":
            images = images.tolist()
        return images


def register(register_backend):
    register_backend(FaultyBackend)
"""

EXPECTED = {"nan": "returned NaN/Inf values from decode", "inf": "returned NaN/Inf values from decode",
            "float64": "returned float64 images on cpu from decode", "shape": "x8x8 from decode; expected ",
            "list": "returned a list from decode"}


@pytest.fixture
def faulty_registry(tmp_path, monkeypatch):
    plugins = _write_plugin(tmp_path / "plugins", "studio_faulty_plugin", FAULTY)
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("STUDIO_PLUGINS", "studio_faulty_plugin,vae")
    registry = load_registry(refresh=True)
    yield registry
    monkeypatch.delenv("STUDIO_PLUGINS")
    sys.modules.pop("studio_faulty_plugin", None)
    monkeypatch.undo()
    load_registry(refresh=True)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@pytest.mark.parametrize("op", ["sample", "interpolate", "anomalies"])
def test_a_faulty_decode_fails_the_job_naming_the_backend(faulty_registry, kind, op):
    assert "faulty" in faulty_registry.backends, faulty_registry.errors
    spec = {"sample": {"op": "sample", "n": 2},
            "interpolate": {"op": "interpolate", "start": {"seed": 1}, "end": {"seed": 2}, "steps": 2},
            "anomalies": {"op": "anomalies", "dataset": "digits", "limit": 10, "top": 2}}[op]
    with pytest.raises(BackendError) as exc:
        execute({**spec, "backend": "faulty", "model": kind}, Runtime(load_settings()))
    message = str(exc.value)
    assert message.startswith("backend 'faulty' ") and EXPECTED[kind] in message and "\n" not in message, message


def test_a_conforming_decode_still_passes(faulty_registry):
    result = execute({"op": "sample", "backend": "faulty", "model": "ok", "n": 2}, Runtime(load_settings()))
    assert result.metrics["n"] == 2 and math.isfinite(result.metrics["seconds"])


# ----- the same faults on a real worker: failed once, never retried as transient -----

@pytest.mark.integration
def test_a_worker_fails_faulty_decodes_and_corrupt_weights_without_retrying(tmp_path, roots):
    from studio.queue.testing import QueueHarness

    harness = QueueHarness(tmp_path / "queue", broker_url=REDIS_URL, plugins="toy,studio_faulty_plugin,vae",
                           model_roots=str(roots), max_retries=2)
    _write_plugin(harness.plugin_dir, "studio_faulty_plugin", FAULTY)
    try:
        with harness.active():
            harness.start_worker()
            client = harness.client()
            jobs = {"nan": client.submit({"op": "sample", "backend": "faulty", "model": "nan", "n": 2}),
                    "corrupt": client.submit({"op": "sample", "backend": "vae", "model": "junk", "n": 1}),
                    "good": client.submit({"op": "sample", "backend": "vae", "n": 1})}
            done = {k: client.wait(job_id, timeout=120) for k, job_id in jobs.items()}
    finally:
        harness.close()
        sys.modules.pop("studio_faulty_plugin", None)
    assert done["nan"]["state"] == "FAILED" and done["nan"]["attempts"] == 1, done["nan"]
    assert "backend 'faulty' returned NaN/Inf values from decode" in done["nan"]["error"]
    assert done["corrupt"]["state"] == "FAILED" and done["corrupt"]["attempts"] == 1, done["corrupt"]
    assert "broken" in done["corrupt"]["error"] and "header length" in done["corrupt"]["error"]
    assert done["good"]["state"] == "SUCCEEDED", done["good"]
