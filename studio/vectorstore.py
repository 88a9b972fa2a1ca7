"""Named attribute vectors, keyed by backend and weights: metadata in the records database, tensors in storage.

A vector's row (table `vectors`: backend, weights = the first 16 hex digits of the weights' sha256, name, owner,
shared, meta) lives in the records (SQLite or PostgreSQL, studio.db); its tensor (a safetensors file, key "vector")
lives in storage (a folder or S3, studio.storage) under `vectors/<backend>/<weights16>/<name>.safetensors`. So a vector
fitted on any machine is listed and applied on every machine that shares the database and storage URLs.

The metadata holds at least `space` (the latent space the vector lives in), plus what the fit reported (method,
attribute, auc, ...) and name, backend, sha256, shape, created and tensor_sha256 (checked on load: corrupt stored
bytes give one clear line). A vector belongs to one set of weights: another model of the same backend does not see it.

Users: a vector saved with an `owner` is seen (listed, loaded) only by its owner, by the users it is shared with
(`shared`, a list of names; "*" means everyone) and by admins (viewer None). A vector with no owner (the
single-user default) is seen by everyone. A user saves only over their own vectors: a name already used by a
vector of another owner (or an ownerless one) is refused; owner None (single-user, admins) saves over any.

Upgrade: a studio from before kept vectors as files under `<home>/vectors/<backend>/<sha16>/<name>.safetensors` (+
`.json`). They are imported once (a marker row in `studio_meta`) when vectors are first listed, loaded or saved; a
vector already in the records is never replaced by an import, and unreadable legacy files are skipped (logged).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from studio.db import Database, retrying, studio_meta, vectors
from studio.errors import InputError, NotFound, StudioError, clip

if TYPE_CHECKING:
    import torch
    from sqlalchemy.engine import Connection, Row

    from studio.config import Settings
    from studio.storage import Storage

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SHA_PATTERN = re.compile(r"[0-9a-fA-F]{16,64}")
TENSOR_KEY = "vector"
LOAD_ATTEMPTS = 3  # a load that races a re-save of the same name reads the row and bytes again


def check_name(name: str, what: str = "vector name") -> str:
    """Return `name` if it is a safe file name stem, else raise InputError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InputError(f"{what} {name!r} is invalid: use 1-64 letters, digits, '_', '.', '-', "
                         "starting with a letter or digit")
    return name


def _weights(backend: str, weights_sha256: str) -> str:
    """The weights column (16 lower-case hex digits), after checking the backend name and the digest."""
    check_name(backend, "backend name")
    if not isinstance(weights_sha256, str) or not SHA_PATTERN.fullmatch(weights_sha256):
        raise InputError(f"weights sha256 {weights_sha256!r} is not a hex digest")
    return weights_sha256[:16].lower()


def storage_key(backend: str, weights16: str, name: str) -> str:
    """The storage key of a vector's tensor."""
    return f"vectors/{backend}/{weights16}/{name}.safetensors"


def visible(meta: dict, viewer: str | None) -> bool:
    """Whether `viewer` (None: everything) sees a vector with this metadata."""
    owner = meta.get("owner")
    shared = meta.get("shared") or []
    return viewer is None or owner is None or owner == viewer or viewer in shared or "*" in shared


def _shared_list(raw: str | None) -> list[str]:
    try:
        value = json.loads(raw or "[]")
    except ValueError:
        return []
    return sorted({u for u in value if isinstance(u, str)}) if isinstance(value, list) else []


def _meta_of(row: Row) -> dict:
    """A row's metadata as users see it: the stored JSON plus owner and shared from their columns."""
    try:
        meta = json.loads(row.meta)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        meta = {"error": f"unreadable metadata: {clip(exc, 120)}"}
    shared = _shared_list(row.shared)
    if row.owner is not None:
        meta["owner"] = row.owner
    if row.owner is not None or shared:
        meta["shared"] = shared
    return meta


def _jsonable(value: object) -> object:
    if hasattr(value, "tolist"):  # numpy scalars and arrays, tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _refuse_other_owner(row: Row | None, name: str, owner: str | None) -> None:
    if owner is not None and row is not None and row.owner != owner:
        raise InputError(f"vector {name!r} belongs to another user; choose another name")


