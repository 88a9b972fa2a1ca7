"""Users of a shared studio: names, roles, passwords (scrypt), API tokens (stored hashed) and login throttling.

The user store is `<store>/users.sqlite`, beside the job store. With no user defined (the single-user default)
nothing asks for a login and jobs have no owner. As soon as one user exists, the UI and the API require a login
or a token, and every job belongs to the user who submitted it (admins see everything).

Failed logins are throttled per user and per address: per (user name, client address) pair and per address
over any names, after a few free failures each further attempt must wait a delay that doubles with every failure
(up to a lockout of LOCK_MAX_S); an attempt made while its pair or its address waits is refused without its
password being checked, so guessing gains nothing from speed. A per-user counter over all addresses only slows
guessing down: once it is past its free failures, every address gets one attempt per current delay for that user
(a failure locks its pair at once), but a correct password from an address that is not itself waiting is never
refused, so failures from elsewhere cannot lock a user out.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from studio.errors import InputError, NotFound
from studio.sqlite import ThreadConnections, immediate_transaction

if TYPE_CHECKING:
    from studio.config import Settings

NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
TOKEN_PREFIX = "st_"
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2 ** 14, 8, 1, 32  # ~16 MiB and tens of ms per check
FREE_FAILURES_USER = 5  # failures of one user name from one address (or over all addresses) before delays start
FREE_FAILURES_ADDRESS = 20  # failures from one address (over any names) before delays start
DELAY_BASE_S = 2.0  # the first delay; doubles with every further failure
LOCK_MAX_S = 900.0  # the longest lockout
FORGET_S = 3600.0  # failures older than this (since the last one) are forgotten

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    admin INTEGER NOT NULL DEFAULT 0,
    password TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL
);
CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens (user);
CREATE TABLE IF NOT EXISTS failures (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    count INTEGER NOT NULL,
    last REAL NOT NULL,
    locked_until REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key)
);
"""


