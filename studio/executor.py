"""The executor: runs a validated job spec against a backend, in-process or inside a worker.

Every op is written here once over the contract (plus `studio.ops`); nothing branches on a backend's name.
The result is a list of artifacts (PNGs carrying their record, GIFs, JSON) plus metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from pydantic import BaseModel

from studio import images as imgs
from studio.config import Settings, load_settings
from studio.contract import CODEC, DECODE, ENCODE, SAMPLE, SEED, TEXT, TRAIN, Backend, Point, Progress, no_progress
from studio.errors import InputError, clip
from studio.points import batch_size, check_compatible, concat, decode_batched, encode_images, random_point, take
from studio.record import make_record, pnginfo
from studio.spec import ImageRef, Source, check_backend_options, parse_spec, spec_dict


@dataclass
class Artifact:
    name: str
    data: bytes
    kind: str  # image | gif | json | binary

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


class _Job:
    """The state one execution shares between its steps."""

    def __init__(self, spec: BaseModel, runtime: Runtime, progress: Progress, workdir: Path | None,
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
        opts = self.options_for(src)
        if src.seed is not None:
            return random_point(self.backend, [src.seed], opts)
        x = self.load_image(src.image)
        return encode_images(self.backend, x, opts, seed=0, progress=self.sub_progress("encoding"))

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


def _backend_record(backend: Backend) -> dict:
    record = {"backend": backend.name, "backend_version": backend.version, "model": backend.model.name,
              "weights_sha256": backend.model.sha256, "device": backend.device, "dtype": backend.dtype}
    runtime = backend.describe().get("runtime")  # backend-chosen speed options that can change pixels
    if runtime:
        record["runtime"] = runtime
    return record


# ----- the ops -----

def _sample(job: _Job) -> None:
    s = job.spec
    seeds = [s.seed + i for i in range(s.n)]
    point = random_point(job.backend, seeds, job.options, s.temperature, s.truncation)
    _sample_outputs(job, seeds, job.render(point))


def _sample_outputs(job: _Job, seeds: list[int], frames: list) -> None:
    for i, (seed, im) in enumerate(zip(seeds, frames, strict=True)):
        job.add_image(f"sample_{i:03d}.png", im, {"index": i, "seed": seed})
    job.add_image("grid.png", imgs.grid(frames), {"grid": True, "seeds": seeds})
    job.result.metrics.update(n=len(frames), seeds=seeds)


def _interpolate(job: _Job) -> None:
    from studio.ops.interpolate import steps

    s = job.spec
    a, b = job.point(s.start), job.point(s.end)
    check_compatible([a, b])
    ts = steps(s.steps)
    path = interpolate_points(job.backend, a, b, ts, s.method, job.options)
    frames = job.render(path)
    for i, (t, im) in enumerate(zip(ts, frames, strict=True)):
        job.add_image(f"frame_{i:03d}.png", im, {"index": i, "t": t})
    job.add_image("strip.png", imgs.grid(frames, cols=len(frames)), {"strip": True})
    job.add_gif("walk.gif", frames)
    job.result.metrics.update(steps=len(ts), method=s.method)


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


def _vector_for(job: _Job) -> tuple[torch.Tensor, dict]:
    from studio.users import viewer_for
    from studio.vectorstore import load_vector

    return load_vector(job.settings, job.backend.name, job.backend.model.sha256, job.spec.vector,
                       viewer=viewer_for(job.settings, job.owner))


def _edit(job: _Job) -> None:
    from studio.ops.edit import apply_vector

    s = job.spec
    vector, meta = _vector_for(job)
    space = meta["space"]
    point = job.point(s.source)
    if space not in point:
        raise InputError(f"vector {s.vector!r} lives in space {space!r}, but this source gives "
                         f"{', '.join(sorted(point))}; use a {'seed' if s.source.image else 'image'} instead")
    if tuple(vector.shape) != tuple(point[space].shape[1:]):
        raise InputError(f"vector {s.vector!r} has shape {tuple(vector.shape)}, the space {space!r} has "
                         f"{tuple(point[space].shape[1:])}")
    edited = apply_vector(point, space, vector, s.strengths)
    frames = job.render(edited)
    for i, (k, im) in enumerate(zip(s.strengths, frames, strict=True)):
        job.add_image(f"edit_{i:03d}.png", im, {"index": i, "strength": k})
    job.add_image("strip.png", imgs.grid(frames, cols=len(frames)), {"strip": True})
    job.result.metrics.update(vector=s.vector, space=space, strengths=s.strengths)


def _traversal_space(backend: Backend, point: Point, options: BaseModel | None) -> str:
    spaces = backend.spaces(options)
    for role in (SEED, CODEC):
        for name in point:
            if name in spaces and role in spaces[name].roles:
                return name
    raise InputError("this point has no seed or codec latent to traverse")


def _traverse(job: _Job) -> None:
    from studio.ops.edit import traverse

    s = job.spec
    if s.low >= s.high:
        raise InputError(f"range must go from low to high, got {s.low},{s.high}")
    point = job.point(s.source)
    space = _traversal_space(job.backend, point, job.options)
    grid_point = traverse(point, space, s.dims, s.low, s.high, s.steps)
    frames = job.render(grid_point)
    job.add_image("grid.png", imgs.grid(frames, cols=s.steps), {"dims": s.dims, "space": space})
    job.result.metrics.update(space=space, dims=s.dims, steps=s.steps, low=s.low, high=s.high)


def _analogy(job: _Job) -> None:
    from studio.ops.edit import analogy

    s = job.spec
    a, b, c = job.point(s.a), job.point(s.b), job.point(s.c)
    check_compatible([a, b, c])
    d = analogy(a, b, c)
    frames = job.render(concat([a, b, c, d]))
    for name, im in zip(("a", "b", "c", "result"), frames, strict=True):
        job.add_image(f"{name}.png", im, {"role": name})
    job.add_image("strip.png", imgs.grid(frames, cols=4), {"strip": True, "formula": "a - b + c"})
    job.result.metrics.update(formula="a - b + c")


def _roundtrip(job: _Job) -> None:
    from studio.ops.compression import roundtrip, roundtrip_panel

    s = job.spec
    if s.image is not None:
        x = job.load_image(s.image)
    else:
        from studio.datasets import load_dataset

        shape = job.backend.image_shape(job.options)
        ds = load_dataset(s.dataset, s.split, limit=s.limit, settings=job.settings, shape=shape)
        x = ds.images
        if tuple(x.shape[1:]) != tuple(shape):
            raise InputError(f"dataset {s.dataset!r} has {tuple(x.shape[1:])} images; backend "
                             f"{job.backend.name!r} expects {tuple(shape)}")
    res = roundtrip(job.backend, x, s.bits, job.options, progress=job.sub_progress("round trip"))
    job.result.metrics.update(res.metrics)
    job.result.add_json("metrics.json", res.metrics)
    if s.image is not None:
        orig = imgs.to_pil(x)[0]
        job.add_image("original.png", orig, {"role": "original"})
        job.add_image("reconstruction.png", imgs.to_pil(res.reconstructions)[0], {"role": "reconstruction"})
        for base in (res.jpeg[0], res.webp[0]):
            shown = base.matched or base.smallest  # over budget when nothing fits: said in the metrics and panel
            suffix = "jpg" if base.format.lower().startswith("jp") else "webp"
            job.result.artifacts.append(Artifact(f"baseline.{suffix}", shown.data, "binary"))
        job.result.artifacts.append(Artifact("latent.bin", res.payloads[0], "binary"))
        job.add_image("side_by_side.png", roundtrip_panel(res, orig), {"role": "comparison"})
    else:
        k = min(16, len(x))
        pairs = imgs.to_pil(torch.cat([x[:k], res.reconstructions[:k]]))
        job.add_image("comparison.png", imgs.grid(pairs, cols=k), {"rows": ["original", "reconstruction"]})


def _store_relative(path: object, settings: object) -> str:
    """`path` relative to the store (a file's name when it lies elsewhere): results never reveal server folders."""
    from pathlib import Path

    target = Path(str(path))
    try:
        return target.resolve().relative_to(Path(settings.store_path).resolve()).as_posix()  # type: ignore[attr-defined]
    except (ValueError, OSError):
        return target.name


def _fit_vector(job: _Job) -> None:
    from studio.ops.vectors import fit_attribute_vector, fit_example_vector
    from studio.vectorstore import check_can_save, save_vector

    s = job.spec
    check_can_save(job.settings, job.backend.name, job.backend.model.sha256, s.name, job.owner)  # before the fit
    if s.dataset is not None:
        vector, meta = fit_attribute_vector(job.backend, s.dataset, s.attribute, s.method, job.settings,
                                            limit=s.limit, seed=s.seed, progress=job.sub_progress("fitting"))
    elif s.with_seeds is not None:
        vector, meta = fit_example_vector(job.backend, s.with_seeds, s.without_seeds, method="mean",
                                          options=job.options)
    else:
        w = job.backend.parse_options({**s.options, **s.with_options})
        wo = job.backend.parse_options({**s.options, **s.without_options})
        cw, cwo = job.backend.condition(1, w), job.backend.condition(1, wo)
        if not cw:
            raise InputError(f"backend {job.backend.name!r} has no condition space: text directions need prompts")
        space = next(iter(cw))
        vector = (cw[space] - cwo[space])[0]
        meta = {"space": space, "method": "text", "with": s.with_options, "without": s.without_options}
    meta = {**meta, "name": s.name, "backend": job.backend.name, "model": job.backend.model.name}
    path = save_vector(job.settings, job.backend.name, job.backend.model.sha256, s.name, vector, meta,
                       owner=job.owner)
    job.result.metrics.update({k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))})
    job.result.metrics["path"] = _store_relative(path, job.settings)  # never the store's absolute location
    job.result.add_json("vector.json", job.result.metrics)


