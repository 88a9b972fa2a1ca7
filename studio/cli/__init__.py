"""The `studio` command line. Heavy libraries (torch, diffusers, gradio) load only inside commands."""

from __future__ import annotations

import os
import sys

import typer

from studio.errors import StudioError

app = typer.Typer(name="studio", help="Latent Studio: sample, walk, edit and compress in latent space.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def _register() -> None:
    from studio.cli import local, queue_cmds

    local.register(app)
    queue_cmds.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every StudioError becomes one line on stderr and exit status 2."""
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except StudioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure still gets one line; STUDIO_DEBUG=1 shows the traceback
        if os.environ.get("STUDIO_DEBUG"):
            raise
        sys.stderr.write(f"error: unexpected {type(exc).__name__}: {exc} (set STUDIO_DEBUG=1 for the traceback)\n")
        sys.exit(1)