def check_user_name(name: str) -> str:
    """`name` if it is a valid user name, else InputError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(f"user name {name!r} is invalid: use 1-32 lower-case letters, digits, '_', '.', '-', "
                         "starting with a letter")
    return name


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A self-describing scrypt hash: scrypt$N$r$p$salt$key (base64)."""
    salt = salt or os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_LEN,
                         maxmem=64 * 1024 * 1024)
    enc = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${enc(salt).decode()}${enc(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a hash_password() string (constant time in the key comparison)."""
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(key)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=64 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


_DUMMY = hash_password("not a password", salt=b"\0" * 16)  # checked for unknown users, so timing tells nothing


def token_hash(token: str) -> str:
    """How a token is stored (tokens are long and random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InputError(f"password is shorter than {MIN_PASSWORD} characters; choose a longer one")
    if len(password) > MAX_PASSWORD:
        raise InputError(f"password is longer than {MAX_PASSWORD} characters")
    return password


@dataclass(frozen=True)
class LoginResult:
    """The outcome of one login attempt: ok, the user, and why not (one line, safe to log)."""

    ok: bool
    user: str | None = None
    why: str = ""
    retry_after_s: float = 0.0


class UserStore:
    """Users, tokens and login failures in `<store>/users.sqlite`. Safe from several threads and processes."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._db = ThreadConnections(self.path)
        self._ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> UserStore:
        return cls(settings.store_path / "users.sqlite")

    # ----- connections -----
    def _conn(self) -> sqlite3.Connection:
        conn = self._db.get()
        if not self._ready:
            conn.executescript(SCHEMA)
            self._ready = True
        return conn

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._conn())

    def close(self) -> None:
        self._db.close()

    # ----- users -----
    def any(self) -> bool:
        """Whether at least one user exists (no file: none, and nothing is created)."""
        if not self.path.exists():
            return False
        return self._conn().execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def add(self, name: str, password: str | None = None, admin: bool = False) -> dict:
        """Create a user (a password is optional: a user may sign in with API tokens only)."""
        check_user_name(name)
        stored = hash_password(_check_password(password)) if password is not None else None
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise InputError(f"user {name!r} already exists (remove it first, or use another name)")
            db.execute("INSERT INTO users (name, admin, password, created) VALUES (?, ?, ?, ?)",
                       (name, int(admin), stored, self.clock()))
        return self.get(name)

    def set_password(self, name: str, password: str) -> None:
        stored = hash_password(_check_password(password))
        with self._tx() as db:
            if db.execute("UPDATE users SET password = ? WHERE name = ?", (stored, name)).rowcount == 0:
                raise NotFound(f"no user {name!r}")

    def remove(self, name: str) -> None:
        """Delete a user and their tokens (their jobs keep their owner name; admins still see them)."""
        with self._tx() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no user {name!r}")
            db.execute("DELETE FROM tokens WHERE user = ?", (name,))

    def get(self, name: str) -> dict:
        """{name, admin, created, has_password, tokens}; NotFound for an unknown user."""
        if not self.path.exists():
            raise NotFound(f"no user {name!r}")
        row = self._conn().execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no user {name!r}")
        return self._public(row)

    def list(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [self._public(r) for r in self._conn().execute("SELECT * FROM users ORDER BY name")]

    def _public(self, row: sqlite3.Row) -> dict:
        tokens = self._conn().execute("SELECT COUNT(*) FROM tokens WHERE user = ?", (row["name"],)).fetchone()[0]
        return {"name": row["name"], "admin": bool(row["admin"]), "created": row["created"],
                "has_password": row["password"] is not None, "tokens": int(tokens)}

    def is_admin(self, name: str) -> bool:
        if not self.path.exists():
            return False
        row = self._conn().execute("SELECT admin FROM users WHERE name = ?", (name,)).fetchone()
        return bool(row and row["admin"])

    # ----- tokens -----
    def new_token(self, name: str) -> str:
        """A new API token for `name` (shown once; only its hash is stored)."""
        self.get(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._tx() as db:
            db.execute("INSERT INTO tokens (hash, user, created) VALUES (?, ?, ?)", (token_hash(token), name,
                                                                                      self.clock()))
        return token

    def revoke_tokens(self, name: str) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM tokens WHERE user = ?", (name,)).rowcount

    def user_for_token(self, token: str) -> str | None:
        """The user an API token belongs to, or None."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or not self.path.exists():
            return None
        row = self._conn().execute("SELECT t.user FROM tokens t JOIN users u ON u.name = t.user WHERE t.hash = ?",
                                   (token_hash(token),)).fetchone()
        return row["user"] if row else None

    # ----- logins -----
    def check(self, name: str, secret: str) -> bool:
        """Whether `secret` is `name`'s password or one of their tokens (no throttling; see login)."""
        if isinstance(secret, str) and secret.startswith(TOKEN_PREFIX):
            return self.user_for_token(secret) == name
        row = self._conn().execute("SELECT password FROM users WHERE name = ?", (name,)).fetchone() \
            if self.path.exists() else None
        stored = row["password"] if row is not None and row["password"] else None
        ok = verify_password(secret if isinstance(secret, str) else "", stored or _DUMMY)
        return ok and stored is not None

    def login(self, name: str, secret: str, address: str | None = None) -> LoginResult:
        """A throttled login with a password or an API token. Refused unchecked while this (user, address) pair or
        this address waits; failures of the user over all addresses only make each address wait after its next
        failure (see the module docstring): they never refuse a correct password."""
        name = (name or "").strip()
        user, addr = name.lower()[:64], (address or "")[:64]
        pair = ("pair", f"{user} {addr}")
        gates = [pair] + ([("address", addr)] if addr else [])
        now = self.clock()
        wait = max(self._locked_for(kind, key, now) for kind, key in gates)
        if wait > 0:
            return LoginResult(False, None, f"too many failed logins; try again in {wait:.0f} s", wait)
        if self.check(name, secret):
            self._forget(pair)
            return LoginResult(True, name)
        user_wait = self._locked_for("user", user, now)  # the user is being guessed at: this address waits too
        for kind, key in [*gates, ("user", user)]:
            self._failed(kind, key, now, min_delay=user_wait if kind == "pair" else 0.0)
        return LoginResult(False, None, "wrong user name or password")

    def _locked_for(self, kind: str, key: str, now: float) -> float:
        if not self.path.exists():
            return 0.0
        row = self._conn().execute("SELECT locked_until FROM failures WHERE kind = ? AND key = ?",
                                   (kind, key)).fetchone()
        return max(0.0, row["locked_until"] - now) if row else 0.0

    def _failed(self, kind: str, key: str, now: float, min_delay: float = 0.0) -> None:
        free = FREE_FAILURES_ADDRESS if kind == "address" else FREE_FAILURES_USER
        with self._tx() as db:
            row = db.execute("SELECT count, last FROM failures WHERE kind = ? AND key = ?", (kind, key)).fetchone()
            count = 1 if row is None or now - row["last"] > FORGET_S else row["count"] + 1
            delay = 0.0 if count < free else min(LOCK_MAX_S, DELAY_BASE_S * 2 ** (count - free))
            delay = max(delay, min(LOCK_MAX_S, min_delay))
            db.execute("INSERT INTO failures (kind, key, count, last, locked_until) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT(kind, key) DO UPDATE SET count = excluded.count, last = excluded.last, "
                       "locked_until = excluded.locked_until", (kind, key, count, now, now + delay))

    def _forget(self, key: tuple[str, str]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM failures WHERE kind = ? AND key = ?", key)

    def failures(self, kind: str, key: str) -> int:
        """How many recent failed logins count against a user name over all addresses ("user"), an address
        ("address") or one user name from one address ("pair", key "NAME ADDRESS")."""
        if not self.path.exists():
            return 0
        row = self._conn().execute("SELECT count FROM failures WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return int(row["count"]) if row else 0


_shared: dict[Path, UserStore] = {}
_shared_lock = threading.Lock()


def shared_store(settings: Settings) -> UserStore:
    """One UserStore per user database in this process (its connections are reused across calls)."""
    path = settings.store_path / "users.sqlite"
    with _shared_lock:
        store = _shared.get(path)
        if store is None:
            store = _shared[path] = UserStore(path)
        return store


def users_exist(settings: Settings) -> bool:
    """Whether this studio has users (then logins are required and jobs have owners)."""
    return shared_store(settings).any()


def viewer_for(settings: Settings, user: str | None) -> str | None:
    """What a user may see: None (everything) for no user or an admin, else the user's own name."""
    if user is None:
        return None
    return None if shared_store(settings).is_admin(user) else user


def user_from_env(settings: Settings, env: dict[str, str] | None = None) -> str | None:
    """The CLI's user: None when no user exists; else from STUDIO_TOKEN (an API token) or STUDIO_USER."""
    env = dict(os.environ if env is None else env)
    store = UserStore.from_settings(settings)
    if not store.any():
        return None
    token = env.get("STUDIO_TOKEN", "").strip()
    if token:
        user = store.user_for_token(token)
        if user is None:
            raise InputError("STUDIO_TOKEN is not a valid API token (create one with `studio users token NAME`)")
        return user
    name = env.get("STUDIO_USER", "").strip()
    if name:
        store.get(check_user_name(name))
        return name
    raise InputError("this studio has users: set STUDIO_TOKEN (from `studio users token NAME`) or STUDIO_USER")


__all__ = ["LoginResult", "UserStore", "check_user_name", "hash_password", "shared_store", "token_hash",
           "user_from_env", "users_exist", "verify_password", "viewer_for"]
