"""The plugin platform: `studio plugin new` writes a package that installs, passes the kit and serves every op;
plugins built for another contract major version are refused in one line; every entry-point group is documented
in docs/PLUGINS.md and exercised here; naming a network `self.model` fails at once."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from studio import registry
from studio.contract import CONTRACT_VERSION
from studio.errors import InputError, NotFound

DOCS = Path(__file__).resolve().parents[1] / "docs" / "PLUGINS.md"
NAME = "platypus"

# Every built-in op, as `studio run` runs it on a backend with sample, encode, decode and train (the template's).
# `edit` needs a stored vector: the `fit_vector` from picked seeds before it makes one.
OP_COMMANDS: dict[str, list[str]] = {
    "sample": ["--n", "2", "--seed", "4"],
    "interpolate": ["--from-seed", "1", "--to-seed", "2", "--frames", "3"],
    "fit_vector": ["--name", "ones", "--dataset", "digits", "--attribute", "class:1", "--method", "mean",
                   "--limit", "100"],
    "edit": ["--vector", "picked", "--seed", "5", "--strengths", "0,1"],
    "traverse": ["--seed", "3", "--dims", "0-1", "--columns", "2"],
    "analogy": ["--a-seed", "1", "--b-seed", "2", "--c-seed", "3"],
    "roundtrip": ["--dataset", "digits", "--limit", "8", "--bits", "6"],
    "evaluate": ["--dataset", "mnist", "-n", "10", "--repeats", "1"],
    "walk": ["--seeds", "1,2,3", "--frames", "2"],
    "project": ["--dataset", "digits", "--limit", "10", "--method", "pca"],
    "anomalies": ["--dataset", "digits", "--limit", "10", "--top", "2"],
    "train": ["--name", "mine", "--dataset", "digits", "--limit", "64", "--epochs", "1"],
    "grid": ["--x", "seed=1,2", "--y", "temperature=0.5,1", "--n", "1"],
}
REFUSED_OPS: dict[str, list[str]] = {  # ops the template's backend lacks a capability for: one line, exit 1
    "img2img": ["--image", "dataset:digits:test:0", "--n", "1"],
}

# Runs in a fresh process that sees the installed plugin: each command through the real `studio` entry point
# (studio.cli.main), in one process to share the imports; prints one JSON line per command.
DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from studio import cli
    registered = []
    register = cli._register
    cli._register = lambda: registered or registered.append(register())  # mount the commands once
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code or 0
        print(json.dumps({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()[-2000:]}))
""")


def _studio(*args: str):
    """The real `studio` app, in this process (commands mounted once)."""
    from typer.testing import CliRunner

    from studio.cli import _register, app

    if not any(getattr(g, "name", None) == "plugin" for g in app.registered_groups):
        _register()
    return CliRunner().invoke(app, list(args))


@pytest.mark.slow
def test_plugin_new_makes_a_package_that_installs_passes_the_kit_and_serves_every_op(tmp_path: Path) -> None:
    from studio.builtin_ops import BUILTIN

    package = tmp_path / "pkg"
    result = _studio("plugin", "new", NAME, "--out", str(package))
    assert result.exit_code == 0, result.output
    pyproject = (package / "pyproject.toml").read_text()
    assert f'[project.entry-points."{registry.GROUP}"]\n{NAME} = "latent_studio_{NAME}:register"' in pyproject
    assert f'contract_version: ClassVar[str] = "{CONTRACT_VERSION}"' in \
        (package / f"latent_studio_{NAME}" / "backend.py").read_text()
    assert "parametrize_with_checks" in (package / "tests" / f"test_conformance_{NAME}.py").read_text()

    site = tmp_path / "site"  # a throwaway environment layered on the project's (PYTHONPATH)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(package)], check=True, capture_output=True, timeout=180)
    assert {cls.op_name() for cls in BUILTIN} == set(OP_COMMANDS) | set(REFUSED_OPS), "a new op needs its command here"
    backend = ["--backend", NAME]
    commands = [["plugin", "check", NAME],
                ["run", "fit_vector", *backend, "--name", "picked", "--with-seeds", "1,2", "--without-seeds", "3,4",
                 "--out", str(tmp_path / "picked")]]
    commands += [["run", op, *backend, *argv, "--out", str(tmp_path / "out" / op)] for op, argv in OP_COMMANDS.items()]
    refused = [["run", op, *backend, *argv, "--out", str(tmp_path / "out" / op)] for op, argv in REFUSED_OPS.items()]
    commands += [["run", "sample", *backend, "--model", "mine", "--n", "1", "--out", str(tmp_path / "mine")],
                 *refused, ["plugins", "--json"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "STUDIO_HOME": str(tmp_path / "home"), "STUDIO_PLUGINS": NAME, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["argv"] for r in runs] == commands
    for r in runs:
        if r["argv"] in refused:
            op = r["argv"][1]
            assert r["code"] != 0 and f"lacks {op}" in r["stderr"] and r["stderr"].count("\n") <= 1, r
            continue
        assert r["code"] == 0, f"studio {' '.join(r['argv'])} failed: {r['stderr']}"

    kit = runs[0]["stdout"]
    assert "PASS" in kit and "FAIL" not in kit, kit
    listed = next(b for b in json.loads(runs[-1]["stdout"])["backends"] if b["name"] == NAME)
    assert listed["entry_point"] == NAME and {"digits", "mine"} <= {m["name"] for m in listed["models"]}
    for op in OP_COMMANDS:
        assert any((tmp_path / "out" / op).iterdir()), f"{op} wrote nothing"
    assert (tmp_path / "mine" / "sample_000.png").is_file()  # the trained model serves like the default one

    # the package's own tests (the kit through parametrize_with_checks, and reproducible training) pass as well
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=package)
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.parametrize("name", ["Bad-Name", "1abc", "a" * 33, "class", "has space", "vae"])
def test_plugin_new_refuses_a_bad_or_taken_name_in_one_line(tmp_path: Path, name: str) -> None:
    result = _studio("plugin", "new", name, "--out", str(tmp_path / "pkg"))
    assert result.exit_code != 0 and isinstance(result.exception, InputError), result.output
    message = str(result.exception)
    assert "\n" not in message and len(message) < 300 and (name[:20] in message), message
    assert not (tmp_path / "pkg").exists()


