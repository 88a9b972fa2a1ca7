"""The artifact store: every job's output files in storage (studio.storage: a local folder or S3).

A worker uploads an attempt's files under a prefix of their own, `jobs/<id>/<attempt>/`, then commits the manifest
(names, kinds, keys, sizes) in the lease-checked transaction that ends the job (JobStore.finish_many). Only the holder
of the job's live lease can commit, so a job has exactly one set of artifacts however often it was attempted; an
attempt whose lease was lost, or whose upload died half-way, leaves only an uncommitted prefix that no record names,
and `collect_orphans` removes those later. Readers (the CLI, the client, the UI) read bytes from storage by the keys
the record names, on any machine; nobody reads another machine's folder. PNGs carry their reproducibility record.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from studio.errors import InputError, NotFound
from studio.storage import LocalStorage, Storage, storage_for

if TYPE_CHECKING:
    from studio.config import Settings
    from studio.executor import JobResult
    from studio.queue.jobstore import JobStore

UPLOAD_THREADS = 8  # a remote store's uploads of one result at once
ORPHAN_AFTER_S = 3600.0  # an uncommitted attempt prefix older than this is an orphan (no live attempt runs longer)


class ArtifactStore:
    """Files of finished jobs in `storage`; the job store's records list them. `cache` holds local copies that
    callers asked for as files (`path`)."""

    def __init__(self, storage: Storage, cache: str | Path) -> None:
        self.storage = storage
        self.cache = Path(cache)

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        return cls(storage_for(settings), settings.cache_path / "artifacts")

    def stage(self, job_id: str, result: JobResult) -> tuple[str, list[dict]]:
        """Upload a result's files under a new attempt prefix; returns the prefix and the manifest to commit."""
        prefix = f"jobs/{job_id}/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        listed = [{"name": a.name, "kind": a.kind, "key": f"{prefix}/{a.name}", "size": len(a.data)}
                  for a in result.artifacts]
        uploads = [(entry["key"], artifact.data) for entry, artifact in zip(listed, result.artifacts, strict=True)]
        if len(uploads) > 1 and not isinstance(self.storage, LocalStorage):  # round trips: several at once
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(uploads))) as pool:
                for future in [pool.submit(self.storage.put, key, data) for key, data in uploads]:
                    future.result()
        else:
            for key, data in uploads:
                self.storage.put(key, data)
        return prefix, listed

    def discard(self, prefix: str) -> None:
        """Remove an attempt's uploads that were not committed (a lost lease)."""
        self.storage.delete_prefix(prefix + "/")

    def _artifact(self, job: dict, name: str) -> dict:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise InputError(f"{name!r} is not an artifact name")
        for a in job.get("artifacts", []):
            if a["name"] == name:
                return a
        names = ", ".join(a["name"] for a in job.get("artifacts", [])) or "none"
        raise NotFound(f"job {job['id']} has no artifact {name!r} (artifacts: {names})")

    def read(self, job: dict, name: str) -> bytes:
        """The bytes of artifact `name` of a job record."""
        a = self._artifact(job, name)
        try:
            return self.storage.get(a["key"])
        except NotFound:
            raise NotFound(f"artifact {name!r} of job {job['id']} is listed but missing from storage "
                           f"{self.storage.url}") from None

    def path(self, job: dict, name: str) -> Path:
        """A local file holding artifact `name` (downloaded into the cache once; artifacts never change)."""
        a = self._artifact(job, name)
        target = self.cache / job["id"] / a["key"].rsplit("/", 2)[-2] / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.storage.get_file(a["key"], target)
            except NotFound:
                raise NotFound(f"artifact {name!r} of job {job['id']} is listed but missing from storage "
                               f"{self.storage.url}") from None
        return target

    def url(self, job: dict, name: str, expires_s: int = 3600) -> str | None:
        """A presigned URL the browser can fetch artifact `name` from (S3), or None (a local folder)."""
        return self.storage.presigned_url(self._artifact(job, name)["key"], expires_s)

    def copy_out(self, job: dict, out: str | Path) -> list[Path]:
        """Download every artifact of a job into `out` (created if needed); returns the new paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        copied = []
        for a in job.get("artifacts", []):
            target = out / a["name"]
            try:
                self.storage.get_file(a["key"], target)
            except NotFound:
                raise NotFound(f"artifact {a['name']!r} of job {job['id']} is listed but missing from storage "
                               f"{self.storage.url}") from None
            copied.append(target)
        return copied

    def collect_orphans(self, store: JobStore, older_than_s: float = ORPHAN_AFTER_S) -> int:
        """Remove uploads under `jobs/` that no committed manifest names and that are older than `older_than_s`
        (attempts whose lease was lost or whose worker died mid-upload); returns how many objects went."""
        cutoff = time.time() - older_than_s
        by_prefix: dict[str, list[tuple[str, float]]] = {}
        for key, modified in self.storage.list("jobs/"):
            parts = key.split("/")
            if len(parts) == 4:  # jobs/<id>/<attempt>/<name>; older layouts (jobs/<id>/<name>) are committed ones
                by_prefix.setdefault("/".join(parts[:3]), []).append((key, modified))
        if not by_prefix:
            return 0
        committed = store.committed_prefixes(sorted({p.split("/")[1] for p in by_prefix}))
        removed = 0
        for prefix, objects in by_prefix.items():
            job_id = prefix.split("/")[1]
            if prefix in committed.get(job_id, set()) or max(m for _, m in objects) >= cutoff:
                continue
            for key, _ in objects:
                self.storage.delete(key)
                removed += 1
        return removed


__all__ = ["ORPHAN_AFTER_S", "ArtifactStore"]