class _Records:
    """The vectors' rows and tensors of one studio (its database and storage); each method is one transaction."""

    def __init__(self, settings: Settings) -> None:
        from studio.storage import storage_for

        self.settings = settings
        self.db = Database.for_settings(settings)
        self.storage: Storage = storage_for(settings)

    @staticmethod
    def _where(backend: str, weights16: str, name: str) -> Any:
        return (vectors.c.backend == backend) & (vectors.c.weights == weights16) & (vectors.c.name == name)

    @retrying
    def row(self, backend: str, weights16: str, name: str) -> Row | None:
        with self.db.read() as conn:
            return conn.execute(select(vectors).where(self._where(backend, weights16, name))).first()

    @retrying
    def rows(self, backend: str | None = None, weights16: str | None = None) -> list[Row]:
        query = select(vectors).order_by(vectors.c.backend, vectors.c.weights, vectors.c.name)
        if backend is not None:
            query = query.where(vectors.c.backend == backend)
        if weights16 is not None:
            query = query.where(vectors.c.weights == weights16)
        with self.db.read() as conn:
            return list(conn.execute(query).all())

    @retrying
    def save(self, backend: str, weights16: str, name: str, data: bytes, meta_text: str, owner: str | None,
             shared: list[str], created: float) -> str:
        folder, file = storage_key(backend, weights16, name).rsplit("/", 1)
        key = f"{folder}/{hashlib.sha256(data).hexdigest()[:12]}/{file}"  # new bytes, new key: the old stay readable
        with self.db.write() as conn:
            self.db.lock(conn, f"vector:{folder}/{file}")  # the ownership check and the replacement are one step
            row = conn.execute(select(vectors).where(self._where(backend, weights16, name))
                               .with_for_update()).first()
            _refuse_other_owner(row, name, owner)
            self.storage.put(key, data)  # until the row names it, readers keep loading the old tensor
            self.db.upsert(conn, vectors, {"backend": backend, "weights": weights16, "name": name, "owner": owner,
                                           "shared": json.dumps(shared), "meta": meta_text, "key": key,
                                           "created": created}, ["backend", "weights", "name"])
        if row is not None and row.key != key:
            with contextlib.suppress(StudioError):  # left behind, it is only an unread object
                self.storage.delete(row.key)
        return key

    @retrying
    def share(self, backend: str, weights16: str, name: str, users: list[str], viewer: str | None) -> dict:
        with self.db.write() as conn:
            where = self._where(backend, weights16, name)
            row = conn.execute(select(vectors).where(where).with_for_update()).first()
            if row is None or not visible(_meta_of(row), viewer):
                raise NotFound(f"no vector {name!r} for backend {backend!r} with weights {weights16}")
            if viewer is not None and row.owner != viewer:
                raise NotFound(f"no vector {name!r} of yours for backend {backend!r}: only its owner can share it")
            shared = sorted(set(_shared_list(row.shared)) | set(users))
            conn.execute(update(vectors).where(where).values(shared=json.dumps(shared)))
            row = conn.execute(select(vectors).where(where)).first()
        return _meta_of(row)

    @retrying
    def imported(self, marker: str) -> bool:
        with self.db.read() as conn:
            return conn.execute(select(studio_meta.c.value).where(studio_meta.c.key == marker)).first() is not None

    @retrying
    def import_legacy(self, root: Path, marker: str) -> int:
        """Copy every readable legacy vector under `root` that the records lack; mark `root` done. How many."""
        count = 0
        with self.db.write() as conn:
            self.db.lock(conn, marker)
            if conn.execute(select(studio_meta.c.key).where(studio_meta.c.key == marker)).first() is None:
                for item in _legacy_vectors(root):
                    if self._import_one(conn, item):
                        count += 1
                self.db.upsert(conn, studio_meta, {"key": marker, "value": str(root)}, ["key"])
        return count

    def _import_one(self, conn: Connection, item: dict) -> bool:
        backend, weights16, name = item["backend"], item["weights"], item["name"]
        key = storage_key(backend, weights16, name)
        self.db.lock(conn, f"vector:{key}")
        if conn.execute(select(vectors.c.name).where(self._where(backend, weights16, name))).first() is not None:
            return False  # saved since (here or elsewhere): the records win
        self.storage.put(key, item["data"])
        self.db.upsert(conn, vectors, {"backend": backend, "weights": weights16, "name": name, "owner": item["owner"],
                                       "shared": json.dumps(item["shared"]), "meta": item["meta"], "key": key,
                                       "created": item["created"]}, ["backend", "weights", "name"])
        return True