def test_plugin_new_never_overwrites_a_folder(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (taken, empty):
        result = _studio("plugin", "new", NAME, "--out", str(folder))
        assert isinstance(result.exception, InputError), result.output
        assert "exists already" in str(result.exception) and "\n" not in str(result.exception)
    assert [p.name for p in taken.iterdir()] == ["mine.txt"] and (taken / "mine.txt").read_text() == "keep me"
    assert list(empty.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"]  # no staging folder left behind


def test_the_template_files_ship_in_the_package() -> None:
    """A wheel (not only a source checkout) carries every template file `studio plugin new` reads."""
    import fnmatch
    import tomllib

    from studio.cli.plugin_new import FILES

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["*"]
    folder = root / "studio" / "plugin_template"
    for name in FILES:
        assert (folder / name).is_file(), name
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), f"{name} is not package data"


# ----- contract versions -----

PLUGIN_MODULE = textwrap.dedent("""
    from typing import ClassVar, Literal

    from studio.contract import Backend, ModelInfo
    from studio.spec import OpSpec


    def _backend(backend_name, contract):
        class Made(Backend):
            name: ClassVar[str] = backend_name
            version: ClassVar[str] = "0.1.0"
            contract_version: ClassVar[str] = contract

            @classmethod
            def available_models(cls, settings):
                return [ModelInfo("m", "nowhere", "0" * 64)]

            @classmethod
            def load(cls, model, settings, device="cpu", dtype="float32"):
                return cls(cls.available_models(settings)[0], device, dtype)

            def spaces(self, options=None):
                return {}

            def image_shape(self, options=None):
                return (1, 2, 2)

            def decode(self, point, options=None, progress=None):
                raise NotImplementedError

        return Made


    class FutureOp(OpSpec):
        op: Literal["future_op"] = "future_op"
        contract_version: ClassVar[str] = "2.0"

        def run(self, job):
            pass


    class CurrentOp(OpSpec):
        op: Literal["current_op"] = "current_op"
        contract_version: ClassVar[str] = "1.0"

        def run(self, job):
            pass


    FutureBackend = _backend("future", "2.0")
    CurrentBackend = _backend("current", "1.0")


    def register_future_backend(register):
        register(FutureBackend)


    def register_current_backend(register):
        register(CurrentBackend)


    def register_future_op(register):
        register(FutureOp)


    def register_current_op(register):
        register(CurrentOp)


    def register_commands(app):
        @app.command("hello-from-plugin")
        def hello(name: str = "world") -> None:
            print(f"hello {name}")


    def broken_commands(app):
        raise RuntimeError("this plugin's commands are broken")
""")


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real installed distribution (a .dist-info with entry points on sys.path) whose module is `PLUGIN_MODULE`;
    the registry's cache is restored afterwards."""
    module = f"platform_plugin_{os.getpid()}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_MODULE)
    info = tmp_path / f"{module}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{registry.GROUP}]\nfuture = {module}:register_future_backend\ncurrent = {module}:register_current_backend\n"
        f"[{registry.OPS_GROUP}]\nfuture_ops = {module}:register_future_op\ncurrent_ops = {module}:register_current_op"
        f"\n[{registry.COMMANDS_GROUP}]\nhello = {module}:register_commands\nbroken = {module}:broken_commands\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("STUDIO_PLUGINS", "future,current,future_ops,current_ops,hello,broken")
    monkeypatch.setattr(registry, "_cache", None)
    yield importlib.import_module(module)
    sys.modules.pop(module, None)


def _one_line_naming_both_versions(message: str) -> None:
    assert "\n" not in message and len(message) < 300, message
    assert "2.0" in message and CONTRACT_VERSION in message, message


def test_a_backend_or_op_built_for_another_major_version_is_refused_directly(installed) -> None:
    reg = registry.Registry()
    with pytest.raises(TypeError) as exc:
        reg.register_backend(installed.FutureBackend)
    _one_line_naming_both_versions(str(exc.value))
    assert "'future'" in str(exc.value)
    with pytest.raises(TypeError) as exc:
        reg.register_op(installed.FutureOp)
    _one_line_naming_both_versions(str(exc.value))
    assert "'future_op'" in str(exc.value)
    reg.register_backend(installed.CurrentBackend)
    reg.register_op(installed.CurrentOp)
    assert list(reg.backends) == ["current"] and list(reg.ops) == ["current_op"]


def test_loading_refuses_other_major_versions_and_keeps_the_others(installed) -> None:
    from studio.builtin_ops import BUILTIN

    loaded = registry.load_registry(refresh=True)
    assert set(loaded.backends) == {"current"}
    assert {"current_op", *(cls.op_name() for cls in BUILTIN)} == set(loaded.ops)
    refused = {(e.group, e.plugin): e.error for e in loaded.errors}
    assert set(refused) == {(registry.GROUP, "future"), (registry.OPS_GROUP, "future_ops")}
    for message in refused.values():
        _one_line_naming_both_versions(message)
    with pytest.raises(NotFound) as exc:
        loaded.get("future")
    _one_line_naming_both_versions(str(exc.value))


def test_commands_plugins_add_commands_and_a_broken_one_is_reported(installed) -> None:
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command("core")(lambda: None)
    failures = registry.load_commands(app)
    assert [(f.plugin, f.group) for f in failures] == [("broken", registry.COMMANDS_GROUP)]
    assert "broken" in failures[0].error and "\n" not in failures[0].error
    result = CliRunner().invoke(app, ["hello-from-plugin", "--name", "docs"])
    assert result.exit_code == 0 and result.output.strip() == "hello docs", result.output


# ----- docs and groups -----

# Each entry-point group the registry defines, and the test here that exercises it through a real entry point.
EXERCISED = {
    registry.GROUP: test_plugin_new_makes_a_package_that_installs_passes_the_kit_and_serves_every_op,
    registry.OPS_GROUP: test_loading_refuses_other_major_versions_and_keeps_the_others,
    registry.COMMANDS_GROUP: test_commands_plugins_add_commands_and_a_broken_one_is_reported,
}


def test_every_entry_point_group_is_documented_and_exercised() -> None:
    groups = {v for v in vars(registry).values() if isinstance(v, str) and v.startswith("latent_studio.")}
    assert groups == set(EXERCISED), "a new entry-point group needs a test here and a section in docs/PLUGINS.md"
    docs = DOCS.read_text()
    for group in groups:
        assert f'[project.entry-points."{group}"]' in docs, f"docs/PLUGINS.md does not show how to declare {group}"


def test_every_studio_name_in_the_plugin_docs_exists() -> None:
    """Dotted names (`studio.module.attr`) in docs/PLUGINS.md import: the docs never name what is gone."""
    names = set(re.findall(r"`(studio(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", DOCS.read_text()))
    assert len(names) > 20
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"docs/PLUGINS.md names {name}, which does not exist"
                obj = getattr(obj, attr)
            break


# ----- the self.model trap -----

def test_naming_a_network_self_model_fails_at_once_with_a_clear_error() -> None:
    import torch

    from studio.contract import Backend, ModelInfo

    class Careful(Backend):
        name, version = "careful", "0.1.0"

        def __init__(self, model: ModelInfo) -> None:
            super().__init__(model)
            self.net = torch.nn.Linear(2, 2)

        @classmethod
        def available_models(cls, settings):
            return []

        @classmethod
        def load(cls, model, settings, device="cpu", dtype="float32"):
            raise NotImplementedError

        def spaces(self, options=None):
            return {}

        def image_shape(self, options=None):
            return (1, 2, 2)

        def decode(self, point, options=None, progress=None):
            raise NotImplementedError

    class Careless(Careful):
        def __init__(self, model: ModelInfo) -> None:
            super().__init__(model)
            self.model = torch.nn.Linear(2, 2)  # the obvious name for a network, and the wrong one

    info = ModelInfo("m", "weights.safetensors", "a" * 64)
    assert Careful(info).describe()["model"]["sha256"] == "a" * 64  # what the records read
    with pytest.raises(TypeError) as exc:
        Careless(info)
    message = str(exc.value)
    assert "\n" not in message and len(message) < 300, message
    assert "Careless.model" in message and "ModelInfo" in message and "Linear" in message and "self.net" in message
