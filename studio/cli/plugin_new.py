"""`studio plugin new NAME`: write a plugin package (backend NAME) from the template in studio/plugin_template.

The package installs (its pyproject declares the `latent_studio.backends` entry point), passes the conformance kit
and carries its own tests. Nothing is ever overwritten: the files are written into a temporary folder beside the
target, which is then renamed into place, so a failure leaves nothing behind.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from studio.errors import InputError, clip

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# template file -> where it goes in the package ({package}: the import package, {name}: the backend name)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "init.py.tmpl": "{package}/__init__.py",
    "backend.py.tmpl": "{package}/backend.py",
    "model.py.tmpl": "{package}/model.py",
    "conftest.py.tmpl": "tests/conftest.py",
    "test_conformance.py.tmpl": "tests/test_conformance_{name}.py",
}


def check_plugin_name(name: str) -> str:
    """`name` if it can be a backend, entry-point and module name; InputError (one line) otherwise."""
    if not NAME_RE.match(name) or keyword.iskeyword(name):
        raise InputError(f"plugin name {clip(name, 40)!r} is invalid: use 1-32 lower-case letters, digits and '_', "
                         "starting with a letter (e.g. fashion_vae)")
    from importlib.metadata import entry_points

    from studio.registry import GROUP

    if any(ep.name == name for ep in entry_points(group=GROUP)):
        raise InputError(f"a backend plugin named {name!r} is installed already; choose another name")
    return name


def placeholders(name: str) -> dict[str, str]:
    """The values of the template's {{...}} placeholders for backend `name`."""
    from importlib.metadata import PackageNotFoundError, version

    from studio.contract import CONTRACT_VERSION

    try:
        studio_version = ".".join(version("latent-studio").split(".")[:2])
    except PackageNotFoundError:  # running from a source tree that is not installed
        studio_version = "0.1"
    return {"name": name, "package": f"latent_studio_{name}", "distribution": f"latent-studio-{name.replace('_', '-')}",
            "class": "".join(part.capitalize() for part in name.split("_") if part), "contract": CONTRACT_VERSION,
            "studio_version": studio_version}


def render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def write_plugin(name: str, out: Path) -> list[Path]:
    """Write the plugin package for backend `name` into the new folder `out`; return the files written."""
    check_plugin_name(name)
    out = out.expanduser()
    if out.exists() or out.is_symlink():
        raise InputError(f"{clip(out, 120)} exists already; give --out a new folder (nothing was written)")
    values = placeholders(name)
    template = resources.files("studio.plugin_template")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise InputError(f"cannot create {clip(out, 120)}: {exc.strerror or type(exc).__name__}") from None
    try:
        for source, target in FILES.items():
            path = staging / target.format(**values)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(template.joinpath(source).read_text(encoding="utf-8"), values), encoding="utf-8")
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes the folder private; give it the usual permissions
        os.rename(staging, out)  # atomic; refuses (ENOTEMPTY/EEXIST) a folder that appeared meanwhile with content
    except OSError as exc:
        raise InputError(f"cannot write the plugin to {clip(out, 120)}: {exc.strerror or type(exc).__name__}") \
            from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(p for p in out.rglob("*") if p.is_file())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plugin_new(name: Annotated[str, typer.Argument(help="Backend name: lower-case letters, digits and '_'.")],
               out: Annotated[Path | None, typer.Option(help="New folder for the package (default: "
                                                             "./latent-studio-NAME).")] = None) -> None:
    """Write a plugin package that registers backend NAME, passes the conformance kit and has its own tests."""
    values = placeholders(check_plugin_name(name))
    target = out if out is not None else Path(values["distribution"])
    files = write_plugin(name, target)
    print(f"wrote plugin {name!r} ({values['distribution']}, contract {values['contract']}) to {target}:")
    for path in files:
        print(f"    {path}")
    print(f"next:\n    pip install -e {target}\n    studio plugin check {name}\n    pytest {target / 'tests'}")
