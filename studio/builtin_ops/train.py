"""The train op: fresh weights trained by the backend's recipe, registered as a model every worker can use."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from studio.errors import InputError, clip
from studio.spec import Name, OpSpec, Seed, checked_name

if TYPE_CHECKING:
    from studio.executor import JobContext

RESERVED = frozenset({"dataset", "epochs", "out", "seed", "settings", "progress", "limit"})


class TrainSpec(OpSpec):
    """Train fresh weights and register them as model `name` of the backend (studio.modelstore).
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
        if cls.train_output != "file":
            raise InputError(f"backend {self.backend!r} trains a {cls.train_output}, which the train job cannot "
                             f"register yet; run `studio train {self.backend} --out DIR` and put DIR in a model root")
        recipe = {"dataset": self.dataset, "epochs": self.epochs, "seed": self.seed, "limit": self.limit,
                  "options": self.options}
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
        kwargs = {**self.options, **({"limit": self.limit} if self.limit is not None else {})}
        try:
            try:
                metrics = cls.train(
                    self.dataset, self.epochs, str(out), self.seed, job.settings,
                    progress=job.sub_progress("training"), **kwargs)
            except TypeError as exc:  # a training option the backend's recipe does not take
                if "keyword argument" not in str(exc):
                    raise
                raise InputError(f"invalid training options for {self.backend}: {clip(exc, 160)}") from None
            scalars = {k: v for k, v in (metrics or {}).items()  # not "out": results never reveal a machine's folders
                       if k != "out" and isinstance(v, (str, int, float, bool, type(None)))}
            row = import_model(job.settings, self.backend, out, self.name, owner=job.owner, source="train job",
                               meta={"train": recipe, "metrics": scalars})
        finally:
            out.unlink(missing_ok=True)
        self._report(job, row, scalars)

    @staticmethod
    def _report(job: JobContext, row: dict, metrics: dict) -> None:
        summary = {"name": row["name"], "backend": row["backend"], "sha256": row["sha256"], "size": row["size"],
                   "metrics": metrics}
        job.result.metrics.update(summary)
        job.result.add_json("model.json", summary)
