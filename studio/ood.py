"""Out-of-distribution scores: does an image look like what the model was trained on?

Written once over the contract (encode, decode), for every backend that can do both.

The score of an image x is its reconstruction error, normalised per pixel: with r = decode(encode(x)) (the exact
codec latent, no quantisation),

    score(x) = mean over pixels p of |r_p - x_p| / (b_p + FLOOR * mean(b)),

where b_p is the mean absolute residual at pixel p over FIT_IMAGES images of the model's training split. A pixel
the model always reconstructs well (an MNIST border) weighs much more than one it never does (a stroke's edge):
a shirt reaching the border of the frame is caught even though the digit model reconstructs it about as well, on
average, as a messy "8". Measured on the shipped MNIST VAE (bench/bench_ood.py), this flags 99% of Fashion-MNIST
test images where the plain mean squared error flags 88%; adding the latent's density under the coding statistics
(-log N(mu)) changed nothing measurable, so the score is the reconstruction term alone.

Calibration: the scores of CALIBRATION_IMAGES images of the model's own test split; an image scoring above their
99.9th percentile is flagged. The training dataset comes from the model (`ModelInfo.extra["dataset"]`, the weights
file's metadata, or a pipeline folder's training.json); a model whose dataset is unknown, or not one the studio can
load, gets no flag, and says so. A calibration is computed once per (backend, weights sha256, image shape, score
version), with the backend's default options, and cached under `<cache>/ood/`; it is deterministic (fixed images,
fixed order). A backend whose encoding is too slow for it (GAN inversion: an optimisation per image) is not calibrated
unless asked (`calibrate(..., budget_s=None)`): its results carry the reason instead of a flag.
`STUDIO_OOD_CHECK=off` in the environment switches the check off (results say so).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from studio.contract import CODEC, DECODE, ENCODE, Backend, Point, Progress, no_progress
from studio.errors import StudioError

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from studio.config import Settings

SCORE_VERSION = 1
SCORE_NAME = "pixel-normalised reconstruction error"
PERCENTILE = 99.9
FLOOR = 0.1  # the per-pixel scale's floor, relative to its mean: no pixel weighs more than 1/FLOOR times the mean
FIT_IMAGES = 2000  # training-split images that set the per-pixel scale b
CALIBRATION_IMAGES = 5000  # test-split images whose score distribution sets the threshold
PROBE_IMAGES = 8  # images timed first, to decide whether the whole calibration fits the budget; while a probe
PROBE_SECONDS = 1.0  # takes less than this, the next is 4x larger (up to BATCH): small calls are overhead-bound
BUDGET_S = 180.0  # a calibration projected to take longer is skipped (GAN inversion), unless asked for
BATCH = 256
MAX_LISTED = 64  # per-image entries kept in a job's metrics
CACHE_FOLDER = "ood"
SWITCH = "STUDIO_OOD_CHECK"  # "off": no check at all (every result says so); anything else, or unset: on

_memory: dict[str, Calibration] = {}
_skipped: dict[str, str] = {}  # in this process: models whose calibration was too slow (re-probed per process)


@dataclass(frozen=True)
class Calibration:
    """A model's calibrated OOD check: the per-pixel scale, the threshold and the sorted calibration scores."""

    backend: str
    model: str
    sha256: str
    datasets: tuple[str, ...]
    shape: tuple[int, int, int]
    scale: np.ndarray  # (C*H*W,) b_p + FLOOR * mean(b)
    scores: np.ndarray  # sorted calibration scores (test split)
    threshold: float
    n_fit: int
    seconds: float

    @property
    def label(self) -> str:
        """The model as users name it: backend/model."""
        return f"{self.backend}/{self.model}"

    def percentile(self, score: float) -> float:
        """The share (in %) of calibration images scoring at most `score`."""
        return float(100.0 * np.searchsorted(self.scores, score, side="right") / max(len(self.scores), 1))

    def describe(self) -> dict:
        return {"calibrated": True, "model": self.label, "trained_on": "+".join(self.datasets),
                "score": SCORE_NAME, "score_version": SCORE_VERSION, "percentile": PERCENTILE,
                "threshold": round(self.threshold, 6), "calibration_images": int(len(self.scores)),
                "fit_images": self.n_fit}


