"""`studio users add|list|remove|token`: the users of a shared studio (see studio.users and docs/QUEUE.md).

With no user defined the studio is single-user (no login). Adding the first user turns logins on for the UI and
the API, and the queue commands then need STUDIO_TOKEN (an API token) or STUDIO_USER.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated

import typer

from studio.cli.common import print_json
from studio.errors import InputError

users_app = typer.Typer(help="Users of a shared studio: add, list, remove, and API tokens.", no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="User name (lower-case letters, digits, '_', '.', '-').")]


def _store():  # noqa: ANN202 - UserStore, imported lazily
    from studio.config import load_settings
    from studio.users import UserStore

    return UserStore.from_settings(load_settings())


def _read_password(stdin: bool) -> str:
    if stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if not password:
            raise InputError("--password-stdin: no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise InputError("give the password with --password-stdin (standard input is not a terminal)")
    first = typer.prompt("Password", hide_input=True)
    if typer.prompt("Repeat the password", hide_input=True) != first:
        raise InputError("the two passwords differ")
    return first


@users_app.command("add")
def add(name: Name,
        admin: Annotated[bool, typer.Option("--admin", help="An admin sees and acts on every user's jobs.")] = False,
        password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from the first "
                                                                               "line of standard input.")] = False,
        no_password: Annotated[bool, typer.Option("--no-password", help="No password: sign in with API tokens "
                                                                        "only.")] = False) -> None:
    """Add a user (the first user turns logins on)."""
    from studio.users import check_user_name

    check_user_name(name)
    store = _store()
    first = not store.any()
    user = store.add(name, None if no_password else _read_password(password_stdin), admin=admin)
    role = "admin" if user["admin"] else "user"
    print(f"added {role} {user['name']}" + (" (logins are now required for the UI and the API)" if first else ""))


@users_app.command("list")
def list_users(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The users, with their role and how many API tokens they have."""
    rows = _store().list()
    if as_json:
        print_json(rows)
        return
    if not rows:
        print("no users: the studio is single-user (no login); add one with `studio users add NAME`")
    for u in rows:
        when = datetime.fromtimestamp(u["created"]).strftime("%Y-%m-%d %H:%M")
        print(f"{u['name']:<20} {'admin' if u['admin'] else 'user':<6} {u['tokens']} token(s)  "
              f"{'password' if u['has_password'] else 'no password'}  created {when}")


@users_app.command("remove")
def remove(name: Name) -> None:
    """Remove a user and their tokens (their jobs stay, visible to admins)."""
    _store().remove(name)
    print(f"removed {name}")


@users_app.command("token")
def token(name: Name,
          revoke: Annotated[bool, typer.Option("--revoke", help="Revoke all of the user's tokens instead.")] = False
          ) -> None:
    """Create an API token for a user (printed once: use it as STUDIO_TOKEN, as the password of gradio_client's
    auth=(NAME, TOKEN), or in an `Authorization: Bearer` header)."""
    store = _store()
    if revoke:
        print(f"revoked {store.revoke_tokens(store.get(name)['name'])} token(s) of {name}")
        return
    print(store.new_token(name))


def register(app: typer.Typer) -> None:
    """Mount `studio users` on the main app."""
    app.add_typer(users_app, name="users")
