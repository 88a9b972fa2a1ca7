"""The executor: runs a validated job spec against a backend, in-process or inside a worker.

Each op is declared once (studio.builtin_ops, or a plugin's `latent_studio.ops` entry point): its spec class
carries its fields, traits and handler (`run(job)`). The executor parses the spec, checks the backend's
capabilities and options, and hands the op a `JobContext`: the loaded backend, its options, and helpers to turn
sources into points, render points and add artifacts. Nothing branches on an op's or a backend's name.
The result is a list of artifacts (PNGs carrying their record, GIFs, JSON) plus metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from pydantic import BaseModel

from studio import images as imgs
from studio.config import Settings, load_settings
from studio.contract import Backend, Point, Progress, no_progress
from studio.errors import InputError
from studio.points import batch_size, decode_batched, encode_images, random_point, take
from studio.record import make_record, pnginfo
from studio.spec import ImageRef, OpSpec, Source, check_backend_options, check_capabilities, parse_spec, spec_dict


@dataclass
class Artifact:
    name: str
    data: bytes
    kind: str  # image | gif | video | json | binary

    def write(self, directory: Path) -> Path:
        path = directory / self.name
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(self.data)
        tmp.replace(path)
        return path


@dataclass
class JobResult:
    artifacts: list[Artifact] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def write(self, directory: str | Path) -> list[Path]:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        return [a.write(d) for a in self.artifacts]

    def add_json(self, name: str, data: dict) -> None:
        self.artifacts.append(Artifact(name, json.dumps(data, indent=2, sort_keys=True).encode(), "json"))


class Runtime:
    """Loads backends for the executor; a worker's runtime adds caching, budgets and device choice."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self._loaded: dict[tuple[str, str | None, str | None], Backend] = {}

    def device(self) -> tuple[str, str]:
        dev = self.settings.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = self.settings.dtype
        if dtype == "auto":
            dtype = "float32"
        return dev, dtype

    def cache_key(self, name: str, model: str | None) -> tuple[str, str | None, str | None]:
        """What a loaded backend is cached under: a model registered in the records counts by its sha256 too, so
        weights re-registered under the same name (removed, imported or trained again) are loaded afresh."""
        if model is None:
            return name, None, None
        from studio.modelstore import find_model

        row = find_model(self.settings, name, model)
        return name, model, row["sha256"] if row is not None else None

    def get_backend(self, name: str, model: str | None) -> Backend:
        key = self.cache_key(name, model)
        if key not in self._loaded:
            from studio.registry import get_backend_class

            device, dtype = self.device()
            self._loaded[key] = self.load_backend(get_backend_class(name), model, device, dtype)
        return self._loaded[key]

    def load_backend(self, cls: type[Backend], model: str | None, device: str, dtype: str) -> Backend:
        """Load `model` of backend `cls`; a model registered in the records (studio.modelstore) is fetched into
        this machine's cache and its sha256 verified first. Every runtime (in-process, worker) loads through here."""
        if model is not None:
            from studio.modelstore import ensure_local

            ensure_local(self.settings, cls.name, model)
        return cls.load(model, self.settings, device=device, dtype=dtype)


