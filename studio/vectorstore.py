"""Named attribute vectors on disk, keyed by backend and weights.

Layout: `<settings.vectors_path>/<backend>/<weights sha256[:16]>/<name>.safetensors` holds the tensor
(key "vector"); `<name>.json` beside it holds the metadata: at least `space` (the latent space the vector
lives in), plus what the fit reported (method, attribute, auc, ...) and name, backend, sha256, shape,
created. A vector belongs to one set of weights: another model of the same backend does not see it.

Users: a vector saved with an `owner` is seen (listed, loaded) only by its owner, by the users it is shared with
(`shared`, a list of names; "*" means everyone) and by admins (viewer None). A vector with no owner (the
single-user default) is seen by everyone. A user saves only over their own vectors: a name already used by a
vector of another owner (or an ownerless one) is refused; owner None (single-user, admins) saves over any.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from studio.errors import InputError, NotFound
from studio.files import atomic_write

if TYPE_CHECKING:
    import torch

    from studio.config import Settings

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SHA_PATTERN = re.compile(r"[0-9a-fA-F]{16,64}")
TENSOR_KEY = "vector"


def check_name(name: str, what: str = "vector name") -> str:
    """Return `name` if it is a safe file name stem, else raise InputError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InputError(f"{what} {name!r} is invalid: use 1-64 letters, digits, '_', '.', '-', "
                         "starting with a letter or digit")
    return name


def _dir(settings: Settings, backend: str, weights_sha256: str) -> Path:
    check_name(backend, "backend name")
    if not isinstance(weights_sha256, str) or not SHA_PATTERN.fullmatch(weights_sha256):
        raise InputError(f"weights sha256 {weights_sha256!r} is not a hex digest")
    return Path(settings.vectors_path) / backend / weights_sha256[:16].lower()


def visible(meta: dict, viewer: str | None) -> bool:
    """Whether `viewer` (None: everything) sees a vector with this metadata."""
    owner = meta.get("owner")
    shared = meta.get("shared") or []
    return viewer is None or owner is None or owner == viewer or viewer in shared or "*" in shared


def check_can_save(settings: Settings, backend: str, weights_sha256: str, name: str, owner: str | None) -> None:
    """Raise InputError when `owner` may not save a vector as `name` for these weights: one of that name exists
    and belongs to someone else. Owner None (the single-user default, admins) may replace any."""
    check_name(name)
    meta_path = _dir(settings, backend, weights_sha256) / f"{name}.json"
    if owner is None or not meta_path.is_file():
        return
    if _meta(meta_path).get("owner") != owner:
        raise InputError(f"vector {name!r} belongs to another user; choose another name")


def save_vector(settings: Settings, backend: str, weights_sha256: str, name: str, vector: torch.Tensor,
                meta: dict, owner: str | None = None) -> Path:
    """Store `vector` under `name` for these weights (replacing one of the same name: only `owner`'s own, unless
    `owner` is None; see check_can_save); return its path.
    `owner`: the user it belongs to (None: everyone's, the single-user default)."""
    from safetensors.torch import save

    check_can_save(settings, backend, weights_sha256, name, owner)
    if not isinstance(meta, dict) or not isinstance(meta.get("space"), str) or not meta["space"]:
        raise InputError("vector metadata must name the latent space the vector lives in ('space')")
    folder = _dir(settings, backend, weights_sha256)
    record = {**meta, "name": name, "backend": backend, "sha256": weights_sha256.lower(),
              "shape": list(vector.shape), "created": datetime.now(UTC).isoformat(timespec="seconds")}
    if owner is not None:
        record.update(owner=owner, shared=sorted(set(meta.get("shared") or [])))
    try:
        text = json.dumps(record, indent=2, sort_keys=True, default=_jsonable)
    except TypeError as exc:
        raise InputError(f"vector metadata is not JSON-serialisable: {exc}") from None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    tensor = vector.detach().to("cpu").float().contiguous()
    atomic_write(path, save({TENSOR_KEY: tensor}, metadata={"space": meta["space"], "name": name}))
    atomic_write(folder / f"{name}.json", text.encode())
    return path


def _jsonable(value: object) -> object:
    if hasattr(value, "tolist"):  # numpy scalars and arrays, tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _names(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.safetensors") if (folder / f"{p.stem}.json").is_file())


def load_vector(settings: Settings, backend: str, weights_sha256: str, name: str,
                viewer: str | None = None) -> tuple[torch.Tensor, dict]:
    """Load a stored vector and its metadata; NotFound names the vectors that exist for these weights (only those
    `viewer` sees: another user's unshared vector is not found)."""
    from studio.safetensors_io import CorruptWeights, load_tensors

    check_name(name)
    folder = _dir(settings, backend, weights_sha256)
    path, meta_path = folder / f"{name}.safetensors", folder / f"{name}.json"
    if not (path.is_file() and meta_path.is_file()) or not visible(_meta(meta_path), viewer):
        known = ", ".join(n for n in _names(folder) if visible(_meta(folder / f"{n}.json"), viewer)) or "none"
        raise NotFound(f"no vector {name!r} for backend {backend!r} with weights {weights_sha256[:16]} "
                       f"(stored: {known})")
    try:
        tensors = load_tensors(path)
        meta = json.loads(meta_path.read_text())
    except CorruptWeights as exc:
        raise InputError(f"stored vector {name!r} is unreadable: {exc}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"stored vector {name!r} is unreadable ({path}): {type(exc).__name__}") from None
    if TENSOR_KEY not in tensors:
        raise InputError(f"stored vector {name!r} holds no {TENSOR_KEY!r} tensor ({path})")
    return tensors[TENSOR_KEY], meta


def _meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def share_vector(settings: Settings, backend: str, weights_sha256: str, name: str, users: list[str],
                 viewer: str | None = None) -> dict:
    """Share a vector with more users ("*": everyone); only its owner or an admin (viewer None) may."""
    check_name(name)
    meta_path = _dir(settings, backend, weights_sha256) / f"{name}.json"
    meta = _meta(meta_path)
    if not meta or not visible(meta, viewer):
        raise NotFound(f"no vector {name!r} for backend {backend!r} with weights {weights_sha256[:16]}")
    if viewer is not None and meta.get("owner") != viewer:
        raise NotFound(f"no vector {name!r} of yours for backend {backend!r}: only its owner can share it")
    meta["shared"] = sorted(set(meta.get("shared") or []) | set(users))
    atomic_write(meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())
    return meta


def list_vectors(settings: Settings, backend: str | None = None, viewer: str | None = None) -> list[dict]:
    """Metadata of every stored vector (of one backend if given) that `viewer` sees (None: all), sorted by backend,
    weights and name.

    An unreadable metadata file is listed with an `error` entry instead of its fields.
    """
    root = Path(settings.vectors_path)
    if backend is not None:
        check_name(backend, "backend name")
    backends = [root / backend] if backend is not None else sorted(p for p in root.glob("*") if p.is_dir())
    out = []
    for backend_dir in backends:
        for sha_dir in sorted(p for p in backend_dir.glob("*") if p.is_dir()):
            for name in _names(sha_dir):
                try:
                    meta = json.loads((sha_dir / f"{name}.json").read_text())
                except (OSError, ValueError) as exc:
                    meta = {"error": f"unreadable metadata: {exc}"}
                if visible(meta, viewer):
                    out.append({"name": name, "backend": backend_dir.name, "sha256": sha_dir.name, **meta})
    return out