@dataclass(frozen=True)
class Assessment:
    """Scores and flags of some images against a model's calibration (or the reason there is none)."""

    model: str  # backend/model
    calibration: Calibration | None
    reason: str = ""  # why there is no calibration
    scores: np.ndarray | None = None
    labels: tuple[str, ...] = ()

    @property
    def flags(self) -> np.ndarray | None:
        if self.calibration is None or self.scores is None:
            return None
        return self.scores > self.calibration.threshold

    @property
    def share(self) -> float | None:
        """The share of images flagged (None without a calibration)."""
        flags = self.flags
        return float(flags.mean()) if flags is not None and len(flags) else None

    def metrics(self, max_listed: int = MAX_LISTED) -> dict:
        """JSON-ready: the calibration, n, flagged, share and up to `max_listed` per-image entries (flagged ones
        first, then in order)."""
        if self.calibration is None or self.scores is None:
            return {"calibrated": False, "model": self.model, "reason": self.reason}
        cal, flags = self.calibration, self.flags
        order = sorted(range(len(self.scores)), key=lambda i: (not flags[i], i))[:max_listed]
        images = [{"image": self.labels[i] if i < len(self.labels) else str(i),
                   "score": round(float(self.scores[i]), 5),
                   "percentile": round(cal.percentile(float(self.scores[i])), 3), "flagged": bool(flags[i])}
                  for i in sorted(order)]
        return {**cal.describe(), "n": int(len(self.scores)), "flagged": int(flags.sum()), "share": self.share,
                "images": images, "images_listed": len(images)}

    def warning(self) -> str | None:
        """The user-facing warning when any image is flagged, else None."""
        flags = self.flags
        if flags is None or not flags.any():
            return None
        cal = self.calibration
        what = f"model {cal.label} was trained on ({'+'.join(cal.datasets)})"
        if len(flags) == 1:
            s = float(self.scores[0])
            named = f"{self.labels[0]}: " if self.labels and self.labels[0] != "the image" else ""
            return (f"{named}this image looks unlike what {what}: out-of-distribution score {s:.3g} is beyond the "
                    f"{PERCENTILE:g}th percentile of its test set ({cal.threshold:.3g}); expect a poor result")
        k = int(flags.sum())
        if len(self.labels) == len(flags) and len(flags) <= 8:
            named = ", ".join(self.labels[i] for i in range(len(flags)) if flags[i])
            return f"{named}: {'this image looks' if k == 1 else 'these images look'} unlike what {what}"
        return (f"{k} of {len(flags)} images ({100 * k / len(flags):.1f}%) look unlike what {what} "
                f"(beyond the {PERCENTILE:g}th percentile of its test set)")


# ----- the model's training data -----

def training_dataset(backend: Backend) -> str | None:
    """The dataset name the model says it was trained on: its ModelInfo extra, its weights file's metadata
    (`dataset`, or `training.dataset`), or a pipeline folder's training.json; None when it does not say."""
    model = backend.model
    name = model.extra.get("dataset") if isinstance(model.extra, dict) else None
    path = Path(model.path) if model.path else None
    if not name and path is not None and path.is_file() and path.suffix == ".safetensors":
        from studio.safetensors_io import read_metadata

        try:
            meta = read_metadata(path)
        except (OSError, StudioError, ValueError):
            meta = {}
        name = meta.get("dataset")
        if not name and meta.get("training"):
            try:
                name = json.loads(meta["training"]).get("dataset")
            except (ValueError, AttributeError):
                name = None
    if not name and path is not None and (path / "training.json").is_file():
        try:
            name = json.loads((path / "training.json").read_text()).get("dataset")
        except (OSError, ValueError, AttributeError):
            name = None
    return str(name) if isinstance(name, str) and name else None