def _evaluate(job: _Job) -> None:
    from studio.evaluate import evaluate_backend

    s = job.spec
    metrics = evaluate_backend(job.backend, n=s.n, seed=s.seed, repeats=s.repeats, settings=job.settings,
                               progress=job.sub_progress("evaluating"))
    job.result.metrics.update(metrics)
    job.result.add_json("metrics.json", metrics)


def _walk(job: _Job) -> None:
    import tempfile

    from studio.ops.walk import walk

    s = job.spec
    keyframes = [job.point(k) for k in s.keyframes]
    check_compatible(keyframes)
    frames_dir = (job.workdir or Path(tempfile.mkdtemp(prefix="studio-walk-"))) / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)

    def record_for(i: int) -> dict:
        return make_record(job.spec_json, job.record_base, {"name": f"frame_{i:05d}.png", "index": i})

    paths = walk(job.backend, keyframes, s.frames_per_segment, s.method, job.options, frames_dir,
                 progress=job.sub_progress("walking"), record_for=record_for)
    from PIL import Image

    frames = []
    for p in paths:
        with Image.open(p, formats=("PNG",)) as im:
            im.load()
            frames.append(im.copy())
        job.result.artifacts.append(Artifact(p.name, p.read_bytes(), "image"))
    job.add_gif("walk.gif", [f.convert("RGB") for f in frames])
    job.result.metrics.update(frames=len(paths), keyframes=len(keyframes))


