"""An example third-party op: the k dataset images nearest to a seed's or an image's latent ("similar things lie
close in latent space").

The whole op is one declaration: the spec's fields (validated at submit), its traits and its handler `run(job)`,
which works over the backend contract only, so it runs on any backend that can encode (and, for a seed, sample and
decode). Registered through the `latent_studio.ops` entry point in pyproject.toml; `studio run neighbours` and
`studio submit neighbours` then take it with flags generated from the fields. Nothing here imports torch at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from studio.errors import InputError
from studio.spec import ImageRef, Name, OpSpec, Seed

if TYPE_CHECKING:
    import numpy as np

    from studio.contract import Progress
    from studio.datasets import Dataset
    from studio.executor import JobContext


class NeighboursSpec(OpSpec):
    """The k dataset images nearest to a seed's or an image's latent, with their distances, as a strip."""

    op: Literal["neighbours"] = "neighbours"
    seed: Seed | None = Field(default=None, description="Seed of the query (or give an image)")
    image: ImageRef | None = Field(default=None, description="Query image: a PNG/JPEG path, or dataset:mnist:test:3 "
                                                               "(or give a seed)")
    dataset: Name = Field(default="mnist", description="Dataset searched: mnist, fashion, animals, digits")
    split: Literal["train", "test"] = "test"
    k: int = Field(default=8, ge=1, le=64, description="How many neighbours")
    limit: int = Field(default=2000, ge=2, le=10000, description="How many dataset images are searched")

    @model_validator(mode="after")
    def _one_query(self) -> NeighboursSpec:
        if (self.seed is None) == (self.image is None):
            raise ValueError("give either a seed or an image as the query")
        if self.k > self.limit:
            raise ValueError(f"k ({self.k}) must be at most limit ({self.limit})")
        return self

    def output_count(self) -> int:
        return self.k + 1

    def required_capabilities(self) -> set[str]:
        from studio.contract import DECODE, ENCODE, SAMPLE

        return {ENCODE} | ({SAMPLE, DECODE} if self.seed is not None else set())

    def run(self, job: JobContext) -> None:
        import numpy as np

        from studio import images as imgs
        from studio.contract import CODEC
        from studio.ops.explore import encode_flat, load_in_shape

        space = job.backend.space_for(CODEC, job.options).name
        ds = load_in_shape(job.backend, self.dataset, self.split, self.limit, job.settings, job.options)
        if len(ds) < self.k:
            raise InputError(f"dataset {self.dataset!r} split {self.split!r} has {len(ds)} images; k is {self.k}")
        n = len(ds)

        def on_query(step: int, total: int, message: str = "", preview: object = None) -> None:
            job.progress(0, n, message or "the query")  # may raise Cancelled

        query_image, query = self._query(job, space, on_query)
        features = encode_flat(job.backend, ds.images, job.progress, options=job.options)
        if features.shape[1] != query.shape[0]:
            raise InputError(f"backend {job.backend.name!r} encoded the query to {query.shape[0]} numbers but "
                             f"dataset images to {features.shape[1]}")
        distances = np.sqrt(((features.astype(np.float64) - query.astype(np.float64)) ** 2).sum(axis=1))
        order = np.argsort(distances, kind="stable")[: self.k]
        labels = [int(ds.labels[i]) for i in order]
        neighbours = [{"rank": r, "index": int(i), "distance": float(distances[i]), "label": label,
                       "class": _class_name(ds, label)}
                      for r, (i, label) in enumerate(zip(order, labels, strict=True))]

        query_label = self._query_label(job, ds)
        agreement, agreement_with = _agreement(labels, query_label)
        strip = imgs.grid([query_image, *imgs.to_pil(ds.images[order])], cols=self.k + 1)
        job.add_image("neighbours.png", strip, {"strip": True, "indices": [nb["index"] for nb in neighbours],
                                                "distances": [round(nb["distance"], 6) for nb in neighbours]})
        query_info = {"seed": self.seed} if self.seed is not None else {"image": _describe(self.image)}
        job.result.add_json("neighbours.json", {
            "query": {**query_info, "label": query_label}, "space": space, "dataset": self.dataset,
            "split": self.split, "searched": n, "neighbours": neighbours})
        job.result.metrics.update(k=self.k, dataset=self.dataset, split=self.split, space=space, searched=n,
                                  nearest_distance=neighbours[0]["distance"], label_agreement=agreement,
                                  agreement_with=agreement_with, query_label=query_label)

    def _query(self, job: JobContext, space: str, progress: Progress) -> tuple[object, np.ndarray]:
        """The query as an image (PIL, shown first in the strip) and its flattened codec latent: an image's encoding;
        a seed's own point when its seed space is the codec space, else the encoding of the seed's image."""
        from studio import images as imgs
        from studio.contract import SEED
        from studio.ops.explore import encode_flat
        from studio.points import decode_batched, random_point

        backend = job.backend
        if self.image is not None:
            x = job.load_image(self.image)
            return imgs.to_pil(x)[0], encode_flat(backend, x, progress, options=job.options)[0]
        point = random_point(backend, [self.seed], job.options)
        x = decode_batched(backend, point, job.options, progress=progress)
        seed_space = backend.spaces(job.options).get(space)
        if space in point and seed_space is not None and SEED in seed_space.roles:
            query = point[space].detach().float().cpu().reshape(-1).numpy()
        else:
            query = encode_flat(backend, x.float().clamp(-1, 1), progress, options=job.options)[0]
        return imgs.to_pil(x)[0], query

    def _query_label(self, job: JobContext, ds: Dataset) -> int | None:
        """The query's label when it is a labelled image of the dataset searched (any split), else None."""
        ref = self.image
        if ref is None or ref.dataset != self.dataset:
            return None
        if ref.split == self.split and ref.index < len(ds):
            label = int(ds.labels[ref.index])
        else:
            from studio.datasets import load_dataset

            label = int(load_dataset(ref.dataset, ref.split, limit=ref.index + 1, settings=job.settings).labels[-1])
        return label if label >= 0 else None


def _agreement(labels: list[int], query_label: int | None) -> tuple[float | None, str | None]:
    """The share of labelled neighbours with the query's label (a labelled query), else with their majority label."""
    known = [v for v in labels if v >= 0]
    if not known:
        return None, None
    if query_label is not None:
        return sum(v == query_label for v in labels) / len(labels), "query"
    majority = max(sorted(set(known)), key=known.count)
    return known.count(majority) / len(labels), "majority"


def _class_name(ds: Dataset, label: int) -> str | None:
    return ds.classes[label] if 0 <= label < len(ds.classes) else None


def _describe(ref: ImageRef) -> dict:
    return {"dataset": ref.dataset, "split": ref.split, "index": ref.index} if ref.dataset else {"upload": True}


def register(register_op: Callable[[type], None]) -> None:
    """The entry-point hook: Latent Studio calls it with a function that registers op classes."""
    register_op(NeighboursSpec)
