"""The compression round trip: encode, quantise, entropy-code to bytes, decode, with metrics against JPEG/WebP, and
the out-of-distribution check of its input (studio.ood): `ood_share`, per-image scores and a warning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from studio.spec import ImageRef, Name, OpSpec

if TYPE_CHECKING:
    from studio.executor import JobContext


class RoundtripSpec(OpSpec):
    """Compression round trip of a dataset (metrics and a comparison) or of one image (with baselines)."""

    op: Literal["roundtrip"] = "roundtrip"
    bits: int = 8
    dataset: Name | None = None
    split: Literal["train", "test"] = "test"
    limit: int = Field(default=1000, ge=1, le=10000)
    image: ImageRef | None = None

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if not 1 <= v <= 12:
            raise ValueError(f"bits must be between 1 and 12, got {v}")
        return v

    @model_validator(mode="after")
    def _one_input(self) -> RoundtripSpec:
        if (self.dataset is None) == (self.image is None):
            raise ValueError("give either a dataset or an image")
        return self

    def required_capabilities(self) -> set[str]:
        from studio.contract import DECODE, ENCODE

        return {ENCODE, DECODE}

    def run(self, job: JobContext) -> None:
        import torch

        from studio import images as imgs
        from studio.executor import Artifact
        from studio.ood import assess, record
        from studio.ops.compression import roundtrip, roundtrip_panel

        if self.image is not None:
            x = job.load_image(self.image)
        else:
            from studio.datasets import load_dataset

            shape = tuple(job.backend.image_shape(job.options))
            x = load_dataset(self.dataset, self.split, limit=self.limit, settings=job.settings, shape=shape).images
            if tuple(x.shape[1:]) != shape:  # built-in datasets are 1x28x28: converted as uploads are
                x = imgs.to_tensor(imgs.to_pil(x), shape)
        res = roundtrip(job.backend, x, self.bits, job.options, progress=job.sub_progress("round trip"))
        job.result.metrics.update(res.metrics)
        labels = ("the image",) if self.image is not None else tuple(f"{self.dataset}[{i}]" for i in range(len(x)))
        check = assess(job.backend, x, job.settings, job.options, labels=labels,
                       progress=job.sub_progress("checking the input"), reconstructions=res.unquantised)
        record(job.result.metrics, check)
        job.result.add_json("metrics.json", job.result.metrics)
        if self.image is None:
            k = min(16, len(x))
            pairs = imgs.to_pil(torch.cat([x[:k], res.reconstructions[:k]]))
            job.add_image("comparison.png", imgs.grid(pairs, cols=k), {"rows": ["original", "reconstruction"]})
            return
        orig = imgs.to_pil(x)[0]
        job.add_image("original.png", orig, {"role": "original"})
        flagged = {} if check.flags is None else {"ood_score": round(float(check.scores[0]), 5),
                                                   "ood_flagged": bool(check.flags[0])}
        job.add_image("reconstruction.png", imgs.to_pil(res.reconstructions)[0], {"role": "reconstruction", **flagged})
        for base in (res.jpeg[0], res.webp[0]):
            shown = base.matched or base.smallest  # over budget when nothing fits: said in the metrics and panel
            suffix = "jpg" if base.format.lower().startswith("jp") else "webp"
            job.result.artifacts.append(Artifact(f"baseline.{suffix}", shown.data, "binary"))
        job.result.artifacts.append(Artifact("latent.bin", res.payloads[0], "binary"))
        job.add_image("side_by_side.png", roundtrip_panel(res, orig), {"role": "comparison"})