def _project(job: _Job) -> None:
    from studio.ops.explore import project

    s = job.spec
    res = project(job.backend, s.dataset, s.split, s.method, s.limit, s.seed, job.settings,
                  progress=job.sub_progress("projecting"))
    job.result.artifacts.append(Artifact("plot.png", res["plot_png"], "image"))
    job.result.add_json("projection.json", {k: res[k] for k in ("coords", "labels", "classes", "method")})
    job.result.metrics.update(method=s.method, n=len(res["labels"]), cached=res.get("cached", False))


def _anomalies(job: _Job) -> None:
    from studio.ops.explore import anomalies

    s = job.spec
    res = anomalies(job.backend, s.dataset, s.split, s.limit, s.ood_dataset, job.settings,
                    progress=job.sub_progress("scoring"))
    ranking = res["ranking"][: max(s.top, 100)]
    job.result.add_json("anomalies.json", {**{k: v for k, v in res.items() if k not in ("ranking", "top_images")},
                                           "ranking": ranking})
    if res.get("top_images"):
        job.add_image("top_anomalies.png", imgs.grid(res["top_images"][: s.top]), {"top": s.top})
    job.result.metrics.update({k: v for k, v in res.items() if k not in ("ranking", "top_images")})
    job.result.metrics["top"] = ranking[: s.top]


