"""sha256 of weight files, cached by path, modification time and size, in memory and optionally on disk
(`cache_dir`), so a multi-GB checkpoint is hashed once per change, not once per process."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

CACHE_FILE = "sha256-cache.json"
_memory: dict[str, dict] = {}
_lock = threading.Lock()


def digest_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (no cache: see file_sha256 for the cached one)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_disk(cache_file: Path) -> dict:
    try:
        return json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def file_sha256(path: str | Path, cache_dir: Path | None = None) -> str:
    """The sha256 hex digest of a file's bytes."""
    real = Path(path).resolve()
    st = real.stat()
    key = str(real)

    def fresh(entry: dict | None) -> bool:
        return bool(entry) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns

    with _lock:
        if fresh(_memory.get(key)):
            return _memory[key]["sha256"]
        cache_file = cache_dir / CACHE_FILE if cache_dir else None
        disk = _read_disk(cache_file) if cache_file and cache_file.is_file() else {}
        if fresh(disk.get(key)):
            _memory[key] = disk[key]
            return disk[key]["sha256"]
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest_file(real)}
        _memory[key] = entry
        if cache_file:
            disk[key] = entry
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(disk, sort_keys=True))
            os.replace(tmp, cache_file)
        return entry["sha256"]
