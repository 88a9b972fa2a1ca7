"""Ops that study a latent space: fit a vector, evaluate samples, project a dataset, rank anomalies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from studio.builtin_ops.ood_check import check_folder
from studio.errors import InputError
from studio.spec import MAX_LIST, Name, OpSpec, Seed, checked_name

if TYPE_CHECKING:
    from studio.executor import JobContext


class FitVectorSpec(OpSpec):
    """Fit and save an attribute vector: from a labelled dataset, from picked seeds, or a text direction."""

    op: Literal["fit_vector"] = "fit_vector"
    name: Name
    method: Literal["mean", "balanced", "classifier"] = "classifier"
    dataset: Name | None = None
    attribute: Name | None = None
    limit: int = Field(default=10000, ge=10)
    with_seeds: list[Seed] | None = Field(default=None, max_length=MAX_LIST)
    without_seeds: list[Seed] | None = Field(default=None, max_length=MAX_LIST)
    with_options: dict[str, Any] | None = None  # text directions: condition(with) - condition(without)
    without_options: dict[str, Any] | None = None
    seed: Seed = 0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return checked_name(v, "vector")

    @model_validator(mode="after")
    def _one_kind(self) -> FitVectorSpec:
        kinds = [self.dataset is not None, self.with_seeds is not None, self.with_options is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of: dataset + attribute, with_seeds + without_seeds, "
                             "with_options + without_options")
        if self.dataset is not None and not self.attribute:
            raise ValueError("a dataset vector needs an attribute (class:7, class:3-vs-8, thickness, slant)")
        if self.with_seeds is not None and not (self.with_seeds and self.without_seeds):
            raise ValueError("picked examples need at least one seed with and one without the attribute")
        if self.with_options is not None and self.without_options is None:
            raise ValueError("a text direction needs with_options and without_options")
        return self

    def option_sets(self) -> list[dict[str, Any]]:
        return [{**self.options, **extra} for extra in (self.with_options, self.without_options) if extra is not None]

    def required_capabilities(self) -> set[str]:
        from studio.contract import ENCODE, SAMPLE, TEXT

        return {ENCODE if self.dataset is not None else SAMPLE if self.with_seeds is not None else TEXT}

    def run(self, job: JobContext) -> None:
        from studio.ops.vectors import fit_attribute_vector, fit_example_vector
        from studio.vectorstore import check_can_save, save_vector

        backend = job.backend
        check_can_save(job.settings, backend.name, backend.model.sha256, self.name, job.owner)  # before the fit
        if self.dataset is not None:
            vector, meta = fit_attribute_vector(backend, self.dataset, self.attribute, self.method, job.settings,
                                                limit=self.limit, seed=self.seed, progress=job.sub_progress("fitting"))
        elif self.with_seeds is not None:
            vector, meta = fit_example_vector(backend, self.with_seeds, self.without_seeds, method="mean",
                                              options=job.options)
        else:
            w = backend.parse_options({**self.options, **self.with_options})
            wo = backend.parse_options({**self.options, **self.without_options})
            cw, cwo = backend.condition(1, w), backend.condition(1, wo)
            if not cw:
                raise InputError(f"backend {backend.name!r} has no condition space: text directions need prompts")
            space = next(iter(cw))
            vector = (cw[space] - cwo[space])[0]
            meta = {"space": space, "method": "text", "with": self.with_options, "without": self.without_options}
        meta = {**meta, "name": self.name, "backend": backend.name, "model": backend.model.name}
        path = save_vector(job.settings, backend.name, backend.model.sha256, self.name, vector, meta, owner=job.owner)
        metrics = job.result.metrics
        metrics.update({k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))})
        metrics["path"] = job.store_relative(path)  # never the store's absolute location
        check_folder(job, self.dataset, "train", self.limit)
        job.result.add_json("vector.json", metrics)


class EvaluateSpec(OpSpec):
    """Sample quality against a dataset, in the features of the project's classifier for that dataset, and the
    latent space's regularity: perceptual path length and linear separability (studio.regularity)."""

    op: Literal["evaluate"] = "evaluate"
    dataset: Name = "mnist"
    n: int = Field(default=2000, ge=10, le=20000)
    repeats: int = Field(default=5, ge=1, le=20)
    seed: Seed = 0
    quality: bool = Field(default=True, description="FCD, KID and confident share (needs 1x28x28 images)")
    ppl_pairs: int | None = Field(default=None, ge=0, le=20000,
                                  description="pairs for the perceptual path length (default min(1000, n); 0: skip)")
    ppl_eps: float = Field(default=1e-4, gt=0, le=0.1, description="step of the path length")
    separability_n: int | None = Field(default=None, ge=0, le=20000,
                                       description="latents for the linear separability (default min(4000, 2n); "
                                                   "0: skip)")
    separability_labels: Literal["auto", "dataset", "samples"] = Field(
        default="auto", description="encoded test images with their labels, or prior samples labelled by the "
                                    "classifier (auto: dataset when encoding is cheap and lands in the seed space)")

    @model_validator(mode="after")
    def _fits_the_training_set(self) -> EvaluateSpec:
        if self.quality and self.n * self.repeats > 60000:
            raise ValueError(f"n x repeats must be at most 60000 (disjoint training subsets), "
                             f"got {self.n} x {self.repeats}")
        if not self.quality and self.ppl_pairs == 0 and self.separability_n == 0:
            raise ValueError("nothing to evaluate: quality is off and ppl_pairs and separability_n are 0")
        return self

    def regularity_sizes(self) -> tuple[int, int]:
        """(PPL pairs, separability latents), with the defaults that follow n."""
        from studio.regularity import PPL_PAIRS, SEPARABILITY_N

        pairs = min(PPL_PAIRS, self.n) if self.ppl_pairs is None else self.ppl_pairs
        latents = min(SEPARABILITY_N, 2 * self.n) if self.separability_n is None else self.separability_n
        return pairs, latents

    def required_capabilities(self) -> set[str]:
        from studio.contract import DECODE, SAMPLE

        return {SAMPLE, DECODE}

    def run(self, job: JobContext) -> None:
        from studio.evaluate import evaluate_backend
        from studio.regularity import regularity

        metrics: dict[str, Any] = {}
        if self.quality:
            metrics.update(evaluate_backend(job.backend, n=self.n, seed=self.seed, repeats=self.repeats,
                                            settings=job.settings, progress=job.sub_progress("evaluating"),
                                            dataset=self.dataset))
        pairs, latents = self.regularity_sizes()
        metrics.update(regularity(job.backend, ppl_pairs=pairs, separability_n=latents,
                                  labels=self.separability_labels, dataset=self.dataset, seed=self.seed,
                                  eps=self.ppl_eps, settings=job.settings, options=job.options,
                                  progress=job.sub_progress("regularity")))
        metrics.update(dataset=self.dataset, seed=self.seed, backend=job.backend.name, model=job.backend.model.name)
        job.result.metrics.update(metrics)
        job.result.add_json("metrics.json", metrics)