def _legacy_vectors(root: Path) -> list[dict]:
    """The readable vectors of the old layout under `root` (unreadable ones are logged and skipped)."""
    from studio.safetensors_io import load_tensors

    found = []
    for path in sorted(root.glob("*/*/*.safetensors")):
        backend, sha_dir, name = path.parent.parent.name, path.parent.name, path.stem
        if not (NAME_PATTERN.fullmatch(backend) and NAME_PATTERN.fullmatch(name)
                and re.fullmatch(r"[0-9a-f]{16}", sha_dir)):
            continue
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("space"), str):
                raise ValueError("its metadata names no space")
            tensors = load_tensors(path)
            if TENSOR_KEY not in tensors:
                raise ValueError(f"it holds no {TENSOR_KEY!r} tensor")
            data = path.read_bytes()
        except (OSError, ValueError, StudioError) as exc:
            log.warning("legacy vector %s not imported: %s", path, clip(exc, 160))
            continue
        owner = meta.pop("owner", None)
        shared = sorted({u for u in meta.pop("shared", None) or [] if isinstance(u, str)})
        meta.update(name=name, backend=backend, tensor_sha256=hashlib.sha256(data).hexdigest())
        meta.setdefault("sha256", sha_dir)
        meta.setdefault("shape", list(tensors[TENSOR_KEY].shape))
        try:
            created = datetime.fromisoformat(str(meta.get("created"))).timestamp()
        except ValueError:
            created = path.stat().st_mtime
        found.append({"backend": backend, "weights": sha_dir, "name": name, "data": data,
                      "owner": owner if isinstance(owner, str) else None, "shared": shared,
                      "meta": json.dumps(meta, sort_keys=True, default=_jsonable), "created": created})
    return found


def _records(settings: Settings) -> _Records:
    """This studio's vector records, after importing the old folder layout once (when it exists)."""
    records = _Records(settings)
    root = Path(settings.vectors_path)
    if root.is_dir():
        resolved = str(root.resolve())
        marker = "vectors_imported:" + hashlib.sha256(resolved.encode()).hexdigest()[:40]  # the key column is 64
        if not records.imported(marker):
            count = records.import_legacy(Path(resolved), marker)
            if count:
                log.info("imported %d legacy vectors from %s", count, resolved)
    return records


def check_can_save(settings: Settings, backend: str, weights_sha256: str, name: str, owner: str | None) -> None:
    """Raise InputError when `owner` may not save a vector as `name` for these weights: one of that name exists
    and belongs to someone else. Owner None (the single-user default, admins) may replace any."""
    check_name(name)
    weights16 = _weights(backend, weights_sha256)
    if owner is None:
        return
    _refuse_other_owner(_records(settings).row(backend, weights16, name), name, owner)


def save_vector(settings: Settings, backend: str, weights_sha256: str, name: str, vector: torch.Tensor,
                meta: dict, owner: str | None = None) -> str:
    """Store `vector` under `name` for these weights (replacing one of the same name: only `owner`'s own, unless
    `owner` is None; see check_can_save); return its storage key (`vectors/<backend>/<weights16>/<name>.safetensors`).
    `owner`: the user it belongs to (None: everyone's, the single-user default)."""
    from studio.safetensors_io import canonical_bytes

    check_name(name)
    weights16 = _weights(backend, weights_sha256)
    if not isinstance(meta, dict) or not isinstance(meta.get("space"), str) or not meta["space"]:
        raise InputError("vector metadata must name the latent space the vector lives in ('space')")
    shared = meta.get("shared") or []
    if not isinstance(shared, list) or not all(isinstance(u, str) for u in shared):
        raise InputError("vector metadata 'shared' must be a list of user names")
    tensor = vector.detach().to("cpu").float().contiguous()
    data = canonical_bytes({TENSOR_KEY: tensor}, {"space": meta["space"], "name": name})
    created = time.time()
    record = {k: v for k, v in meta.items() if k not in ("owner", "shared")}
    record.update(name=name, backend=backend, sha256=weights_sha256.lower(), shape=list(tensor.shape),
                  created=datetime.fromtimestamp(created, UTC).isoformat(timespec="seconds"),
                  tensor_sha256=hashlib.sha256(data).hexdigest())
    try:
        text = json.dumps(record, sort_keys=True, default=_jsonable)
    except (TypeError, ValueError) as exc:
        raise InputError(f"vector metadata is not JSON-serialisable: {exc}") from None
    return _records(settings).save(backend, weights16, name, data, text, owner, sorted(set(shared)), created)


