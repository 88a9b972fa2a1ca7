"""Ops that render images from points: sample, interpolate, edit, traverse, analogy and walk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from studio.builtin_ops.ood_check import SourceChecker
from studio.errors import InputError
from studio.spec import MAX_LIST, ImageRef, Name, OpSpec, Seed, Source, checked_name

if TYPE_CHECKING:
    from studio.executor import JobContext


class SampleSpec(OpSpec):
    """Sample images from seeds: image i uses seed + i."""

    op: Literal["sample"] = "sample"
    n: int = Field(default=16, ge=1)
    seed: Seed = 0
    temperature: float = Field(default=1.0, gt=0, le=4)
    truncation: float | None = Field(default=None, gt=0, le=10)

    batchable: ClassVar[bool] = True
    batch_varying: ClassVar[tuple[str, ...]] = ("seed", "n")

    def output_count(self) -> int:
        return self.n

    def required_capabilities(self) -> set[str]:
        from studio.contract import DECODE, SAMPLE

        return {SAMPLE, DECODE}

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]

    def run(self, job: JobContext) -> None:
        self.run_batch([job])

    @classmethod
    def run_batch(cls, jobs: list[JobContext]) -> None:
        """Compatible sample jobs (equal apart from seed and n) in one forward pass; noise is drawn per seed, so
        each result equals what the job gives alone (up to the backend's batch invariance)."""
        from studio import images as imgs
        from studio.points import random_point

        first = jobs[0]
        groups = [job.spec.seeds() for job in jobs]
        point = random_point(first.backend, [s for group in groups for s in group], first.options,
                             first.spec.temperature, first.spec.truncation)
        frames = first.render(point)
        offset = 0
        for job, seeds in zip(jobs, groups, strict=True):
            mine = frames[offset:offset + len(seeds)]
            offset += len(seeds)
            for i, (seed, im) in enumerate(zip(seeds, mine, strict=True)):
                job.add_image(f"sample_{i:03d}.png", im, {"index": i, "seed": seed})
            job.add_image("grid.png", imgs.grid(mine), {"grid": True, "seeds": seeds})
            job.result.metrics.update(n=len(mine), seeds=seeds)


class Img2ImgSpec(OpSpec):
    """Redraw an image: its codec latent is re-noised with seed + i's noise to the options' `strength`, then
    denoised again under the options (prompt, guidance); image i uses seed + i. Backends with IMG2IMG.

    With a `mask` (inpainting; white = redraw, black = keep, grey in between; any size, resized to the image) the
    backend keeps the black region at every denoising step (the point's `mask` entry), and the result is then
    composited over the input image, so kept pixels stay the input's own."""

    op: Literal["img2img"] = "img2img"
    image: ImageRef
    mask: ImageRef | None = None
    n: int = Field(default=4, ge=1, le=64)
    seed: Seed = 0

    def output_count(self) -> int:
        return self.n

    def sources(self) -> list[Source]:
        return [Source(image=self.image)]

    def required_capabilities(self) -> set[str]:
        from studio.contract import DECODE, ENCODE, IMG2IMG, SAMPLE

        return {IMG2IMG, ENCODE, SAMPLE, DECODE}

    def run(self, job: JobContext) -> None:
        from PIL import Image

        from studio import images as imgs
        from studio.points import random_point

        seeds = [self.seed + i for i in range(self.n)]
        checker = SourceChecker(job)
        source = Source(image=self.image)
        start, original, opts = job.point_with_images(source)
        checker.check(original, start, "the image", opts)
        checker.finish()
        point = {**random_point(job.backend, seeds, job.options),
                 **{name: z.expand(self.n, *z.shape[1:]) for name, z in start.items()}}
        mask = self._mask(job) if self.mask is not None else None
        if mask is not None:
            point["mask"] = mask.expand(self.n, *mask.shape[1:])
        frames = job.render(point)
        if mask is not None:  # kept pixels are the input's own, not the VAE's reconstruction of them
            keep = imgs.to_pil(mask * 2 - 1)[0]
            below = imgs.to_pil(original)[0]
            frames = [Image.composite(im, below, keep) for im in frames]
        for i, (seed, im) in enumerate(zip(seeds, frames, strict=True)):
            job.add_image(f"img2img_{i:03d}.png", im, {"index": i, "seed": seed})
        job.add_image("grid.png", imgs.grid(frames), {"grid": True, "seeds": seeds})
        job.result.metrics.update(n=len(frames), seeds=seeds)
        if mask is not None:
            job.result.metrics.update(masked_share=round(float(mask.mean()), 4))

    def _mask(self, job: JobContext) -> object:
        """The mask image at the backend's image size as a (1, 1, H, W) tensor in [0, 1] (its channels' mean)."""
        notes = job.result.metrics.setdefault("notes", [])
        before = len(notes)
        x = job.load_image(self.mask)
        notes[before:] = [n.replace("input image converted", "mask converted", 1) for n in notes[before:]]
        if not notes:
            job.result.metrics.pop("notes")
        return ((x.mean(dim=1, keepdim=True) + 1) / 2).clamp(0, 1)


class InterpolateSpec(OpSpec):
    """Walk between two points (seeds or images): frames, a strip and a GIF."""

    op: Literal["interpolate"] = "interpolate"
    start: Source
    end: Source
    steps: int = Field(default=9, ge=2)
    method: Literal["slerp", "lerp"] = "slerp"

    def sources(self) -> list[Source]:
        return [self.start, self.end]

    def output_count(self) -> int:
        return self.steps

    def run(self, job: JobContext) -> None:
        from studio import images as imgs
        from studio.executor import interpolate_points
        from studio.ops.interpolate import steps
        from studio.points import check_compatible

        checker = SourceChecker(job)
        a, b = checker.point(self.start, "the start image"), checker.point(self.end, "the end image")
        checker.finish()
        check_compatible([a, b])
        ts = steps(self.steps)
        frames = job.render(interpolate_points(job.backend, a, b, ts, self.method, job.options))
        for i, (t, im) in enumerate(zip(ts, frames, strict=True)):
            job.add_image(f"frame_{i:03d}.png", im, {"index": i, "t": t})
        job.add_image("strip.png", imgs.grid(frames, cols=len(frames)), {"strip": True})
        job.add_gif("walk.gif", frames)
        job.result.metrics.update(steps=len(ts), method=self.method)


MAX_EDIT_VECTORS = 16  # vectors one chained edit applies at once


def _fits(name: str, space: str, vector: object, point: dict, source: Source) -> None:
    """InputError unless vector `name` of `space` can move `point` (its space is there, with the vector's shape)."""
    if space not in point:
        raise InputError(f"vector {name!r} lives in space {space!r}, but this source gives "
                         f"{', '.join(sorted(point))}; use a {'seed' if source.image else 'image'} instead")
    if tuple(vector.shape) != tuple(point[space].shape[1:]):
        raise InputError(f"vector {name!r} has shape {tuple(vector.shape)}, the space {space!r} has "
                         f"{tuple(point[space].shape[1:])}")


class EditSpec(OpSpec):
    """Apply an attribute vector at several strengths: the edit strip. Or several vectors at once (`vectors`, each
    name with its own strength): their weighted sum is one direction, and the strip scales it by each of
    `strengths` (default 0 and 1: the original, then the combined edit)."""

    op: Literal["edit"] = "edit"
    vector: Name | None = Field(default=None, description="One vector, applied at each of `strengths`")
    vectors: dict[str, float] | None = Field(
        default=None, description="Several vectors at once, NAME -> strength (e.g. {\"thick\": 1.5, \"slant\": -1}): "
        "the strip applies the weighted sum times each of `strengths` (default [0, 1])")
    strengths: list[float] = Field(default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0], min_length=1,
                                   max_length=MAX_LIST)
    source: Source

    @model_validator(mode="before")
    @classmethod
    def _chained_strengths(cls, data: object) -> object:
        """A chained edit given no strengths shows the original and the combined edit (scales 0 and 1)."""
        if isinstance(data, dict) and data.get("vectors") is not None and "strengths" not in data:
            return {**data, "strengths": [0.0, 1.0]}
        return data

    @field_validator("vector")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return v if v is None else checked_name(v, "vector")

    @field_validator("vectors")
    @classmethod
    def _terms(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        import math

        from studio.errors import clip
        from studio.spec import NAME_RE

        if v is None:
            return v
        if not v:
            raise ValueError("give at least one vector")
        if len(v) > MAX_EDIT_VECTORS:
            raise ValueError(f"at most {MAX_EDIT_VECTORS} vectors at once, got {len(v)}")
        for name, strength in v.items():
            if not NAME_RE.match(name):
                raise ValueError(f"vector name {clip(name, 40)!r}: names use letters, digits, '_', '.' and '-' "
                                 "(at most 64)")
            if not math.isfinite(strength):
                raise ValueError(f"vector {name!r}: strength {strength} is not a finite number")
        return v

    @model_validator(mode="after")
    def _one_form(self) -> EditSpec:
        if (self.vector is None) == (self.vectors is None):
            raise ValueError("give `vector` (one vector at each of `strengths`) or `vectors` (several at once, "
                             "NAME -> strength), one of them")
        return self

    def sources(self) -> list[Source]:
        return [self.source]

    def output_count(self) -> int:
        return len(self.strengths)

    def run(self, job: JobContext) -> None:
        from studio import images as imgs
        from studio.ops.edit import apply_vector, apply_vectors, combine_vectors

        if self.vector is not None:  # one vector: exactly as before chained edits (old records replay the same)
            vector, meta = job.vector(self.vector)
            space = meta["space"]
            checker = SourceChecker(job)
            point = checker.point(self.source, "the image")
            checker.finish()
            _fits(self.vector, space, vector, point, self.source)
            frames = job.render(apply_vector(point, space, vector, self.strengths))
            for i, (k, im) in enumerate(zip(self.strengths, frames, strict=True)):
                job.add_image(f"edit_{i:03d}.png", im, {"index": i, "strength": k})
            job.add_image("strip.png", imgs.grid(frames, cols=len(frames)), {"strip": True})
            job.result.metrics.update(vector=self.vector, space=space, strengths=self.strengths)
            return
        terms = []
        for name, weight in (self.vectors or {}).items():  # every vector first: a missing one fails before any work
            vector, meta = job.vector(name)
            terms.append((name, meta["space"], vector, weight))
        checker = SourceChecker(job)
        point = checker.point(self.source, "the image")
        checker.finish()
        for name, space, vector, _ in terms:
            _fits(name, space, vector, point, self.source)
        frames = job.render(apply_vectors(point, combine_vectors(terms), self.strengths))
        for i, (k, im) in enumerate(zip(self.strengths, frames, strict=True)):
            scaled = {name: weight * k for name, _, _, weight in terms}
            job.add_image(f"edit_{i:03d}.png", im, {"index": i, "strength": k, "vectors": scaled})
        job.add_image("strip.png", imgs.grid(frames, cols=len(frames)), {"strip": True, "vectors": self.vectors})
        job.result.metrics.update(vectors=self.vectors, spaces={name: space for name, space, _, _ in terms},
                                  strengths=self.strengths)


class TraverseSpec(OpSpec):
    """A traversal grid: one row per latent dimension, each set from low to high."""

    op: Literal["traverse"] = "traverse"
    source: Source
    dims: list[int] = Field(default_factory=lambda: list(range(8)), min_length=1, max_length=MAX_LIST)
    low: float = -3.0
    high: float = 3.0
    steps: int = Field(default=7, ge=2)

    def sources(self) -> list[Source]:
        return [self.source]

    def output_count(self) -> int:
        return len(self.dims) * self.steps

    def run(self, job: JobContext) -> None:
        from studio import images as imgs
        from studio.contract import CODEC, SEED
        from studio.ops.edit import traverse

        if self.low >= self.high:
            raise InputError(f"range must go from low to high, got {self.low},{self.high}")
        checker = SourceChecker(job)
        point = checker.point(self.source, "the image")
        checker.finish()
        spaces = job.backend.spaces(job.options)
        space = next((name for role in (SEED, CODEC) for name in point
                      if name in spaces and role in spaces[name].roles), None)
        if space is None:
            raise InputError("this point has no seed or codec latent to traverse")
        frames = job.render(traverse(point, space, self.dims, self.low, self.high, self.steps))
        job.add_image("grid.png", imgs.grid(frames, cols=self.steps), {"dims": self.dims, "space": space})
        job.result.metrics.update(space=space, dims=self.dims, steps=self.steps, low=self.low, high=self.high)


class AnalogySpec(OpSpec):
    """A - B + C in latent space."""

    op: Literal["analogy"] = "analogy"
    a: Source
    b: Source
    c: Source

    def sources(self) -> list[Source]:
        return [self.a, self.b, self.c]

    def output_count(self) -> int:
        return 4

    def run(self, job: JobContext) -> None:
        from studio import images as imgs
        from studio.ops.edit import analogy
        from studio.points import check_compatible, concat

        checker = SourceChecker(job)
        a, b, c = (checker.point(src, f"image {name}") for src, name in ((self.a, "a"), (self.b, "b"), (self.c, "c")))
        checker.finish()
        check_compatible([a, b, c])
        frames = job.render(concat([a, b, c, analogy(a, b, c)]))
        for name, im in zip(("a", "b", "c", "result"), frames, strict=True):
            job.add_image(f"{name}.png", im, {"role": name})
        job.add_image("strip.png", imgs.grid(frames, cols=4), {"strip": True, "formula": "a - b + c"})
        job.result.metrics.update(formula="a - b + c")


class WalkSpec(OpSpec):
    """A multi-keyframe walk as one job (resumable: finished frames survive a retry): frames and a GIF (and an MP4
    with `video="mp4"`)."""

    op: Literal["walk"] = "walk"
    keyframes: list[Source] = Field(min_length=2, max_length=MAX_LIST)
    frames_per_segment: int = Field(default=8, ge=1, le=240)
    method: Literal["slerp", "lerp"] = "slerp"
    video: Literal["gif", "mp4"] = Field(
        default="gif", description="The animation: gif (walk.gif only, needs nothing) or mp4 (walk.mp4, H.264 at "
        "12 fps, as well as walk.gif; needs the video extra, PyAV, on the machine that runs the job)")

    resumable: ClassVar[bool] = True

    def sources(self) -> list[Source]:
        return list(self.keyframes)

    def output_count(self) -> int:
        return (len(self.keyframes) - 1) * self.frames_per_segment + 1

    def run(self, job: JobContext) -> None:
        import tempfile

        from PIL import Image

        from studio.executor import Artifact
        from studio.ops.walk import MP4_MISSING, mp4_available, walk, write_mp4
        from studio.points import check_compatible
        from studio.record import make_record

        if self.video == "mp4" and not mp4_available():  # before any work: this machine cannot write the MP4
            raise InputError(MP4_MISSING)
        checker = SourceChecker(job)
        keyframes = [checker.point(k, f"keyframe {i}") for i, k in enumerate(self.keyframes)]
        checker.finish()
        check_compatible(keyframes)
        frames_dir = (job.workdir or Path(tempfile.mkdtemp(prefix="studio-walk-"))) / "frames"
        frames_dir.mkdir(parents=True, exist_ok=True)

        def record_for(i: int) -> dict:
            return make_record(job.spec_json, job.record_base, {"name": f"frame_{i:05d}.png", "index": i})

        paths = walk(job.backend, keyframes, self.frames_per_segment, self.method, job.options, frames_dir,
                     progress=job.sub_progress("walking"), record_for=record_for)
        frames = []
        for p in paths:
            with Image.open(p, formats=("PNG",)) as im:
                im.load()
                frames.append(im.copy())
            job.result.artifacts.append(Artifact(p.name, p.read_bytes(), "image"))
        job.add_gif("walk.gif", [f.convert("RGB") for f in frames])
        if self.video == "mp4":  # the same frames at the GIF's scale, written next to them, then kept as an artifact
            scale = max(1, 128 // max(frames[0].size))  # as job.add_gif enlarges tiny frames
            mp4 = write_mp4(paths, frames_dir.parent / "walk.mp4", scale=scale)
            job.result.artifacts.append(Artifact(mp4.name, mp4.read_bytes(), "video"))
        job.result.metrics.update(frames=len(paths), keyframes=len(keyframes))