class ProjectSpec(OpSpec):
    """A 2-D map of an encoded dataset: coordinates, labels and a plot."""

    op: Literal["project"] = "project"
    dataset: Name = "mnist"
    split: Literal["train", "test"] = "test"
    method: Literal["pca", "tsne", "umap"] = "pca"
    limit: int = Field(default=2000, ge=10, le=10000)
    seed: Seed = 0

    def required_capabilities(self) -> set[str]:
        from studio.contract import ENCODE

        return {ENCODE}

    def run(self, job: JobContext) -> None:
        from studio.executor import Artifact
        from studio.ops.explore import project

        res = project(job.backend, self.dataset, self.split, self.method, self.limit, self.seed, job.settings,
                      progress=job.sub_progress("projecting"), options=job.options)
        job.result.artifacts.append(Artifact("plot.png", res["plot_png"], "image"))
        job.result.add_json("projection.json", {k: res[k] for k in ("coords", "labels", "classes", "method")})
        job.result.metrics.update(method=self.method, n=len(res["labels"]), cached=res.get("cached", False))
        check_folder(job, self.dataset, self.split, self.limit)


class AnomaliesSpec(OpSpec):
    """Rank a dataset by reconstruction error (with AUROC against an out-of-distribution set)."""

    op: Literal["anomalies"] = "anomalies"
    dataset: Name = "mnist"
    split: Literal["train", "test"] = "test"
    limit: int = Field(default=2000, ge=10, le=10000)
    ood_dataset: Name | None = None  # e.g. fashion or animals: reports AUROC of in- vs out-of-distribution
    top: int = Field(default=16, ge=1, le=64)

    def output_count(self) -> int:
        return self.top

    def required_capabilities(self) -> set[str]:
        from studio.contract import DECODE, ENCODE

        return {ENCODE, DECODE}

    def run(self, job: JobContext) -> None:
        from studio import images as imgs
        from studio.ops.explore import anomalies

        res = anomalies(job.backend, self.dataset, self.split, self.limit, self.ood_dataset, job.settings,
                        progress=job.sub_progress("scoring"), options=job.options)
        summary = {k: v for k, v in res.items() if k not in ("ranking", "top_images")}
        ranking = res["ranking"][: max(self.top, 100)]
        job.result.add_json("anomalies.json", {**summary, "ranking": ranking})
        if res.get("top_images"):
            job.add_image("top_anomalies.png", imgs.grid(res["top_images"][: self.top]), {"top": self.top})
        job.result.metrics.update(summary)
        job.result.metrics["top"] = ranking[: self.top]
        check_folder(job, self.dataset, self.split, self.limit)
