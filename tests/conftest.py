"""Shared fixtures: every test session gets its own STUDIO_HOME, so nothing touches a user's home."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Torch on one thread in this process and every worker or CLI process the tests start: on a shared two-core machine
# two threads per process spin against each other (see `one_torch_thread`). Pixels do not depend on it: the tests
# compare in-process and worker results made with the same setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def studio_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session STUDIO_HOME (datasets are cached there once per session)."""
    home = tmp_path_factory.mktemp("studio-home")
    old = os.environ.get("STUDIO_HOME")
    os.environ["STUDIO_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("STUDIO_HOME", None)
    else:
        os.environ["STUDIO_HOME"] = old


@pytest.fixture
def studio_cli():
    """Run the `studio` CLI as a user would, in a subprocess; returns CompletedProcess."""
    import subprocess

    def run(*args: str, check: bool = False, timeout: float = 300, env: dict | None = None):
        return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, timeout=timeout,
                              check=check, env={**os.environ, **(env or {})})

    return run


@pytest.fixture
def settings(studio_home: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings over the session's tmp STUDIO_HOME (where datasets are cached once), also set in the environment
    for code that loads its own. A module that needs more (its own model root) defines its own `settings`."""
    from studio.config import load_settings

    monkeypatch.setenv("STUDIO_HOME", str(studio_home))
    return load_settings()


@pytest.fixture(scope="module")
def runtime(studio_home: Path):
    """One in-process Runtime per module (backends load once) over the session's STUDIO_HOME, on the CPU. A module
    that needs other model roots defines its own `runtime`."""
    from studio.config import load_settings
    from studio.executor import Runtime

    return Runtime(load_settings(env={"STUDIO_HOME": str(studio_home), "STUDIO_DEVICE": "cpu"}))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: two threads on a shared two-core machine spin against each other, and one
    is up to 10x faster here. Use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sd_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root (for STUDIO_MODEL_ROOTS) holding the tiny SD pipeline at `sd/tiny` (seed 0), built once per
    session and shared: add no models to it (a test that needs other models makes its own root)."""
    from studio_sd.tiny import build_tiny_sd

    models = tmp_path_factory.mktemp("tiny-sd-models")
    build_tiny_sd(models / "sd" / "tiny", seed=0)
    return models


@pytest.fixture(scope="module")
def s3_server():
    """A real S3 server (moto_server) for a test module; each test makes its own bucket."""
    from studio.testing_services import S3Server, s3_server_available

    if not s3_server_available():
        pytest.fail("moto_server is not installed: pip install 'moto[server]' (a dev dependency)")
    with S3Server() as server:
        yield server


@pytest.fixture
def postgres():
    """A fresh database on the PostgreSQL server at 127.0.0.1:5432, dropped afterwards (with this process's pool)."""
    from studio.db import shared
    from studio.testing_services import PostgresDatabase, postgres_available

    if not postgres_available():
        pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (trust auth, user postgres; see ENVIRONMENT.md)")
    database = PostgresDatabase().create()
    try:
        yield database
    finally:
        shared(database.url).dispose()
        database.drop()
