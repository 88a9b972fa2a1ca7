"""`studio datasets list|import|remove`: image-folder datasets imported by name (studio.dataset_import)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from studio.cli.common import print_json

datasets_app = typer.Typer(help="Datasets: the built-in ones and image folders imported by name.",
                           no_args_is_help=True)


def _settings():  # noqa: ANN202 - Settings, imported lazily
    from studio.config import load_settings

    return load_settings()


@datasets_app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the built-in datasets and the imported ones (with their image counts)."""
    from studio.dataset_import import describe
    from studio.datasets import BUILDERS, imported_datasets

    settings = _settings()
    imported = [describe(settings, n) for n in imported_datasets(settings)]
    if as_json:
        print_json({"builtin": sorted(BUILDERS), "imported": imported})
        return
    print("built-in: " + ", ".join(sorted(BUILDERS)) + ", folder:PATH")
    for row in imported:
        classes = f", {len(row['classes'])} classes" if row.get("classes") else ""
        print(f"{row['name']:<24} {row['images']:>7} images{classes}")


@datasets_app.command("import")
def import_cmd(name: Annotated[str, typer.Argument(help="Name to use the dataset by (e.g. in `--dataset NAME`).")],
               path: Annotated[Path, typer.Argument(help="A folder of images (sub-folders are classes) or a .zip.")],
               ) -> None:
    """Import a folder of images or a zip into the first data root as dataset NAME."""
    from studio.dataset_import import import_images

    print(import_images(_settings(), name, path).line())


@datasets_app.command("remove")
def remove_cmd(name: Annotated[str, typer.Argument(help="An imported dataset's name.")]) -> None:
    """Delete an imported dataset (built-ins and other data folders are never touched)."""
    from studio.dataset_import import remove_dataset

    remove_dataset(_settings(), name)
    print(f"removed dataset {name!r}")


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")
