"""compose.yaml cannot run here (no Docker engine), so check what it references: real `studio` subcommands and
options, real STUDIO_ settings, the Celery app, Redis persistence, a GPU reservation and a CPU variant."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import yaml

from studio.config import Settings

ROOT = Path(__file__).resolve().parents[1]
EXTRA_ENV = {"STUDIO_CONFIG", "STUDIO_PLUGINS"}  # read outside Settings (config file path, plugin filter)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _command(service: dict) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def _studio_group():  # noqa: ANN202 - typer's click group (typer may vendor its own click)
    import typer

    from studio.cli import _register, app

    if not any(getattr(g, "name", None) == "submit" for g in app.registered_groups):
        _register()
    return typer.main.get_command(app)


def _check_studio_command(argv: list[str]) -> None:
    group = _studio_group()
    cmd = group
    args = argv[1:]
    while hasattr(cmd, "commands"):  # a group
        assert args and args[0] in cmd.commands, f"`{' '.join(argv)}`: {args[:1]} is not a studio subcommand"
        cmd, args = cmd.commands[args[0]], args[1:]
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=", 1)[0] in known, f"`{' '.join(argv)}`: {arg} is not an option of {cmd.name}"
    cmd.make_context(cmd.name, list(args), resilient_parsing=False)  # parses: types and ranges check out


def test_every_service_command_is_a_real_entry_point(compose: dict) -> None:
    seen = set()
    for name, service in compose["services"].items():
        argv = _command(service)
        if name == "redis":
            continue
        assert argv, f"service {name} has no command"
        if argv[0] == "studio":
            _check_studio_command(argv)
            seen.add(" ".join(argv[:2]))
        else:
            assert argv[:3] == ["celery", "-A", "studio.queue.app"], argv
            import studio.queue.app as module

            assert callable(module.make_app) and "app" not in vars(module)  # the app is built lazily, on use
    assert {"studio up", "studio worker"} <= seen


def test_every_studio_setting_exists(compose: dict) -> None:
    fields = {f"STUDIO_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    text = (ROOT / "compose.yaml").read_text()
    used = set(re.findall(r"\b(STUDIO_[A-Z0-9_]+)\b", text))
    assert used, "compose.yaml should configure the studio through STUDIO_ settings"
    assert used - fields - EXTRA_ENV == set()


def test_redis_persists_workers_split_by_device_and_share_the_store(compose: dict) -> None:
    services = compose["services"]
    redis_cmd = _command(services["redis"])
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    gpu = services["worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert gpu["environment"]["STUDIO_DEVICE"] == "cuda"
    assert services["worker-cpu"]["environment"]["STUDIO_DEVICE"] == "cpu"
    for name in ("web", "worker", "worker-cpu", "flower"):
        svc = services[name]
        assert svc["environment"]["STUDIO_BROKER_URL"].startswith("redis://redis:6379")
        assert "studio-data:/data" in svc["volumes"] and svc["environment"]["STUDIO_HOME"] == "/data"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert set(compose["volumes"]) == {"studio-data", "redis-data"}


def test_dockerfile_installs_the_project_and_runs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install . " in text or text.rstrip().endswith("pip install .")
    assert re.search(r'CMD \["studio", "up"', text)
    for folder in ("studio", "plugins", "workers"):
        assert f"COPY {folder} ./{folder}" in text and (ROOT / folder).is_dir()
