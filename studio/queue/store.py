"""The artifact store: every job's outputs under `<store>/jobs/<id>/` (STUDIO_STORE_DIR, default STUDIO_HOME/store).

A worker writes a job's files into a hidden staging folder, records the job as finished in the job store
(which only the lease holder can do), and then renames the folder into place. So a job has at most one
set of artifacts, however often it was attempted. PNGs carry their reproducibility record.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from studio.errors import InputError, NotFound

if TYPE_CHECKING:
    from studio.config import Settings
    from studio.executor import JobResult


RECOVER_AFTER_S = 10.0


class ArtifactStore:
    """Files of finished jobs; the job store's history index lists them."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.jobs_root = self.root / "jobs"
        self.jobs_root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        return cls(settings.store_path)

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_root / job_id

    def stage(self, job_id: str, result: JobResult) -> tuple[str, list[dict]]:
        """Write a result's files to a new staging folder; returns its name and the artifact list (final paths)."""
        staging = f".{job_id}.{uuid.uuid4().hex[:12]}.part"
        folder = self.jobs_root / staging
        folder.mkdir(parents=True)
        final = self.job_dir(job_id)
        listed = []
        for artifact in result.artifacts:  # a private folder: plain writes, the folder's rename publishes them
            (folder / artifact.name).write_bytes(artifact.data)
            listed.append({"name": artifact.name, "kind": artifact.kind, "path": str(final / artifact.name),
                           "size": len(artifact.data)})
        return staging, listed

    def publish(self, job_id: str, staging: str) -> Path:
        """Move a staged result into place (after the job store accepted it)."""
        final = self.job_dir(job_id)
        try:
            (self.jobs_root / staging).rename(final)
        except FileNotFoundError:
            if not final.is_dir():  # else a reader's recover() moved it first: same files, already in place
                raise
        return final

    def discard(self, staging: str) -> None:
        shutil.rmtree(self.jobs_root / staging, ignore_errors=True)

    def recover(self, job: dict, grace_s: float = RECOVER_AFTER_S) -> None:
        """Finish the rename of a SUCCEEDED job whose worker stopped between recording and renaming
        (only once the worker had `grace_s` seconds to do it itself)."""
        staging = job.get("staging")
        if job.get("state") == "SUCCEEDED" and staging and not self.job_dir(job["id"]).exists() \
                and (job.get("finished") or 0) < time.time() - grace_s and (self.jobs_root / staging).is_dir():
            with contextlib.suppress(FileNotFoundError):
                self.publish(job["id"], staging)

    def path(self, job: dict, name: str) -> Path:
        """The file of artifact `name` of a job record."""
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise InputError(f"{name!r} is not an artifact name")
        self.recover(job)
        for a in job.get("artifacts", []):
            if a["name"] == name:
                path = self.job_dir(job["id"]) / name
                if not path.is_file():
                    self.recover(job, grace_s=0)  # asked for the file itself: do not wait for the worker
                if not path.is_file():
                    raise NotFound(f"artifact {name!r} of job {job['id']} is listed but missing from the store "
                                   f"({path})")
                return path
        names = ", ".join(a["name"] for a in job.get("artifacts", [])) or "none"
        raise NotFound(f"job {job['id']} has no artifact {name!r} (artifacts: {names})")

    def copy_out(self, job: dict, out: str | Path) -> list[Path]:
        """Copy every artifact of a job into `out` (created if needed); returns the new paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        copied = []
        for a in job.get("artifacts", []):
            target = out / a["name"]
            shutil.copyfile(self.path(job, a["name"]), target)
            copied.append(target)
        return copied


__all__ = ["ArtifactStore"]
