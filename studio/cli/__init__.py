"""The `studio` command line. Heavy libraries (torch, diffusers, gradio) load only inside commands."""

from __future__ import annotations

import os
import sys

import typer

from studio.errors import MAX_MESSAGE_CHARS, StudioError, clip

app = typer.Typer(name="studio", help="Latent Studio: sample, walk, edit and compress in latent space.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def _register() -> None:
    from studio.cli import db_cmds, local, models_cmds, queue_cmds, users_cmds

    local.register(app)
    queue_cmds.register(app)
    users_cmds.register(app)
    models_cmds.register(app)
    db_cmds.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every StudioError becomes one line on stderr and exit status 2."""
    try:  # typer >= 0.20 vendors click as typer._click; older versions use click itself
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover
        from click import exceptions as click_errors

    _register()
    try:
        code = app(args=argv, standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click_errors.UsageError as exc:  # a wrong flag or a missing argument: one line, like any bad input
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        sys.stderr.write(f"error: {exc.format_message()}{where}\n")
        sys.exit(2)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except StudioError as exc:
        sys.stderr.write(f"error: {clip(exc, MAX_MESSAGE_CHARS)}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure still gets one line; STUDIO_DEBUG=1 shows the traceback
        if os.environ.get("STUDIO_DEBUG"):
            raise
        sys.stderr.write(f"error: unexpected {type(exc).__name__}: {clip(exc, 200)} "
                         "(set STUDIO_DEBUG=1 for the traceback)\n")
        sys.exit(1)