def _train(job: _Job) -> None:
    """Train fresh weights into a temp file in the cache, then register them (studio.modelstore) under the name."""
    import uuid

    from studio.modelstore import find_model, import_model
    from studio.registry import get_backend_class

    s = job.spec
    recipe = {"dataset": s.dataset, "epochs": s.epochs, "seed": s.seed, "limit": s.limit, "options": s.options}
    taken = find_model(job.settings, s.backend, s.name)
    if taken is not None:
        if taken["meta"].get("train") == recipe and taken.get("owner") == job.owner:  # an earlier attempt of this
            summary = {"name": taken["name"], "backend": taken["backend"], "sha256": taken["sha256"],  # job made it
                       "size": taken["size"], "metrics": taken["meta"].get("metrics", {})}
            job.result.metrics.update(summary)
            job.result.add_json("model.json", summary)
            return
        raise InputError(f"{s.backend} model name {s.name!r} is taken (sha256 {taken['sha256'][:12]}); choose "
                         f"another name or `studio models remove {s.name} --backend {s.backend}` first")
    folder = job.settings.cache_path / "train"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{s.name}-{uuid.uuid4().hex[:12]}.safetensors"
    kwargs = {**s.options, **({"limit": s.limit} if s.limit is not None else {})}
    try:
        try:
            metrics = get_backend_class(s.backend).train(s.dataset, s.epochs, str(out), s.seed, job.settings,
                                                         progress=job.sub_progress("training"), **kwargs)
        except TypeError as exc:  # a training option the backend's recipe does not take
            if "keyword argument" not in str(exc):
                raise
            raise InputError(f"invalid training options for {s.backend}: {clip(exc, 160)}") from None
        scalars = {k: v for k, v in (metrics or {}).items()  # not "out": results never reveal a machine's folders
                   if k != "out" and isinstance(v, (str, int, float, bool, type(None)))}
        row = import_model(job.settings, s.backend, out, s.name, owner=job.owner, source="train job",
                           meta={"train": recipe, "metrics": scalars})
    finally:
        out.unlink(missing_ok=True)
    summary = {"name": row["name"], "backend": row["backend"], "sha256": row["sha256"], "size": row["size"],
               "metrics": scalars}
    job.result.metrics.update(summary)
    job.result.add_json("model.json", summary)


def required_capabilities(spec: BaseModel) -> set[str]:
    """The backend capabilities a job needs: seeds need SAMPLE, images ENCODE, rendering DECODE, and per op
    what its handler calls (a text direction needs TEXT, a projection only ENCODE)."""
    needs: set[str] = set()
    for src in spec.sources():
        needs.add(SAMPLE if src.seed is not None else ENCODE)
    op = spec.op
    if op in ("sample", "evaluate"):
        needs.add(SAMPLE)
    elif op in ("roundtrip", "anomalies", "project"):
        needs.add(ENCODE)
    elif op == "fit_vector":
        needs.add(ENCODE if spec.dataset is not None else SAMPLE if spec.with_seeds is not None else TEXT)
    elif op == "train":
        needs.add(TRAIN)
    if op not in ("project", "fit_vector", "train"):
        needs.add(DECODE)
    return needs


