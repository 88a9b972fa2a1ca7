"""Safe defaults for serving the UI: loopback only, unless auth is configured."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from studio.config import Settings
from studio.errors import InputError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TOKEN_USER = "token"

Auth = tuple[str, str] | Callable[[str, str], bool] | None


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def auth_from_settings(settings: Settings) -> Auth:
    """Gradio's `auth`: ("user", "password") from STUDIO_UI_AUTH, or any user name with the password
    STUDIO_UI_TOKEN; None when neither is set."""
    if settings.ui_auth:
        user, sep, password = settings.ui_auth.partition(":")
        if not sep or not user or not password:
            raise InputError("STUDIO_UI_AUTH must look like user:password (both non-empty)")
        if len(password) < 8:
            raise InputError("STUDIO_UI_AUTH password is shorter than 8 characters; choose a longer one")
        return (user, password)
    if settings.ui_token:
        token = settings.ui_token
        if len(token) < 16:
            raise InputError("STUDIO_UI_TOKEN is shorter than 16 characters; use a long random token")

        def check(username: str, password: str) -> bool:
            return hmac.compare_digest(password.encode(), token.encode())

        return check
    return None


def launch_auth(settings: Settings, host: str, share: bool = False) -> Auth:
    """The auth to launch with; refuses a non-loopback host or a share link without auth."""
    auth = auth_from_settings(settings)
    if auth is None and (share or not is_loopback(host)):
        where = "a share link" if share else f"host {host!r}"
        raise InputError(f"refusing to serve the UI on {where} without auth: set STUDIO_UI_AUTH=user:password "
                         "or STUDIO_UI_TOKEN=<long random token>, or bind to 127.0.0.1")
    return auth