def dataset_parts(name: str) -> tuple[str, ...] | None:
    """The built-in datasets a training dataset name stands for ("mnist" -> (mnist,), "mnist-fashion" -> (mnist,
    fashion)); None when it is not made of built-in datasets (a folder, or a name the studio does not know)."""
    from studio.datasets import BUILDERS

    if name in BUILDERS:
        return (name,)
    parts = tuple(name.split("-"))
    return parts if len(parts) > 1 and all(p in BUILDERS for p in parts) else None


# ----- scoring -----

def residuals(backend: Backend, images: torch.Tensor, options: BaseModel | None = None, point: Point | None = None,
              progress: Progress = no_progress) -> np.ndarray:
    """|decode(encode(x)) - x| per element, (N, C*H*W) float32, from the exact codec latent. `point`: the codec
    latents of `images` when the caller has encoded them already (they are not encoded again)."""
    import torch

    space = backend.space_for(CODEC, options).name
    out = []
    n = len(images)
    for start in range(0, n, BATCH):
        x = images[start:start + BATCH].float()
        with torch.no_grad():
            z = point[space][start:start + BATCH] if point is not None else backend.encode(x, options)[space]
            out.append(reconstruction_residuals(x, backend.decode({space: z}, options)))
        progress(min(start + BATCH, n), n)
    return np.concatenate(out) if out else np.zeros((0, math.prod(images.shape[1:])), np.float32)


def reconstruction_residuals(images: torch.Tensor, reconstructions: torch.Tensor) -> np.ndarray:
    """|r - x| per element, (N, C*H*W) float32, both clamped to [-1, 1]: `reconstructions` must be the exact
    (unquantised) decode(encode(images)), e.g. a round trip's `RoundtripResult.unquantised`."""
    if tuple(reconstructions.shape) != tuple(images.shape):
        raise ValueError(f"reconstructions of shape {list(reconstructions.shape)} do not match images of shape "
                         f"{list(images.shape)}")
    r = reconstructions.detach().float().clamp(-1, 1)
    return (r - images.float().clamp(-1, 1)).abs().reshape(len(images), -1).numpy().astype(np.float32)


def scale_from(fit_residuals: np.ndarray) -> np.ndarray:
    """The per-pixel scale: the mean absolute residual per pixel plus FLOOR times its mean."""
    b = fit_residuals.astype(np.float64).mean(0)
    return (b + FLOOR * max(float(b.mean()), 1e-6)).astype(np.float32)


def scores_from(res: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Scores from residuals (N, D) and a per-pixel scale (D,)."""
    return (res.astype(np.float64) / scale.astype(np.float64)).mean(1)


# ----- calibration -----

def _key(backend: Backend, shape: tuple[int, ...], datasets: tuple[str, ...]) -> dict:
    return {"v": SCORE_VERSION, "backend": backend.name, "sha256": backend.model.sha256, "shape": list(shape),
            "datasets": list(datasets), "fit": FIT_IMAGES, "calibration": CALIBRATION_IMAGES, "floor": FLOOR,
            "percentile": PERCENTILE}


def cache_file(settings: Settings, key: dict) -> Path:
    """Where a calibration is cached: `<cache>/ood/<backend>-<sha256 prefix>-<key digest>.npz`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(settings.cache_path) / CACHE_FOLDER / f"{key['backend']}-{key['sha256'][:16]}-{digest}.npz"


def _load(path: Path, backend: Backend, datasets: tuple[str, ...], shape: tuple[int, int, int]) -> Calibration | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            scale, scores = z["scale"].astype(np.float32), z["scores"].astype(np.float64)
    except (OSError, ValueError, KeyError):
        return None
    if scale.shape != (math.prod(shape),) or not len(scores):
        return None
    return Calibration(backend.name, backend.model.name, backend.model.sha256, datasets, shape, scale, scores,
                       float(meta["threshold"]), int(meta["n_fit"]), float(meta.get("seconds", 0.0)))


def _save(path: Path, cal: Calibration) -> None:
    from studio.files import atomic_write

    meta = {"threshold": cal.threshold, "n_fit": cal.n_fit, "seconds": cal.seconds, "model": cal.label,
            "datasets": list(cal.datasets)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, scale=cal.scale, scores=cal.scores, meta=np.array(json.dumps(meta)))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())


