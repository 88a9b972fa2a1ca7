"""Thin clients: `studio submit/wait/status/jobs/plugins/--help` against a real queue never import torch (or any
other model library), `studio plugins` lists every model's spaces without loading it, and plugins add commands
(`latent_studio.commands`) that fail in one line, never breaking the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.queue.testing import QueueHarness

REDIS_URL = "redis://127.0.0.1:6379/13"
HEAVY = ("torch", "diffusers", "transformers", "gradio", "sklearn", "safetensors.torch")
# Runs the `studio` entry point (studio.cli:main) and reports, at exit, which heavy libraries were imported.
PROBE = ("import atexit, sys\n"
         f"HEAVY = {HEAVY!r}\n"
         "report = lambda: sys.stderr.write('HEAVY=' + ','.join(m for m in HEAVY if m in sys.modules) + '\\n')\n"
         "atexit.register(report)\n"
         "sys.argv[0] = 'studio'\n"
         "from studio.cli import main\n"
         "main()\n")


def studio(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `studio ARGS` in a fresh process; returns it and the heavy libraries it imported."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")]
    assert lines, proc.stderr[-2000:]
    return proc, [m for m in lines[-1].removeprefix("HEAVY=").split(",") if m]


@pytest.fixture(scope="module")
def client_env(tmp_path_factory: pytest.TempPathFactory):
    """A real queue (Redis and the job records; no worker, so jobs stay queued) seen by clients with every installed
    plugin (vae, gan, sd, pca) loaded."""
    harness = QueueHarness(tmp_path_factory.mktemp("thin"), broker_url=REDIS_URL)
    try:
        yield {**harness.env, "STUDIO_PLUGINS": ""}
    finally:
        harness.close()


def test_queue_commands_never_import_torch(client_env: dict[str, str]) -> None:
    proc, heavy = studio(client_env, "submit", "sample", "--backend", "vae", "--n", "2", "--seed", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert heavy == []
    job_id = json.loads(proc.stdout)["id"]
    proc, heavy = studio(client_env, "status", job_id, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["state"] == "QUEUED" and heavy == []
    proc, heavy = studio(client_env, "jobs", "--json")
    assert proc.returncode == 0 and job_id in [j["id"] for j in json.loads(proc.stdout)] and heavy == []
    proc, heavy = studio(client_env, "cancel", job_id, "--json")
    assert proc.returncode == 0 and heavy == []
    proc, heavy = studio(client_env, "wait", job_id, "--timeout", "30", "--json")  # it ended: cancelled, exit 1
    assert proc.returncode == 1 and json.loads(proc.stdout)["state"] == "CANCELLED" and heavy == []
    proc, heavy = studio(client_env, "--help")
    assert proc.returncode == 0 and "submit" in proc.stdout and heavy == []
    assert "gan" in proc.stdout and "sd" in proc.stdout  # the plugins' command groups are there


def test_run_refuses_a_bad_spec_before_loading_any_model_code(client_env: dict[str, str], tmp_path: Path) -> None:
    """`studio run` checks the spec, capabilities and options before the executor loads torch: a bad input gets its
    one line at once."""
    cases = [(["sample", "--backend", "vae", "--n", "0"], "n: Input should be greater than or equal to 1"),
             (["sample", "--backend", "vae", "--option", "colour=red"], "invalid options for backend 'vae'"),
             (["fit_vector", "--backend", "vae", "--name", "t", "--with-options", "prompt=a"], "without_options"),
             (["train", "--backend", "pca", "--name", "t"], "lacks train")]
    for args, words in cases:
        proc, heavy = studio(client_env, "run", *args, "--out", str(tmp_path))
        assert proc.returncode == 2 and words in proc.stderr and heavy == [], (args, proc.stderr[-500:], heavy)


def test_plugins_lists_every_models_spaces_without_loading_it(client_env: dict[str, str]) -> None:
    proc, heavy = studio(client_env, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    assert heavy == []
    info = {b["name"]: b for b in json.loads(proc.stdout)["backends"]}
    assert {"vae", "gan", "sd", "pca", "toy"} <= set(info) and not json.loads(proc.stdout)["errors"]
    gan = {m["name"]: m for m in info["gan"]["models"]}
    z = {"name": "z", "prior": "gaussian", "roles": ["codec", "seed"]}
    assert gan["mnist"]["spaces"] == [{**z, "shape": [64]}] and gan["mnist"]["image_shape"] == [1, 28, 28]
    if "faces" in gan:  # gan-face-generate installed: listed (not converted: that needs torch) with its own shape
        assert gan["faces"]["spaces"] == [{**z, "shape": [100]}] and gan["faces"]["image_shape"] == [3, 64, 64]
    assert info["gan"]["spaces"] == gan["mnist"]["spaces"]  # the backend's own: its default model's
    vae = info["vae"]["models"][0]
    from studio_vae.backend import SHIPPED
    from studio_vae.config import VAEConfig

    from studio.safetensors_io import read_metadata

    latent = VAEConfig.from_json(read_metadata(SHIPPED)["config"]).latent_dim  # read from the header, as listing does
    assert vae["spaces"] == [{**z, "shape": [latent]}] and vae["image_shape"] == [1, 28, 28]
    assert info["pca"]["models"][0]["spaces"] == [{**z, "shape": [16]}]
    assert "spaces" not in info["toy"]["models"][0]  # a backend that cannot tell without loading: not loaded


@pytest.mark.slow  # loads every built-in model (and the tiny SD pipeline)
def test_declared_spaces_equal_the_loaded_models(tmp_path: Path, tiny_sd_models: Path) -> None:
    from studio_gan.backend import GANBackend
    from studio_pca_example import PCABackend
    from studio_sd.backend import SDBackend
    from studio_vae.backend import VAEBackend

    from studio.config import load_settings

    settings = load_settings({"STUDIO_HOME": str(tmp_path), "STUDIO_MODEL_ROOTS": str(tiny_sd_models)})
    checked = []
    for cls in (VAEBackend, GANBackend, SDBackend, PCABackend):
        name = cls.name
        for model in cls.available_models(settings):
            declared = (cls.model_spaces(model, settings), cls.model_image_shape(model, settings))
            backend = cls.load(model.name, settings)
            options = backend.parse_options({})
            assert declared == (backend.spaces(options), backend.image_shape(options)), (name, model.name)
            checked.append(f"{name}/{model.name}")
    assert {"vae/mnist", "gan/mnist", "sd/tiny", "pca/digits"} <= set(checked)


def _commands_plugin(folder: Path) -> Path:
    """An installed plugin adding `studio hello` and `studio hello-fail` (and trying to take `studio plugins`), plus
    one whose commands cannot load."""
    folder.mkdir(parents=True)
    (folder / "studio_hello_plugin.py").write_text(
        "import typer\n"
        "from studio.errors import InputError\n\n\n"
        "def register_commands(app: typer.Typer) -> None:\n"
        "    @app.command('hello')\n"
        "    def hello(name: str = 'world') -> None:\n"
        "        print(f'hello {name}')\n\n"
        "    @app.command('hello-fail')\n"
        "    def hello_fail() -> None:\n"
        "        raise InputError('the hello plugin refuses')\n\n"
        "    @app.command('plugins')\n"
        "    def hijack() -> None:\n"
        "        print('hijacked')\n")
    info = folder / "studio_hello_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: studio-hello-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[latent_studio.commands]\nhello = studio_hello_plugin:register_commands\n"
                                           "broken = studio_no_such_module:register_commands\n")
    return folder


def test_plugin_commands_load_and_fail_in_one_line(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(_commands_plugin(tmp_path / "plugins")), "STUDIO_HOME": str(tmp_path / "home"),
           "STUDIO_PLUGINS": ""}
    proc, heavy = studio(env, "hello", "--name", "studio")
    assert proc.returncode == 0 and proc.stdout == "hello studio\n" and heavy == []
    warning = [ln for ln in proc.stderr.splitlines() if "broken" in ln]
    assert len(warning) == 1 and "ModuleNotFoundError" in warning[0] and "Traceback" not in proc.stderr
    assert "command 'plugins' is ignored" in proc.stderr  # a plugin adds commands, never replaces a core one
    proc, _ = studio(env, "hello-fail")
    assert proc.returncode == 2 and "error: the hello plugin refuses" in proc.stderr and "Traceback" not in proc.stderr
    proc, heavy = studio(env, "gan", "import-weights", "pickle", str(tmp_path / "x.pth"), "--name", "x")
    assert proc.returncode == 2 and "no gan importer for 'pickle' (available: dcgan-tutorial)" in proc.stderr
    assert heavy == []
