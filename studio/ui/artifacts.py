"""The only files the UI serves: copies of finished jobs' artifacts, by job id and name.

Gradio serves every file under its `allowed_paths`. The UI never serves (or reads) a path of the store: results
live in storage (a local folder that also holds the embedded job database, or S3), so the store folder is a blocked
path. Instead the UI streams an artifact it shows from storage, by the key its job record names, into
`<STUDIO_HOME>/cache/ui-artifacts/<job id>/<name>`, a folder that holds nothing else, and only that folder is allowed.
A copy is made only for a valid job id and artifact name (no separator, no `..`, no hidden name).

A copy's folder is `<job id>-<tag>`, where the tag is an HMAC of the job id under a key kept beside (never
inside) the served folder: knowing another user's job id is not enough to fetch its images by URL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from studio.config import Settings

JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
KEEP_JOBS = 1000  # job folders of copies kept; older ones are removed when a new job is shown


def shelf_root(settings: Settings) -> Path:
    """The folder the UI serves artifacts from (never inside the store)."""
    root = (settings.cache_path / "ui-artifacts").expanduser().resolve()
    store = Path(settings.store_path).expanduser().resolve()
    if root == store or store in root.parents:  # a cache inside the store would be blocked: keep them apart
        root = Path(tempfile.gettempdir()).resolve() / f"latent-studio-ui-artifacts-{os.getuid()}"
    return root


def valid_ref(job_id: object, name: object) -> bool:
    """True when `job_id` and `name` can name an artifact (no separators, dots first or odd characters)."""
    return (isinstance(job_id, str) and JOB_ID.fullmatch(job_id) is not None
            and isinstance(name, str) and NAME.fullmatch(name) is not None and ".." not in name)


class ArtifactShelf:
    """Copies of artifact files, laid out `<root>/<job id>/<name>`; `put` makes one and returns its path."""

    def __init__(self, root: str | Path, keep_jobs: int = KEEP_JOBS) -> None:
        self.keep_jobs = max(1, int(keep_jobs))
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        self._key = _shelf_key(self.root.parent / f".{self.root.name}.key")

    def folder_name(self, job_id: str) -> str:
        """The served folder of a job's copies: its id plus a tag only this shelf's key can make."""
        tag = hmac.new(self._key, job_id.encode(), hashlib.sha256).hexdigest()[:24]
        return f"{job_id}-{tag}"

    @classmethod
    def for_settings(cls, settings: Settings) -> ArtifactShelf:
        return cls(shelf_root(settings))

    def put(self, job_id: str, name: str, read: Callable[[], bytes], size: int | None = None) -> str | None:
        """The served copy of artifact `name` of job `job_id`, written once from `read()` (its bytes from storage);
        None when the pair is not a valid artifact reference. `size` (from the record) skips the read when a copy of
        that size is already there."""
        if not valid_ref(job_id, name):
            return None
        target = self.root / self.folder_name(job_id) / name
        if target.is_file() and not target.is_symlink() and (size is None or target.stat().st_size == size):
            return str(target)
        data = read()
        if not target.parent.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            self.prune()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".copy-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(target)

    def prune(self) -> None:
        """Keep the copies of the `keep_jobs` most recently shown jobs (the page keeps its own copies of what it
        shows, and the store keeps every artifact)."""
        folders = [f for f in self.root.iterdir() if f.is_dir() and not f.is_symlink()]
        if len(folders) <= self.keep_jobs:
            return
        folders.sort(key=lambda f: f.stat().st_mtime)
        for folder in folders[:len(folders) - self.keep_jobs]:
            shutil.rmtree(folder, ignore_errors=True)


def _shelf_key(path: Path) -> bytes:
    """The shelf's secret key (made once, readable by this user only), outside the served folder."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    key = secrets.token_bytes(32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
    with os.fdopen(fd, "w") as out:
        out.write(key.hex())
    try:
        os.link(tmp, path)  # first writer wins; a racing writer reads the winner's key
    except FileExistsError:
        key = bytes.fromhex(path.read_text().strip())
    finally:
        os.unlink(tmp)
    return key


__all__ = ["ArtifactShelf", "shelf_root", "valid_ref"]
