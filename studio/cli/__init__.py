"""The `studio` command line. Heavy libraries (torch, diffusers, gradio) load only inside commands."""

from __future__ import annotations

import os
import sys

import typer

from studio.errors import MAX_MESSAGE_CHARS, StudioError, clip

app = typer.Typer(name="studio", help="Latent Studio: sample, walk, edit and compress in latent space.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
_mounted: set[str] = set()  # "queue" once the queue commands are on `app`


def _mount_queue() -> None:
    from studio.cli import queue_cmds

    if "queue" not in _mounted:
        queue_cmds.register(app)
        _mounted.add("queue")


def _register() -> None:
    """Mount the core's commands, then every plugin's (group `latent_studio.commands`); a plugin whose commands
    fail to load is reported in one stderr line and the CLI works on without them."""
    from studio.cli import batch_cmds, datasets_cmds, db_cmds, local, models_cmds, users_cmds
    from studio.registry import load_commands

    local.register(app)
    _mount_queue()
    users_cmds.register(app)
    models_cmds.register(app)
    db_cmds.register(app)
    batch_cmds.register(app)
    datasets_cmds.register(app)
    core = (len(app.registered_commands), len(app.registered_groups))
    for failure in load_commands(app):
        sys.stderr.write(f"warning: the commands of plugin {failure.plugin!r} failed to load: "
                         f"{clip(failure.error, 200)}\n")
    _drop_clashes(*core)


def _command_name(info: object) -> str:
    """The name a registered typer command or group gets on the command line."""
    from typer.main import get_command_name

    if getattr(info, "name", None):
        return info.name  # type: ignore[attr-defined]
    instance = getattr(info, "typer_instance", None)
    if instance is not None and isinstance(instance.info.name, str):
        return instance.info.name
    callback = getattr(info, "callback", None) or getattr(getattr(instance, "info", None), "callback", None)
    return get_command_name(callback.__name__) if callback is not None else ""


def _drop_clashes(core_commands: int, core_groups: int) -> None:
    """Remove every plugin command or group whose name is already taken (by the core or an earlier plugin), with
    one stderr line each: a plugin adds commands, it never replaces one."""
    taken = {_command_name(i) for i in app.registered_commands[:core_commands] + app.registered_groups[:core_groups]}
    for infos, start in ((app.registered_commands, core_commands), (app.registered_groups, core_groups)):
        kept = infos[:start]
        for info in infos[start:]:
            name = _command_name(info)
            if name in taken:
                sys.stderr.write(f"warning: a plugin's command {name!r} is ignored: that name is taken\n")
                continue
            taken.add(name)
            kept.append(info)
        infos[:] = kept


def _is_queue_command(args: list[str]) -> bool:
    """Whether `args` run a queue command (submit, status, wait, jobs, ...): those mount only the queue commands,
    so the thin clients start fast."""
    from studio.cli.queue_cmds import NAMES

    return next((a for a in args if not a.startswith("-")), None) in NAMES


def main(argv: list[str] | None = None) -> None:
    """Entry point: every StudioError becomes one line on stderr and exit status 2."""
    try:  # typer >= 0.20 vendors click as typer._click; older versions use click itself
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover
        from click import exceptions as click_errors

    if _is_queue_command(sys.argv[1:] if argv is None else list(argv)):
        _mount_queue()
    else:
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
