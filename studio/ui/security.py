"""Safe defaults for serving the UI: loopback only, unless auth is configured.

With users defined (`studio users add`), the login checks the user store (studio.users): passwords or API
tokens, throttled per user name and per client address. Programs can also send an API token in a header
(`Authorization: Bearer <token>` or `X-Studio-Token: <token>`): `AuthContext`, an ASGI middleware, turns it
into a Gradio session for that user, and records each request's client address for the login throttle.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from studio.config import Settings
from studio.errors import InputError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TOKEN_USER = "token"
TOKEN_HEADERS = (b"authorization", b"x-studio-token")
CLIENT_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar("studio_client_address", default=None)
log = logging.getLogger("studio.ui")

Auth = tuple[str, str] | Callable[[str, str], bool] | None


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def user_auth(settings: Settings) -> Callable[[str, str], Any]:
    """Gradio's `auth` for a studio with users: a password or an API token of that user, throttled per user name
    and per client address (a refused attempt is logged with its reason; the page only says it failed)."""
    from studio.users import UserStore

    store = UserStore.from_settings(settings)

    async def check(username: str, password: str) -> bool:
        address = CLIENT_ADDRESS.get()
        result = await asyncio.to_thread(store.login, username, password, address)  # scrypt off the event loop
        if not result.ok:
            log.warning("login refused for %r from %s: %s", str(username)[:64], address or "?", result.why)
        return result.ok

    return check


def auth_from_settings(settings: Settings) -> Auth:
    """Gradio's `auth`: the user store when users exist (studio.users); else ("user", "password") from
    STUDIO_UI_AUTH, or any user name with the password STUDIO_UI_TOKEN; None when none is set."""
    from studio.users import users_exist

    if users_exist(settings):
        return user_auth(settings)
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


def auth_mode(settings: Settings) -> str:
    """How `auth_from_settings` checks a login: "users" (the user store: the signed-in name is a studio user),
    "shared" (STUDIO_UI_AUTH or STUDIO_UI_TOKEN: the name proves nothing) or "none". Recorded when the page is
    built, so that users added later are never trusted through a shared login (studio.ui.jobs.current_user)."""
    from studio.users import users_exist

    if users_exist(settings):
        return "users"
    return "shared" if settings.ui_auth or settings.ui_token else "none"


def launch_auth(settings: Settings, host: str, share: bool = False) -> Auth:
    """The auth to launch with; refuses a non-loopback host or a share link without auth."""
    auth = auth_from_settings(settings)
    if auth is None and (share or not is_loopback(host)):
        where = "a share link" if share else f"host {host!r}"
        raise InputError(f"refusing to serve the UI on {where} without auth: set STUDIO_UI_AUTH=user:password "
                         "or STUDIO_UI_TOKEN=<long random token>, or bind to 127.0.0.1")
    return auth


def auth_message(settings: Settings, auth: Auth) -> str | None:
    """The line above the login form."""
    if auth is None:
        return None
    from studio.users import users_exist

    if users_exist(settings):
        return "Latent Studio: sign in with your user name and password (or an API token from `studio users token`)."
    return ("Latent Studio: sign in (STUDIO_UI_AUTH user and password, or any user with STUDIO_UI_TOKEN as the "
            "password).")


class AuthContext:
    """ASGI middleware: records the client address (for the login throttle) and signs in requests that carry a
    valid API token in a header; a request with an invalid token is refused with 401.

    Each valid token gets a random Gradio session id (never derived from the token or its stored hash); when the
    token no longer verifies (revoked, or its user removed) its session is dropped from Gradio's sessions."""

    def __init__(self, app: Any, settings: Settings) -> None:
        from studio.users import UserStore

        self.app = app
        self.store = UserStore.from_settings(settings)
        self.sessions: dict[str, str] = {}  # token hash -> the random session id given to it

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        reset = CLIENT_ADDRESS.set(str(client[0]) if client else None)
        try:
            token = _header_token(scope.get("headers") or [])
            if token is not None:
                user = await asyncio.to_thread(self.store.user_for_token, token)
                if user is None:
                    self._sign_out(scope, token)
                if user is None or not self._sign_in(scope, token, user):
                    await _refuse(scope, send, "invalid API token (create one with `studio users token NAME`)")
                    return
            await self.app(scope, receive, send)
        finally:
            CLIENT_ADDRESS.reset(reset)

    def _sign_in(self, scope: dict, token: str, user: str) -> bool:
        """Give the request a Gradio session of `user` (as if it had logged in): a random session id per token."""
        from studio.users import token_hash

        app = scope.get("app")
        tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
        if not isinstance(tokens, dict) or cookie_id is None:
            return False
        key = token_hash(token)
        session = self.sessions.get(key)
        if session is None or tokens.get(session) != user:
            if session is not None:
                tokens.pop(session, None)
            session = self.sessions[key] = "studio-" + secrets.token_urlsafe(32)
        tokens[session] = user
        cookie = f"access-token-{cookie_id}={session}; access-token-unsecure-{cookie_id}={session}".encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"cookie"]
        scope["headers"] = [*headers, (b"cookie", cookie)]
        return True

    def _sign_out(self, scope: dict, token: str) -> None:
        """Drop the session given to `token` (it no longer verifies)."""
        from studio.users import token_hash

        session = self.sessions.pop(token_hash(token), None)
        tokens = getattr(scope.get("app"), "tokens", None)
        if session is not None and isinstance(tokens, dict):
            tokens.pop(session, None)


def _header_token(headers: list) -> str | None:
    for key, value in headers:
        name = key.lower()
        if name in TOKEN_HEADERS:
            text = value.decode("latin-1").strip()
            if name == b"authorization":
                scheme, _, rest = text.partition(" ")
                if scheme.lower() != "bearer" or not rest.strip().startswith("st_"):
                    continue  # another scheme (e.g. a proxy's Basic auth) is not ours
                text = rest.strip()
            return text
    return None


async def _refuse(scope: dict, send: Any, message: str) -> None:
    if scope.get("type") == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def app_kwargs(settings: Settings) -> dict:
    """Arguments for the FastAPI app Gradio builds (`launch(app_kwargs=...)`): the AuthContext middleware."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(AuthContext, settings=settings)]}