def check_capabilities(spec: BaseModel) -> None:
    """InputError (one line) when the spec's backend lacks a capability the op needs."""
    from studio.registry import get_backend_class

    cls = get_backend_class(spec.backend)
    missing = required_capabilities(spec) - set(cls.capabilities)
    if missing:
        raise InputError(f"backend {cls.name!r} cannot run a {spec.op} job like this: it lacks "
                         f"{', '.join(sorted(missing))} (capabilities: {', '.join(sorted(cls.capabilities))})")


OPS: dict[str, Callable[[_Job], None]] = {
    "sample": _sample, "interpolate": _interpolate, "edit": _edit, "traverse": _traverse, "analogy": _analogy,
    "roundtrip": _roundtrip, "fit_vector": _fit_vector, "evaluate": _evaluate, "walk": _walk,
    "project": _project, "anomalies": _anomalies, "train": _train,
}


def execute(spec: BaseModel | dict, runtime: Runtime | None = None, progress: Progress = no_progress,
            workdir: Path | None = None, owner: str | None = None) -> JobResult:
    """Validate and run one job spec for `owner` (whose vectors it may use and whose new vectors it saves);
    return its artifacts and metrics."""
    runtime = runtime or Runtime()
    spec = parse_spec(spec, runtime.settings, check_backend=False)  # parsed once (inline images decode once)
    check_capabilities(spec)  # before its options are checked
    check_backend_options(spec)
    started = time.perf_counter()
    job = _Job(spec, runtime, progress, workdir, owner)
    OPS[spec.op](job)
    job.result.metrics["seconds"] = round(time.perf_counter() - started, 4)
    return job.result


BATCHABLE_OPS = ("sample",)
BATCH_VARYING = ("seed", "n")


def execute_batch(specs: list[BaseModel | dict], runtime: Runtime | None = None,
                  progress: Progress = no_progress) -> list[JobResult]:
    """Run compatible sample specs (equal apart from seed and n) in one forward pass, one result per spec.

    Noise is drawn per seed, so each result equals what `execute` gives for its spec alone (up to the
    backend's batch invariance; the job queue's micro-batching runs through here).
    """
    runtime = runtime or Runtime()
    parsed = [parse_spec(s, runtime.settings) for s in specs]
    if not parsed:
        return []

    def shared(spec: BaseModel) -> dict:
        return {k: v for k, v in spec_dict(spec).items() if k not in BATCH_VARYING}

    if parsed[0].op not in BATCHABLE_OPS or any(shared(s) != shared(parsed[0]) for s in parsed[1:]):
        raise InputError("only sample jobs that differ in nothing but seed and n can run as one batch")
    check_capabilities(parsed[0])
    started = time.perf_counter()
    jobs = [_Job(s, runtime, progress, None) for s in parsed]
    seeds = [[s.seed + i for i in range(s.n)] for s in parsed]
    first = parsed[0]
    point = random_point(jobs[0].backend, [x for group in seeds for x in group], jobs[0].options,
                         first.temperature, first.truncation)
    frames = jobs[0].render(point)
    offset = 0
    for job, group in zip(jobs, seeds, strict=True):
        _sample_outputs(job, group, frames[offset:offset + len(group)])
        offset += len(group)
    seconds = round(time.perf_counter() - started, 4)
    for job in jobs:
        job.result.metrics.update(seconds=seconds, batched_with=len(jobs) - 1)
    return [job.result for job in jobs]


__all__ = ["Artifact", "JobResult", "Runtime", "check_capabilities", "execute", "execute_batch",
           "interpolate_points", "batch_size", "required_capabilities", "take"]
