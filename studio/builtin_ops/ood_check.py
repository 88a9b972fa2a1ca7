"""The out-of-distribution check in ops that encode user images: encode each image source once, score it against
the model's calibration (studio.ood), and put the scores, `ood_share` and any warning into the job's metrics.
A user's image folder (dataset `folder:PATH`) is checked too; the built-in datasets are not (they are known)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from studio.spec import Source

if TYPE_CHECKING:
    import torch

    from studio.contract import Point
    from studio.executor import JobContext
    from studio.ood import Assessment


class SourceChecker:
    """Turns a job's sources into points like `job.point`, scoring every image source on the way; `finish()`
    records the scores (nothing when no source was an image)."""

    def __init__(self, job: JobContext) -> None:
        self.job = job
        self.assessments: list[Assessment] = []

    def point(self, src: Source, label: str) -> Point:
        """`job.point(src)`; an image source is scored from the images and latent that made its point (the latent
        is not computed twice)."""
        point, images, opts = self.job.point_with_images(src)
        if images is not None:
            self.check(images, point, label, opts)
        return point

    def check(self, images: torch.Tensor, point: Point | None, label: str, options: object = None) -> None:
        """Score `images` (their codec `point` when encoded already) under `label`."""
        from studio.ood import assess

        job = self.job
        labels = (label,) if len(images) == 1 else tuple(f"{label} {i}" for i in range(len(images)))
        self.assessments.append(assess(job.backend, images, job.settings, options if options is not None
                                       else job.options, point=point, labels=labels,
                                       progress=job.sub_progress("checking the input")))

    def finish(self) -> None:
        from studio.ood import merge, record

        if self.assessments:
            record(self.job.result.metrics, merge(self.assessments))


def check_folder(job: JobContext, dataset: str | None, split: str, limit: int) -> None:
    """Score the images of a user's folder dataset (`folder:PATH`) the op reads; nothing for built-in datasets."""
    if not dataset or not dataset.startswith("folder:"):
        return
    from studio.ops.explore import load_in_shape

    images = load_in_shape(job.backend, dataset, split, limit, job.settings, job.options).images
    checker = SourceChecker(job)
    checker.check(images, None, "folder image")
    checker.finish()
