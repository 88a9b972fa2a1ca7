"""Weights shared by content: models registered in the records, their bytes in storage under their sha256.

A model is a row of the `models` table (sha256, backend, name unique per backend, storage key, size, owner,
source, meta) plus the object `models/<sha256>.safetensors` in storage (studio.storage). Any process, on any
machine with the same database and storage URLs, fetches a registered model into its own cache with
`ensure_local`: `<cache>/models/<backend>/<name>.safetensors`, downloaded to a temp file, checked against the
sha256 and renamed into place. That folder is the last of `Settings.model_root_paths`, so every backend's own
discovery finds the model by name (a file of the same name in a configured root comes first).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, insert, or_, select

from studio.db import run_retrying
from studio.errors import InputError, NotFound, StudioError, clip
from studio.hashing import digest_file

if TYPE_CHECKING:
    from studio.config import Settings
    from studio.db import Database

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SHA_PREFIX = re.compile(r"[0-9a-f]{12,64}")
PREFIX = "models/"
CACHE_FOLDER = "models"  # below Settings.cache_path; see Settings.model_root_paths


class ModelIntegrityError(StudioError):
    """A stored model's bytes do not hash to the sha256 it is registered under (nothing was placed)."""


def check_name(name: str, what: str = "model name") -> str:
    """`name` if it is a safe file stem (1-64 of [A-Za-z0-9_.-], starting with a letter or digit), else InputError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InputError(f"{what} {clip(name)!r} is invalid: use 1-64 letters, digits, '_', '.', '-', "
                         "starting with a letter or digit")
    return name


def storage_key(sha256: str) -> str:
    """The storage key of the weights with this sha256."""
    return f"{PREFIX}{sha256}.safetensors"


def cache_root(settings: Settings) -> Path:
    """The model root that holds fetched models: `<cache>/models`, one folder per backend inside."""
    return settings.cache_path / CACHE_FOLDER


def _database(settings: Settings, create: bool) -> Database | None:
    """The records; None (for a read) when they are the embedded SQLite file and it does not exist yet, so that
    listing or loading a model never creates a database."""
    from studio.db import Database

    db = Database.for_settings(settings)
    return None if not create and db.is_absent() else db


def _row(row: object) -> dict:
    info = dict(row._mapping)  # type: ignore[attr-defined]
    try:
        info["meta"] = json.loads(info.get("meta") or "{}")
    except ValueError:
        info["meta"] = {}
    return info


def find_model(settings: Settings, backend: str, name: str) -> dict | None:
    """The registered model `name` of `backend`, or None."""
    from studio.db import models

    db = _database(settings, create=False)
    if db is None:
        return None

    def read() -> dict | None:
        with db.read() as conn:
            row = conn.execute(select(models).where(models.c.backend == backend, models.c.name == name)).first()
        return _row(row) if row is not None else None

    return run_retrying(db, read)


def _check_backend(backend: str) -> None:
    from studio.registry import get_backend_class

    get_backend_class(check_name(backend, "backend name"))  # NotFound (one line) for an unknown backend


def _check_not_shadowed(settings: Settings, backend: str, name: str) -> None:
    """Refuse a name the backend already lists from elsewhere (its shipped weights, a file in a model root): those
    come first when a job names the model, so a registered model of that name would never be the one that runs."""
    from studio.registry import get_backend_class

    cache = cache_root(settings).resolve()
    for info in get_backend_class(backend).available_models(settings):
        if info.name != name:
            continue
        where = Path(str(info.path))
        if where.exists() and cache in where.resolve().parents:  # a fetched copy of a registered model
            continue
        raise InputError(f"{backend} already has a model {name!r} ({clip(info.description or str(info.path), 80)}); "
                         "choose another name")


def _name_taken(existing: dict, backend: str, name: str) -> InputError:
    return InputError(f"{backend} model name {name!r} is taken by other weights (sha256 "
                      f"{existing['sha256'][:12]}); choose another name or `studio models remove {name} "
                      f"--backend {backend}` first")


def import_model(settings: Settings, backend: str, path: str | Path, name: str, owner: str | None = None,
                 source: str = "import", meta: dict | None = None) -> dict:
    """Register the safetensors file at `path` as model `name` of `backend`: validate its header, hash it, upload
    it to `models/<sha256>.safetensors` (unless stored already) and insert its row; return the row.

    Importing the same weights under the same name again returns the existing row. InputError (one line) for a
    missing or invalid file, an unknown backend, a name other weights of that backend hold, or weights that are
    registered already under another name.
    """
    from studio.db import models
    from studio.safetensors_io import read_header
    from studio.storage import storage_for

    _check_backend(backend)
    check_name(name)
    _check_not_shadowed(settings, backend, name)
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"no weights file at {clip(path, 120)}")
    try:
        read_header(path)  # CorruptWeights (an InputError) when it is not a valid safetensors file
        sha256, size = digest_file(path), path.stat().st_size
    except OSError as exc:
        raise InputError(f"weights file {clip(path.name)!r} cannot be read ({exc.strerror or type(exc).__name__})") \
            from None
    record = {"sha256": sha256, "backend": backend, "name": name, "key": storage_key(sha256), "size": size,
              "owner": owner, "source": clip(source, 200), "created": time.time()}
    try:
        record["meta"] = json.dumps(meta or {}, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"model metadata is not JSON-serialisable: {exc}") from None
    db = _database(settings, create=True)

    def same_or_clash(conn) -> dict | None:  # noqa: ANN001
        by_name = conn.execute(select(models).where(models.c.backend == backend, models.c.name == name)).first()
        if by_name is not None:
            if by_name.sha256 == sha256:
                return _row(by_name)
            raise _name_taken(_row(by_name), backend, name)
        by_sha = conn.execute(select(models).where(models.c.sha256 == sha256)).first()
        if by_sha is not None:
            raise InputError(f"these weights are registered already as {by_sha.backend} model {by_sha.name!r} "
                             f"(sha256 {sha256[:12]})")
        return None

    def check() -> dict | None:
        with db.read() as conn:
            return same_or_clash(conn)

    found = run_retrying(db, check)
    if found is not None:
        return found
    store = storage_for(settings)
    uploaded = False
    if not store.exists(record["key"]):
        store.put_file(record["key"], path)
        uploaded = True

    def register() -> dict:
        with db.write() as conn:
            db.lock(conn, f"models:{backend}")
            again = same_or_clash(conn)
            if again is not None:
                return again
            conn.execute(insert(models).values(**record))
        return {**record, "meta": meta or {}}

    try:
        return run_retrying(db, register)
    except BaseException:
        if uploaded and find_by_sha(settings, sha256) is None:  # leave no unregistered object behind
            with contextlib.suppress(StudioError):
                store.delete(record["key"])
        raise


def find_by_sha(settings: Settings, sha256: str) -> dict | None:
    """The model registered with exactly this sha256, or None."""
    from studio.db import models

    db = _database(settings, create=False)
    if db is None:
        return None

    def read() -> dict | None:
        with db.read() as conn:
            row = conn.execute(select(models).where(models.c.sha256 == sha256)).first()
        return _row(row) if row is not None else None

    return run_retrying(db, read)


def list_models(settings: Settings, backend: str | None = None) -> list[dict]:
    """Every registered model (of one backend if given), sorted by backend and name."""
    from studio.db import models

    if backend is not None:
        check_name(backend, "backend name")
    db = _database(settings, create=False)
    if db is None:
        return []

    def read() -> list[dict]:
        query = select(models).order_by(models.c.backend, models.c.name)
        if backend is not None:
            query = query.where(models.c.backend == backend)
        with db.read() as conn:
            return [_row(r) for r in conn.execute(query)]

    return run_retrying(db, read)


def remove_model(settings: Settings, name_or_sha: str, backend: str | None = None) -> dict:
    """Unregister a model (by name, or by its sha256 or a prefix of at least 12 hex digits) and delete its stored
    weights and this machine's cached copy; return its row. NotFound when none matches, InputError when a name
    matches models of several backends and no `backend` is given."""
    from studio.db import models
    from studio.storage import storage_for

    if not isinstance(name_or_sha, str) or not name_or_sha:
        raise InputError("give a model name or sha256")
    if backend is not None:
        check_name(backend, "backend name")
    db = _database(settings, create=False)
    if db is None:
        raise NotFound(f"no registered model {clip(name_or_sha)!r} (none are registered)")
    wanted = models.c.name == name_or_sha
    if SHA_PREFIX.fullmatch(name_or_sha.lower()):
        wanted = or_(wanted, models.c.sha256.startswith(name_or_sha.lower()))

    def unregister() -> dict:
        with db.write() as conn:
            query = select(models).where(wanted)
            if backend is not None:
                query = query.where(models.c.backend == backend)
            rows = [_row(r) for r in conn.execute(query)]
            if not rows:
                where = f" of backend {backend!r}" if backend else ""
                raise NotFound(f"no registered model {clip(name_or_sha)!r}{where} (see `studio models list`)")
            if len(rows) > 1:
                which = ", ".join(f"{r['backend']}/{r['name']}" for r in rows[:6])
                raise InputError(f"{clip(name_or_sha)!r} matches several models ({which}); give --backend or the "
                                 "full sha256")
            conn.execute(delete(models).where(models.c.sha256 == rows[0]["sha256"]))
            return rows[0]

    row = run_retrying(db, unregister)
    storage_for(settings).delete(row["key"])
    _drop_cached(settings, row["backend"], row["name"])
    return row


def _cache_file(settings: Settings, backend: str, name: str) -> Path:
    return cache_root(settings) / backend / f"{name}.safetensors"


def _drop_cached(settings: Settings, backend: str, name: str) -> None:
    with contextlib.suppress(OSError):
        _cache_file(settings, backend, name).unlink()


def ensure_local(settings: Settings, backend: str, name: str) -> Path | None:
    """When `name` is a registered model of `backend`, make sure this machine's cache holds it with its sha256
    and return that file; None when it is not registered (a name that is no model name, e.g. a path, too).

    A missing or outdated copy is downloaded to a temp file, hashed and renamed into place; bytes that do not
    match the sha256 raise ModelIntegrityError (one line) and nothing is placed. A cached copy of a model that is
    no longer registered is removed, so no machine keeps serving a removed model.
    """
    from studio.hashing import file_sha256
    from studio.storage import storage_for

    if not (isinstance(name, str) and NAME_PATTERN.fullmatch(name) and NAME_PATTERN.fullmatch(backend)):
        return None
    row = find_model(settings, backend, name)
    target = _cache_file(settings, backend, name)
    if row is None:
        if target.is_file():
            _drop_cached(settings, backend, name)
        return None
    sha256 = row["sha256"]
    if target.is_file() and file_sha256(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")  # never *.safetensors
    try:
        storage_for(settings).get_file(row["key"], tmp)
        got = digest_file(tmp)
        if got != sha256:
            raise ModelIntegrityError(
                f"stored weights of {backend} model {name!r} do not match their sha256 (expected {sha256[:12]}, "
                f"got {got[:12]}): refused; remove the model and import it again")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def registered_listing(settings: Settings, backend: str, listed: set[str]) -> list[dict]:
    """Listing entries (as ModelInfo.describe gives) for the registered models of `backend` whose names are not in
    `listed` (not fetched to this machine yet): shown by name and sha256, fetched when first loaded."""
    return [{"name": r["name"], "path": "", "sha256": r["sha256"], "size": r["size"], "source": r["source"],
             "description": "registered model (fetched from storage when first used)"}
            for r in list_models(settings, backend) if r["name"] not in listed]


__all__ = ["ModelIntegrityError", "cache_root", "check_name", "ensure_local", "find_by_sha", "find_model",
           "import_model", "list_models", "registered_listing", "remove_model", "storage_key"]