class JobContext:
    """What an op's handler (`OpSpec.run(job)`) works with: the spec, the loaded backend and its options, the
    settings, the owner, a progress callback, a work folder (resumable ops) and the result it fills in.

    Helpers: `point(source)` (a seed or an image as a latent point), `load_image(ref)`, `render(point)`,
    `add_image(name, pil_image, record_fields)` (a PNG carrying its replayable record), `add_gif`,
    `result.add_json`, `result.metrics`, `vector(name)` (a saved attribute vector the owner may use) and
    `sub_progress(message)`.
    """

    def __init__(self, spec: OpSpec, runtime: Runtime, progress: Progress, workdir: Path | None,
                 owner: str | None = None) -> None:
        self.spec = spec
        self.owner = owner  # the user the job runs for (None: the single-user default or an admin's own run)
        self.runtime = runtime
        self.settings = runtime.settings
        self.progress = progress
        self.workdir = workdir
        self.result = JobResult()
        self.spec_json = spec_dict(spec)

    # loaded on first use: an op that needs no model (train) never loads one
    @cached_property
    def backend(self) -> Backend:
        return self.runtime.get_backend(self.spec.backend, self.spec.model)

    @cached_property
    def options(self) -> BaseModel:
        return self.backend.parse_options(self.spec.options)

    @cached_property
    def record_base(self) -> dict:
        return {**_backend_record(self.backend)}

    def child(self, spec: OpSpec, progress: Progress, workdir: Path | None = None) -> JobContext:
        """A context for a sub-job run inside this one (a grid's cell): the same runtime, owner and, for the same
        backend and model, the already-loaded backend; its own spec (so its PNGs carry its own record) and result."""
        sub = JobContext(spec, self.runtime, progress, workdir, self.owner)
        if (spec.backend, spec.model) == (self.spec.backend, self.spec.model):
            sub.__dict__["backend"] = self.backend  # the cached_property's slot: no second load
        return sub

    # ----- inputs -----
    def options_for(self, src: Source) -> BaseModel:
        if src.options is None:
            return self.options
        return self.backend.parse_options({**self.spec.options, **src.options})

    def load_image(self, ref: ImageRef) -> torch.Tensor:
        shape = self.backend.image_shape(self.options)
        if ref.png_b64 is not None:
            im = imgs.from_b64(ref.png_b64, self.settings.max_upload_bytes, self.settings.max_upload_pixels)
            note = imgs.describe_conversion(im, shape)
            if note:
                self.result.metrics.setdefault("notes", []).append(f"input image converted: {note}")
            return imgs.to_tensor([im], shape)
        from studio.datasets import load_dataset

        ds = load_dataset(ref.dataset, ref.split, limit=ref.index + 1, settings=self.settings, shape=shape)
        if ref.index >= len(ds):
            raise InputError(f"dataset {ref.dataset!r} split {ref.split!r} has only {len(ds)} images")
        x = ds.images[ref.index:ref.index + 1]
        if tuple(x.shape[1:]) != tuple(shape):
            x = imgs.to_tensor(imgs.to_pil(x), shape)
        return x

    def point(self, src: Source) -> Point:
        """`src` as a latent point: a seed's random point, or an image loaded and encoded."""
        return self.point_with_images(src)[0]

    def point_with_images(self, src: Source) -> tuple[Point, torch.Tensor | None, BaseModel]:
        """`point(src)`, with the images it encoded (None for a seed) and the options it used: for a caller that
        also looks at the images (the out-of-distribution check) without loading or encoding them again."""
        opts = self.options_for(src)
        if src.seed is not None:
            return random_point(self.backend, [src.seed], opts), None, opts
        x = self.load_image(src.image)
        return encode_images(self.backend, x, opts, seed=0, progress=self.sub_progress("encoding")), x, opts

    # ----- outputs -----
    def sub_progress(self, message: str) -> Progress:
        return lambda step, total, msg="", preview=None: self.progress(step, total, msg or message, preview)

    def render(self, point: Point, options: BaseModel | None = None) -> list:
        opts = options or self.options
        return imgs.to_pil(decode_batched(self.backend, point, opts, progress=self.sub_progress("rendering")))

    def add_image(self, name: str, im, item: dict | None = None) -> None:
        record = make_record(self.spec_json, self.record_base, {"name": name, **(item or {})})
        self.result.artifacts.append(Artifact(name, imgs.png_bytes(im, pnginfo(record)), "image"))

    def add_gif(self, name: str, frames: list) -> None:
        scale = max(1, 128 // max(frames[0].size))
        self.result.artifacts.append(Artifact(name, imgs.gif_bytes(frames, scale=scale), "gif"))

    def vector(self, name: str) -> tuple[torch.Tensor, dict]:
        """The saved vector `name` of this backend's model that the job's owner may use, and its metadata."""
        from studio.users import viewer_for
        from studio.vectorstore import load_vector

        return load_vector(self.settings, self.backend.name, self.backend.model.sha256, name,
                           viewer=viewer_for(self.settings, self.owner))

    def store_relative(self, path: object) -> str:
        """`path` relative to the store (a file's name when it lies elsewhere): results never reveal server
        folders."""
        return store_relative(path, self.settings)


def _backend_record(backend: Backend) -> dict:
    record = {"backend": backend.name, "backend_version": backend.version, "model": backend.model.name,
              "weights_sha256": backend.model.sha256, "device": backend.device, "dtype": backend.dtype}
    runtime = backend.describe().get("runtime")  # backend-chosen speed options that can change pixels
    if runtime:
        record["runtime"] = runtime
    return record


def interpolate_points(backend: Backend, a: Point, b: Point, ts: list[float], method: str,
                       options: BaseModel | None = None) -> Point:
    """Interpolate every space of two single-item points: Gaussian-prior spaces by `method`, others by lerp."""
    from studio.ops.interpolate import interpolate

    spaces = backend.spaces(options)
    out = {}
    for name in a:
        m = method if name in spaces and spaces[name].prior == "gaussian" else "lerp"
        out[name] = interpolate(a[name][0], b[name][0], ts, m)
    return out


def store_relative(path: object, settings: Settings) -> str:
    """`path` relative to the store (a file's name when it lies elsewhere)."""
    target = Path(str(path))
    try:
        return target.resolve().relative_to(Path(settings.store_path).resolve()).as_posix()
    except (ValueError, OSError):
        return target.name


def execute(spec: BaseModel | dict, runtime: Runtime | None = None, progress: Progress = no_progress,
            workdir: Path | None = None, owner: str | None = None) -> JobResult:
    """Validate and run one job spec for `owner` (whose vectors it may use and whose new vectors it saves);
    return its artifacts and metrics."""
    runtime = runtime or Runtime()
    spec = parse_spec(spec, runtime.settings, check_backend=False)  # parsed once (inline images decode once)
    check_capabilities(spec)  # before its options are checked
    check_backend_options(spec)
    started = time.perf_counter()
    job = JobContext(spec, runtime, progress, workdir, owner)
    spec.run(job)
    job.result.metrics["seconds"] = round(time.perf_counter() - started, 4)
    return job.result


def batch_shared(spec: OpSpec) -> dict:
    """What jobs batched together must share: the spec without the op's `batch_varying` fields."""
    return {k: v for k, v in spec_dict(spec).items() if k not in type(spec).batch_varying}


def execute_batch(specs: list[BaseModel | dict], runtime: Runtime | None = None,
                  progress: Progress = no_progress) -> list[JobResult]:
    """Run compatible specs of a batchable op (equal apart from the op's `batch_varying` fields) in one pass,
    one result per spec, through the op's `run_batch`. Each result equals what `execute` gives for its spec
    alone, up to the backend's batch invariance (the job queue's micro-batching runs through here)."""
    runtime = runtime or Runtime()
    parsed = [parse_spec(s, runtime.settings) for s in specs]
    if not parsed:
        return []
    op = type(parsed[0])
    if not op.batchable or any(type(s) is not op or batch_shared(s) != batch_shared(parsed[0]) for s in parsed[1:]):
        varying = " and ".join(op.batch_varying) or "nothing"
        raise InputError(f"only {parsed[0].op} jobs that differ in nothing but {varying} can run as one batch"
                         if op.batchable else f"{parsed[0].op} jobs cannot run as one batch")
    check_capabilities(parsed[0])
    started = time.perf_counter()
    jobs = [JobContext(s, runtime, progress, None) for s in parsed]
    op.run_batch(jobs)
    seconds = round(time.perf_counter() - started, 4)
    for job in jobs:
        job.result.metrics.update(seconds=seconds, batched_with=len(jobs) - 1)
    return [job.result for job in jobs]


__all__ = ["Artifact", "JobContext", "JobResult", "Runtime", "batch_shared", "check_capabilities", "execute",
           "execute_batch", "interpolate_points", "batch_size", "store_relative", "take"]