def _split_images(backend: Backend, datasets: tuple[str, ...], split: str, total: int, settings: Settings,
                  options: BaseModel | None) -> torch.Tensor:
    """The first total/len(datasets) images of each dataset's split, in the backend's image shape."""
    import torch

    from studio.ops.explore import load_in_shape

    each = max(2, total // len(datasets))
    return torch.cat([load_in_shape(backend, name, split, each, settings, options).images for name in datasets])


def calibrate(backend: Backend, settings: Settings, progress: Progress = no_progress,
              budget_s: float | None = BUDGET_S) -> Calibration | str:
    """The model's calibration (cached), or the reason there is none. `budget_s`: skip a calibration projected
    to take longer (None: never skip)."""
    if os.environ.get(SWITCH, "").strip().lower() == "off":
        return f"the check is switched off ({SWITCH}=off)"
    if not {ENCODE, DECODE} <= set(backend.capabilities):
        return f"backend {backend.name!r} cannot encode and decode, so it has no reconstruction to score"
    if not backend.model.sha256:
        return f"model {backend.name}/{backend.model.name} has no sha256 to key a calibration by"
    name = training_dataset(backend)
    if name is None:
        return f"model {backend.name}/{backend.model.name} does not say which dataset it was trained on"
    datasets = dataset_parts(name)
    if datasets is None:
        return (f"model {backend.name}/{backend.model.name} was trained on {name!r}, which is not a built-in dataset "
                "the studio can calibrate on")
    options = backend.parse_options({})
    shape = tuple(int(v) for v in backend.image_shape(options))
    key = _key(backend, shape, datasets)
    path = cache_file(settings, key)
    memo = str(path)
    if memo in _memory:
        return _memory[memo]
    if budget_s is not None and memo in _skipped:
        return _skipped[memo]
    cal = _load(path, backend, datasets, shape) if path.is_file() else None
    if cal is None:
        try:
            cal = _compute(backend, settings, datasets, shape, options, progress, budget_s)
        except StudioError as exc:  # the dataset is not installed here, say
            return f"no calibration for {backend.name}/{backend.model.name}: {exc}"
        if isinstance(cal, str):
            _skipped[memo] = cal
            return cal
        _save(path, cal)
    _memory[memo] = cal
    return cal


def _probe(backend: Backend, fit: torch.Tensor, options: BaseModel) -> tuple[np.ndarray, float]:
    """Residuals of the first images of `fit` and the seconds per image of the last, largest call: PROBE_IMAGES
    first, then 4x more per call until a call takes PROBE_SECONDS or holds BATCH images. A call's fixed cost
    (a busy machine, a first call) dominates a few images; a full batch shows the per-image cost the
    calibration will pay (a fast VAE measured 40x dearer per image on 8 images than on 256)."""
    parts, done, size = [], 0, PROBE_IMAGES
    while True:
        started = time.perf_counter()
        part = residuals(backend, fit[done:done + size], options)
        seconds = time.perf_counter() - started
        parts.append(part)
        done += len(part)
        if seconds >= PROBE_SECONDS or size >= BATCH or done >= len(fit):
            return np.concatenate(parts), seconds / max(len(part), 1)
        size = min(4 * size, BATCH)


def _compute(backend: Backend, settings: Settings, datasets: tuple[str, ...], shape: tuple[int, int, int],
             options: BaseModel, progress: Progress, budget_s: float | None) -> Calibration | str:
    started = time.perf_counter()
    message = f"calibrating the out-of-distribution check on {'+'.join(datasets)} (once per model)"
    progress(0, 3, message)
    fit = _split_images(backend, datasets, "train", FIT_IMAGES, settings, options)
    test = _split_images(backend, datasets, "test", CALIBRATION_IMAGES, settings, options)
    probe, per_image = _probe(backend, fit, options)
    projected = per_image * (len(fit) + len(test) - len(probe))
    if budget_s is not None and projected > budget_s:
        return (f"no calibration for {backend.name}/{backend.model.name}: encoding and decoding take "
                f"{per_image:.2g} s per image here, so its {len(fit) + len(test)} calibration images would take "
                f"about {projected:.0f} s (budget {budget_s:.0f} s)")
    progress(1, 3, message)
    rest = residuals(backend, fit[len(probe):], options)
    scale = scale_from(np.concatenate([probe, rest]) if len(rest) else probe)
    progress(2, 3, message)
    scores = np.sort(scores_from(residuals(backend, test, options), scale))
    threshold = float(np.percentile(scores, PERCENTILE))
    progress(3, 3, message)
    return Calibration(backend.name, backend.model.name, backend.model.sha256, datasets, shape, scale, scores,
                       threshold, len(fit), round(time.perf_counter() - started, 3))


# ----- assessing images -----

def assess(backend: Backend, images: torch.Tensor, settings: Settings, options: BaseModel | None = None,
           point: Point | None = None, labels: tuple[str, ...] = (), progress: Progress = no_progress,
           budget_s: float | None = BUDGET_S, reconstructions: torch.Tensor | None = None) -> Assessment:
    """Score `images` (NCHW in [-1, 1], the backend's shape) against the model's calibration. `point`: their codec
    latents when already encoded; `reconstructions`: their exact (unquantised) reconstructions when already decoded
    (nothing is encoded or decoded then). Without a calibration (or when `options` change the image shape it was
    made at), the Assessment carries the reason and nothing is encoded."""
    label = f"{backend.name}/{backend.model.name}"
    cal = calibrate(backend, settings, progress, budget_s)
    if isinstance(cal, str):
        return Assessment(label, None, cal)
    shape = tuple(int(v) for v in backend.image_shape(options))
    if shape != cal.shape:
        return Assessment(label, None, f"the check is calibrated at image shape {'x'.join(map(str, cal.shape))}, "
                                       f"these options give {'x'.join(map(str, shape))}")
    if reconstructions is not None:
        res = reconstruction_residuals(images, reconstructions)
    else:
        res = residuals(backend, images, options, point, progress)
    return Assessment(label, cal, "", scores_from(res, cal.scale), tuple(labels))


def record(metrics: dict, assessment: Assessment, key: str = "ood") -> None:
    """Put an assessment into a job's metrics: `metrics[key]` (the details), `ood_share` (None without a
    calibration), a warning in `metrics["warnings"]` when an image is flagged, a note when there is no check."""
    metrics[key] = assessment.metrics()
    metrics["ood_share"] = assessment.share
    warning = assessment.warning()
    if warning:
        metrics.setdefault("warnings", []).append(warning)
    elif assessment.calibration is None:
        metrics.setdefault("notes", []).append(f"no out-of-distribution check: {assessment.reason}")


def merge(assessments: list[Assessment]) -> Assessment:
    """Several assessments against the same model (one per source image) as one."""
    if not assessments:
        raise ValueError("nothing to merge")
    first = assessments[0]
    if first.calibration is None:
        return first
    scores = np.concatenate([a.scores for a in assessments if a.scores is not None])
    labels = tuple(label for a in assessments for label in a.labels)
    return Assessment(first.model, first.calibration, "", scores, labels)


__all__ = ["Assessment", "Calibration", "assess", "calibrate", "dataset_parts", "merge", "reconstruction_residuals",
           "record", "residuals", "scale_from", "scores_from", "training_dataset"]
