"""The SD plugin's commands (entry point group `latent_studio.commands`): `studio sd tiny FOLDER`.

Importing this module is cheap (no torch, no diffusers): they load only when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

sd_app = typer.Typer(help="Stable Diffusion plugin: developer tools.", no_args_is_help=True)


@sd_app.command("tiny")
def tiny(directory: Annotated[Path, typer.Argument(help="Folder to write the tiny pipeline to.")],
         seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0) -> None:
    """Build a tiny random Stable Diffusion pipeline (offline, for tests and demos); prints its folder."""
    from .tiny import build_tiny_sd

    print(build_tiny_sd(directory, seed=seed))


def register_commands(app: typer.Typer) -> None:
    """Entry point of group `latent_studio.commands`: add the `sd` command group to `studio`."""
    app.add_typer(sd_app, name="sd")
