"""The GAN plugin's commands (entry point group `latent_studio.commands`): `studio gan import-weights ...`.

Importing this module is cheap (no torch): the importer loads only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from studio.errors import InputError

IMPORTERS = ("dcgan-tutorial",)
gan_app = typer.Typer(help="GAN plugin: import generator weights.", no_args_is_help=True)


@gan_app.command("import-weights")
def import_weights(kind: Annotated[str, typer.Argument(help="Checkpoint kind (dcgan-tutorial).")],
                   path: Annotated[Path, typer.Argument(help="Checkpoint file.")],
                   name: Annotated[str, typer.Option(help="Model name to import it as.")] = ...) -> None:
    """Convert a checkpoint to safetensors under the model root (model NAME of backend gan), without unpickling
    code; prints the new model's info as JSON."""
    from studio.cli.common import print_json
    from studio.config import load_settings

    if kind not in IMPORTERS:
        raise InputError(f"no gan importer for {kind[:40]!r} (available: {', '.join(IMPORTERS)})")
    from .importer import import_dcgan_tutorial

    print_json(import_dcgan_tutorial(path, name, load_settings()).describe())


def register_commands(app: typer.Typer) -> None:
    """Entry point of group `latent_studio.commands`: add the `gan` command group to `studio`."""
    app.add_typer(gan_app, name="gan")