def _not_found(records: _Records, backend: str, weights16: str, name: str, viewer: str | None) -> NotFound:
    known = ", ".join(r.name for r in records.rows(backend, weights16) if visible(_meta_of(r), viewer)) or "none"
    return NotFound(f"no vector {name!r} for backend {backend!r} with weights {weights16} (stored: {known})")


def _tensor_of(name: str, data: bytes) -> torch.Tensor:
    """The validated "vector" tensor of stored safetensors bytes; InputError (one line) when they are not that."""
    from studio.safetensors_io import CorruptWeights, load_tensors

    with tempfile.TemporaryDirectory(prefix="studio-vector-") as tmp:
        path = Path(tmp) / f"{name}.safetensors"
        path.write_bytes(data)
        try:
            tensors = load_tensors(path)
        except CorruptWeights as exc:
            raise InputError(f"stored vector {name!r} is unreadable: {exc}") from None
    if TENSOR_KEY not in tensors:
        raise InputError(f"stored vector {name!r} holds no {TENSOR_KEY!r} tensor")
    return tensors[TENSOR_KEY]


def load_vector(settings: Settings, backend: str, weights_sha256: str, name: str,
                viewer: str | None = None) -> tuple[torch.Tensor, dict]:
    """Load a stored vector and its metadata; NotFound names the vectors that exist for these weights (only those
    `viewer` sees: another user's unshared vector is not found). Stored bytes that are missing, not safetensors or
    not the ones recorded give InputError (one line)."""
    check_name(name)
    weights16 = _weights(backend, weights_sha256)
    records = _records(settings)
    for attempt in range(LOAD_ATTEMPTS):
        row = records.row(backend, weights16, name)
        meta = _meta_of(row) if row is not None else {}
        if row is None or not visible(meta, viewer):
            raise _not_found(records, backend, weights16, name, viewer)
        if "error" in meta:
            raise InputError(f"stored vector {name!r} is unreadable: its {meta['error']}")
        try:
            data = records.storage.get(row.key)
        except NotFound:
            raise InputError(f"stored vector {name!r} is unreadable: its tensor {row.key!r} is missing from "
                             f"storage {records.storage.url}") from None
        expected = meta.get("tensor_sha256")
        if expected is None or hashlib.sha256(data).hexdigest() == expected:
            return _tensor_of(name, data), meta
        if attempt < LOAD_ATTEMPTS - 1:
            time.sleep(0.2 * (attempt + 1))  # perhaps a re-save between our reads of the row and the bytes
    _tensor_of(name, data)  # a header fault, when there is one, says more than the digest
    raise InputError(f"stored vector {name!r} is corrupt: its bytes in storage ({row.key!r}) do not match the "
                     "sha256 recorded when it was saved; fit or save it again")


def share_vector(settings: Settings, backend: str, weights_sha256: str, name: str, users: list[str],
                 viewer: str | None = None) -> dict:
    """Share a vector with more users ("*": everyone); only its owner or an admin (viewer None) may."""
    check_name(name)
    weights16 = _weights(backend, weights_sha256)
    if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
        raise InputError("share a vector with a list of user names (or '*' for everyone)")
    return _records(settings).share(backend, weights16, name, users, viewer)


def list_vectors(settings: Settings, backend: str | None = None, viewer: str | None = None) -> list[dict]:
    """Metadata of every stored vector (of one backend if given) that `viewer` sees (None: all), sorted by backend,
    weights and name.

    Unreadable metadata is listed with an `error` entry instead of its fields.
    """
    if backend is not None:
        check_name(backend, "backend name")
    out = []
    for row in _records(settings).rows(backend):
        meta = _meta_of(row)
        if visible(meta, viewer):
            out.append({"name": row.name, "backend": row.backend, "sha256": row.weights, **meta})
    return out
