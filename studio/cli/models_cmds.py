"""`studio models list|import|remove`: weights shared by content (studio.modelstore).

A registered model's bytes live in storage under their sha256; any worker fetches and verifies them on first use.
`studio train vae|gan` installs its weights in this machine's first model root (studio.cli.trained); `studio models
import` then shares them with every worker.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from studio.cli.common import print_json

models_app = typer.Typer(help="Registered models, shared by sha256 with every worker: list, import, remove.",
                         no_args_is_help=True)


def _settings():  # noqa: ANN202 - Settings, imported lazily
    from studio.config import load_settings

    return load_settings()


@models_app.command("list")
def list_cmd(backend: Annotated[str | None, typer.Option("--backend", "-b", help="Only this backend.")] = None,
             as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List registered models: backend, name, sha256, size, source."""
    from studio.modelstore import list_models

    rows = list_models(_settings(), backend)
    if as_json:
        print_json(rows)
        return
    if not rows:
        print("no registered models (add one with `studio models import` or `studio submit train`)")
        return
    for r in rows:
        when = datetime.fromtimestamp(r["created"]).isoformat(sep=" ", timespec="seconds")
        print(f"{r['backend']:<8} {r['name']:<24} {r['sha256'][:16]}  {r['size']:>10} B  {when}  {r['source']}")


@models_app.command("import")
def import_cmd(backend: Annotated[str, typer.Argument(help="Backend the weights are for (vae, gan, ...).")],
               path: Annotated[Path, typer.Argument(help="A safetensors weights file.")],
               name: Annotated[str, typer.Option(help="Model name to register it as.")] = ...) -> None:
    """Register a safetensors weights file as a model of BACKEND, shared with every worker by its sha256."""
    from studio.modelstore import import_model
    from studio.users import user_from_env

    settings = _settings()
    row = import_model(settings, backend, path, name, owner=user_from_env(settings), source="import",
                       meta={"file": path.name})
    print(f"registered {row['backend']} model {row['name']!r} (sha256 {row['sha256']}, {row['size']} bytes)")


@models_app.command("remove")
def remove_cmd(name_or_sha: Annotated[str, typer.Argument(help="Model name, or its sha256 (12+ hex digits).")],
               backend: Annotated[str | None, typer.Option("--backend", "-b", help="The model's backend.")] = None,
               ) -> None:
    """Unregister a model and delete its stored weights."""
    from studio.modelstore import remove_model

    row = remove_model(_settings(), name_or_sha, backend)
    print(f"removed {row['backend']} model {row['name']!r} (sha256 {row['sha256'][:16]})")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
