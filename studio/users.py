"""Users of a shared studio: names, roles, passwords (scrypt), API tokens (stored hashed) and login throttling.

Users, tokens and login failures live in the records database (studio.db: the embedded SQLite file or PostgreSQL),
so every machine of a studio sees the same users, tokens and throttling. With no user defined (the single-user
default) nothing asks for a login and jobs have no owner. As soon as one user exists, the UI and the API require a
login or a token, and every job belongs to the user who submitted it (admins see everything).

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
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from studio.db import Database, database_url, retrying, shared
from studio.db import failures as T_FAIL
from studio.db import tokens as T_TOK
from studio.db import users as T_USERS
from studio.errors import InputError, NotFound

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


def _database(where: Database | str | Path) -> Database:
    if isinstance(where, Database):
        return where
    text = str(where)
    return shared(text if "://" in text else f"sqlite:///{Path(text).expanduser()}")


U, K, F = T_USERS.c, T_TOK.c, T_FAIL.c


class UserStore:
    """Users, tokens and login failures in a records database (a Database, a URL, or the path of an SQLite file).
    Safe to use from several threads, processes and machines."""

    def __init__(self, where: Database | str | Path, clock: Callable[[], float] = time.time) -> None:
        self.db = _database(where)
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> UserStore:
        """The user store of this studio's records database (STUDIO_DATABASE_URL, or the embedded file)."""
        return cls(Database.for_settings(settings))

    def close(self) -> None:
        """Nothing to release per store: the process's engine pools connections (kept for callers)."""

    def _absent(self) -> bool:
        """Whether the embedded database file does not exist yet (then there are no users, and reads create none)."""
        return self.db.is_absent()

    # ----- users -----
    @retrying
    def any(self) -> bool:
        """Whether at least one user exists (no embedded database file: none, and nothing is created)."""
        if self._absent():
            return False
        with self.db.read() as db:
            return db.execute(select(U.name).limit(1)).first() is not None

    def add(self, name: str, password: str | None = None, admin: bool = False) -> dict:
        """Create a user (a password is optional: a user may sign in with API tokens only)."""
        check_user_name(name)
        stored = hash_password(_check_password(password)) if password is not None else None
        self._insert(name, stored, admin)
        return self.get(name)

    @retrying
    def _insert(self, name: str, stored: str | None, admin: bool) -> None:
        with self.db.write() as db:
            self.db.lock(db, f"user:{name}")
            if db.execute(select(U.name).where(U.name == name)).first() is not None:
                raise InputError(f"user {name!r} already exists (remove it first, or use another name)")
            db.execute(insert(T_USERS).values(name=name, admin=int(admin), password=stored, created=self.clock()))

    def set_password(self, name: str, password: str) -> None:
        """Replace `name`'s password; NotFound for an unknown user."""
        self._set_password(name, hash_password(_check_password(password)))

    @retrying
    def _set_password(self, name: str, stored: str) -> None:
        with self.db.write() as db:
            if db.execute(update(T_USERS).where(U.name == name).values(password=stored)).rowcount == 0:
                raise NotFound(f"no user {name!r}")

    @retrying
    def remove(self, name: str) -> None:
        """Delete a user and their tokens (their jobs keep their owner name; admins still see them)."""
        with self.db.write() as db:
            if db.execute(delete(T_USERS).where(U.name == name)).rowcount == 0:
                raise NotFound(f"no user {name!r}")
            db.execute(delete(T_TOK).where(K.user == name))

    @staticmethod
    def _listing(db: Connection, name: str | None = None) -> list[dict]:
        counts = select(K.user, func.count().label("n")).group_by(K.user).subquery()
        query = select(U.name, U.admin, U.created, U.password.is_not(None).label("has_password"),
                       func.coalesce(counts.c.n, 0).label("tokens")).outerjoin(counts, counts.c.user == U.name)
        if name is not None:
            query = query.where(U.name == name)
        rows = db.execute(query).mappings().all()
        return sorted(({"name": r["name"], "admin": bool(r["admin"]), "created": r["created"],
                        "has_password": bool(r["has_password"]), "tokens": int(r["tokens"])} for r in rows),
                      key=lambda u: u["name"])

    @retrying
    def get(self, name: str) -> dict:
        """{name, admin, created, has_password, tokens}; NotFound for an unknown user."""
        if self._absent():
            raise NotFound(f"no user {name!r}")
        with self.db.read() as db:
            found = self._listing(db, name)
        if not found:
            raise NotFound(f"no user {name!r}")
        return found[0]

    @retrying
    def list(self) -> list[dict]:
        """Every user, by name (as `get` describes them)."""
        if self._absent():
            return []
        with self.db.read() as db:
            return self._listing(db)

    @retrying
    def is_admin(self, name: str) -> bool:
        """Whether `name` is an existing admin."""
        if self._absent():
            return False
        with self.db.read() as db:
            row = db.execute(select(U.admin).where(U.name == name)).first()
        return bool(row and row[0])

    # ----- tokens -----
    def new_token(self, name: str) -> str:
        """A new API token for `name` (shown once; only its hash is stored); NotFound for an unknown user."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._add_token(name, token_hash(token))
        return token

    @retrying
    def _add_token(self, name: str, hashed: str) -> None:
        with self.db.write() as db:
            if db.execute(select(U.name).where(U.name == name).with_for_update()).first() is None:
                raise NotFound(f"no user {name!r}")
            db.execute(insert(T_TOK).values(hash=hashed, user=name, created=self.clock()))

    @retrying
    def revoke_tokens(self, name: str) -> int:
        """Delete all of `name`'s tokens; how many there were."""
        with self.db.write() as db:
            return db.execute(delete(T_TOK).where(K.user == name)).rowcount

    @retrying
    def user_for_token(self, token: str) -> str | None:
        """The user an API token belongs to, or None."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or self._absent():
            return None
        with self.db.read() as db:
            row = db.execute(select(K.user).join(T_USERS, U.name == K.user)
                             .where(K.hash == token_hash(token))).first()
        return row[0] if row else None

    # ----- logins -----
    def check(self, name: str, secret: str) -> bool:
        """Whether `secret` is `name`'s password or one of their tokens (no throttling; see login)."""
        if isinstance(secret, str) and secret.startswith(TOKEN_PREFIX):
            return self.user_for_token(secret) == name
        stored = self._password(name)
        ok = verify_password(secret if isinstance(secret, str) else "", stored or _DUMMY)
        return ok and stored is not None

    @retrying
    def _password(self, name: str) -> str | None:
        if self._absent():
            return None
        with self.db.read() as db:
            row = db.execute(select(U.password).where(U.name == name)).first()
        return row[0] if row is not None and row[0] else None

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
        self._failed([(kind, key, user_wait if kind == "pair" else 0.0) for kind, key in [*gates, ("user", user)]],
                     now)
        return LoginResult(False, None, "wrong user name or password")

    @retrying
    def _locked_for(self, kind: str, key: str, now: float) -> float:
        if self._absent():
            return 0.0
        with self.db.read() as db:
            row = db.execute(select(F.locked_until).where(F.kind == kind, F.key == key)).first()
        return max(0.0, row[0] - now) if row else 0.0

    @retrying
    def _failed(self, counters: list[tuple[str, str, float]], now: float) -> None:
        """Count one failure against each (kind, key, min_delay), in one transaction (PostgreSQL: each counter is
        locked, so failures from several machines at once are all counted)."""
        with self.db.write() as db:
            for kind, key, min_delay in counters:
                self.db.lock(db, f"failures:{kind}:{key}")
                row = db.execute(select(F.count, F.last).where(F.kind == kind, F.key == key)).first()
                count = 1 if row is None or now - row[1] > FORGET_S else row[0] + 1
                free = FREE_FAILURES_ADDRESS if kind == "address" else FREE_FAILURES_USER
                delay = 0.0 if count < free else min(LOCK_MAX_S, DELAY_BASE_S * 2 ** (count - free))
                delay = max(delay, min(LOCK_MAX_S, min_delay))
                self.db.upsert(db, T_FAIL, {"kind": kind, "key": key, "count": count, "last": now,
                                            "locked_until": now + delay}, ["kind", "key"])

    @retrying
    def _forget(self, key: tuple[str, str]) -> None:
        with self.db.write() as db:
            db.execute(delete(T_FAIL).where(F.kind == key[0], F.key == key[1]))

    @retrying
    def failures(self, kind: str, key: str) -> int:
        """How many recent failed logins count against a user name over all addresses ("user"), an address
        ("address") or one user name from one address ("pair", key "NAME ADDRESS")."""
        if self._absent():
            return 0
        with self.db.read() as db:
            row = db.execute(select(F.count).where(F.kind == kind, F.key == key)).first()
        return int(row[0]) if row else 0


_shared: dict[str, UserStore] = {}
_shared_lock = threading.Lock()


def shared_store(settings: Settings) -> UserStore:
    """One UserStore per records database URL in this process."""
    url = database_url(settings)
    with _shared_lock:
        store = _shared.get(url)
        if store is None:
            store = _shared[url] = UserStore(Database.for_settings(settings))
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
