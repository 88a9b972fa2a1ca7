"""The train op: fresh weights trained by the backend's recipe, registered as a model every worker can use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from studio.errors import InputError, clip
from studio.spec import Name, OpSpec, Seed, checked_name

if TYPE_CHECKING:
    from studio.executor import JobContext

TRAIN_RECORD = "studio-train.json"  # in a trained model folder: its recipe, owner and metrics (a retry finds it)
RESERVED = frozenset({"dataset", "epochs", "out", "seed", "settings", "progress", "limit"})


class TrainSpec(OpSpec):
    """Train fresh weights and register them as model `name` of the backend (studio.modelstore); a backend that
    trains a folder (sd) gets it installed as `<first model root>/<backend>/<name>` on the machine that trained it.
    `options` are the backend's training options (e.g. batch_size), checked by its `train`."""

    op: Literal["train"] = "train"
    name: Name
    dataset: Name = "mnist"
    epochs: int = Field(default=1, ge=1, le=1000)
    seed: Seed = 0
    limit: int | None = Field(default=None, ge=1, le=10_000_000)  # only the first N training images

    backend_options: ClassVar[bool] = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return checked_name(v, "model")

    @model_validator(mode="after")
    def _fresh(self) -> TrainSpec:
        if self.model is not None:
            raise ValueError("a train job starts from fresh weights: give no model")
        reserved = sorted(set(self.options) & RESERVED)
        if reserved:
            raise ValueError(f"options: {', '.join(reserved)} are fields of the train job, not training options")
        return self

    def required_capabilities(self) -> set[str]:
        from studio.contract import TRAIN

        return {TRAIN}

    def run(self, job: JobContext) -> None:
        """Train into a temp file in the cache, then register it (studio.modelstore) under the name; an earlier
        attempt of this same job that already registered it is reported, not trained again."""
        import uuid

        from studio.modelstore import find_model, import_model
        from studio.registry import get_backend_class

        cls = get_backend_class(self.backend)
        recipe = {"dataset": self.dataset, "epochs": self.epochs, "seed": self.seed, "limit": self.limit,
                  "options": self.options}
        if cls.train_output == "folder":
            self._run_folder(job, cls, recipe)
            return
        taken = find_model(job.settings, self.backend, self.name)
        if taken is not None:
            if taken["meta"].get("train") == recipe and taken.get("owner") == job.owner:
                self._report(job, taken, taken["meta"].get("metrics", {}))
                return
            raise InputError(f"{self.backend} model name {self.name!r} is taken (sha256 {taken['sha256'][:12]}); "
                             f"choose another name or `studio models remove {self.name} --backend {self.backend}` "
                             f"first")
        folder = job.settings.cache_path / "train"
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"{self.name}-{uuid.uuid4().hex[:12]}.safetensors"
        try:
            scalars = self._train(job, cls, out)
            row = import_model(job.settings, self.backend, out, self.name, owner=job.owner, source="train job",
                               meta={"train": recipe, "metrics": scalars})
        finally:
            out.unlink(missing_ok=True)
        self._report(job, row, scalars)

    def _train(self, job: JobContext, cls: type, out: Path) -> dict:
        """Run the backend's recipe into `out`; returns its scalar metrics (never "out": results reveal no folders)."""
        kwargs = {**self.options, **({"limit": self.limit} if self.limit is not None else {})}
        try:
            metrics = cls.train(self.dataset, self.epochs, str(out), self.seed, job.settings,
                                progress=job.sub_progress("training"), **kwargs)
        except TypeError as exc:  # a training option the backend's recipe does not take
            if "keyword argument" not in str(exc):
                raise
            raise InputError(f"invalid training options for {self.backend}: {clip(exc, 160)}") from None
        return {k: v for k, v in (metrics or {}).items()
                if k != "out" and isinstance(v, (str, int, float, bool, type(None)))}

    def _run_folder(self, job: JobContext, cls: type, recipe: dict) -> None:
        """A backend that trains a folder (sd's diffusers pipeline): train into the cache, then move the folder to
        `<first model root>/<backend>/<name>`, where the backend lists it (renamed into place whole).
        An earlier attempt of this same job that installed it is reported, not trained again."""
        import shutil
        import uuid

        target = job.settings.model_root_paths[0] / cls.name / self.name
        done = self._installed(target, recipe, job.owner)
        if done is not None:
            self._report(job, self._folder_row(job, cls, target), done)
            return
        if target.exists() or any(m.name == self.name for m in cls.available_models(job.settings)):
            raise InputError(f"{self.backend} model name {self.name!r} is taken; choose another name")
        out = job.settings.cache_path / "train" / f"{self.name}-{uuid.uuid4().hex[:12]}"
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".partial-{uuid.uuid4().hex[:12]}"
        try:
            scalars = self._train(job, cls, out)
            (out / TRAIN_RECORD).write_text(json.dumps({"train": recipe, "owner": job.owner, "metrics": scalars}))
            # copied one level down (the backend lists only the folders directly in its root), then renamed into
            # place in one step: a listing never sees half a model
            shutil.copytree(out, staging / self.name, symlinks=False)
            (staging / self.name).rename(target)
        finally:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
        self._report(job, self._folder_row(job, cls, target), scalars)

    @staticmethod
    def _installed(target: Path, recipe: dict, owner: str | None) -> dict | None:
        """The metrics of the model at `target` when this recipe and owner trained it (a retried job), else None."""
        try:
            record = json.loads((target / TRAIN_RECORD).read_text())
        except (OSError, ValueError):
            return None
        same = record.get("train") == recipe and record.get("owner") == owner
        return record.get("metrics", {}) if same else None

    def _folder_row(self, job: JobContext, cls: type, target: Path) -> dict:
        info = next((m for m in cls.available_models(job.settings) if m.name == self.name), None)
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        return {"name": self.name, "backend": self.backend, "sha256": info.sha256 if info else "", "size": size}

    @staticmethod
    def _report(job: JobContext, row: dict, metrics: dict) -> None:
        summary = {"name": row["name"], "backend": row["backend"], "sha256": row["sha256"], "size": row["size"],
                   "metrics": metrics}
        job.result.metrics.update(summary)
        job.result.add_json("model.json", summary)
