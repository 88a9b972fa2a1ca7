"""Sample quality in the feature space of the project's classifier for a dataset (studio.classifier).

`evaluate_backend(backend, dataset=...)` decodes `repeats` draws of n prior samples and scores each draw
against the dataset's whole test split, in the 128-d features of that dataset's classifier. Its metrics:

- `fcd`: the Fréchet classifier distance, the Fréchet distance between Gaussians fitted to classifier
  features (FID with the project's classifier in place of Inception), of samples against the test split;
  mean over the draws. (Called FLD before; same numbers.)
- `fcd_floor`: the same for draws of n real training images: what a perfect generator scores at this n.
  The FCD is biased upwards at finite n, so the floor is well above 0 and the yardstick is `fcd_ratio`.
- `fcd_ratio`: fcd / fcd_floor.
- `kid`: the kernel inception distance (Binkowski et al. 2018) with the classifier's features: the unbiased
  estimate of MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3; mean over the draws.
  Unbiased, so it needs no floor to read: about 0 for samples from the data's distribution (it can be
  slightly negative), growing with the gap.
- `kid_floor`: the KID of draws of real training images (about 0; what the train/test difference adds).
  There is no KID ratio: a floor about 0 makes one meaningless. KID's scale is set by the classifier's
  features, so it is not comparable with Inception KIDs (or across datasets).
- `fcd_range`, `fcd_floor_range`, `kid_range`, `kid_floor_range`: [min, max] over the draws.
- `confident_share`: the share of samples whose top class probability is at least 0.9;
  `class_share`: the share of samples predicted as each class;
- `dataset`, `n`, `repeats`, `seed`, `backend`, `model`: what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from studio.contract import SEED, Backend, Progress, no_progress
from studio.errors import InputError

if TYPE_CHECKING:
    import torch

    from studio.config import Settings

CHUNK = 250
KERNEL_BLOCK = 1024  # rows of a kernel matrix computed at once (1024 x 10000 float32: 41 MB)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, b_stats: Reference | None = None) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples).

    ||mu_a - mu_b||^2 + tr(A + B - 2 (A^1/2 B A^1/2)^1/2), computed with symmetric eigendecompositions
    in float64, so it is real and non-negative up to rounding. `b_stats`: feats_b's precomputed mean and
    covariance, for scoring many sets against one reference.
    """
    a, b = _pair(feats_a, feats_b)
    mu_b, cov_b = (b.mean(0), np.cov(b, rowvar=False)) if b_stats is None else (b_stats.mean, b_stats.cov)
    return _frechet(a.mean(0), np.cov(a, rowvar=False), mu_b, cov_b)


def _frechet(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    vals, vecs = np.linalg.eigh(cov_a)
    sqrt_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)
    return max(distance, 0.0)


def _pair(feats_a: np.ndarray, feats_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"feature sets must be 2-D with equal widths, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise InputError("each feature set needs at least 2 rows")
    return a, b


def mean_kernel(feats_a: np.ndarray, feats_b: np.ndarray | None = None) -> float:
    """Mean of the cubic polynomial kernel (x.y / d + 1)^3 over all pairs of rows of a and b, or, without b,
    over the pairs of distinct rows of a (the diagonal left out, as the unbiased MMD^2 needs).

    Kernel blocks are computed in float32 (2x faster; classifier features are float32 anyway) and summed in
    float64: the mean agrees with an all-float64 computation to about 1e-9 relative.
    """
    a = np.asarray(feats_a, dtype=np.float32)
    b = a if feats_b is None else np.asarray(feats_b, dtype=np.float32)
    d = a.shape[1]
    total = 0.0
    for i in range(0, len(a), KERNEL_BLOCK):
        block = a[i:i + KERNEL_BLOCK] @ b.T
        block /= d
        block += 1
        total += float((block * block * block).sum(dtype=np.float64))
    if feats_b is None:
        total -= float(((np.einsum("ij,ij->i", a, a, dtype=np.float64) / d + 1.0) ** 3).sum())
        return total / (len(a) * (len(a) - 1))
    return total / (len(a) * len(b))


def kernel_distance(feats_a: np.ndarray, feats_b: np.ndarray, b_self: float | None = None) -> float:
    """KID: the unbiased MMD^2 estimate between two feature sets with the kernel (x.y / d + 1)^3.

    mean k(a_i, a_j) over i != j + mean k(b_i, b_j) over i != j - 2 mean k(a_i, b_j). Its expectation is 0 when
    both sets come from one distribution, so a single estimate may be slightly negative. `b_self`: the
    precomputed `mean_kernel(feats_b)`, for scoring many sets against one reference.
    """
    a, b = _pair(feats_a, feats_b)
    return mean_kernel(a) + (mean_kernel(b) if b_self is None else b_self) - 2 * mean_kernel(a, b)


def confident_share(images: torch.Tensor, threshold: float = 0.9, dataset: str = "mnist") -> float:
    """Share of images (N x 1 x 28 x 28 in [-1, 1]) whose top probability under `dataset`'s classifier is at
    least `threshold`."""
    from studio.classifier import load_classifier

    if len(images) == 0:
        raise InputError("confident_share needs at least one image")
    proba = load_classifier(dataset).predict_proba(images)
    return float((proba.max(1).values >= threshold).float().mean())


@dataclass(frozen=True)
class Reference:
    """A feature set that draws are scored against, with what each distance needs from it computed once."""

    feats: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    self_kernel: float  # mean_kernel(feats)

    @classmethod
    def of(cls, feats: np.ndarray) -> Reference:
        f = np.asarray(feats, dtype=np.float64)
        return cls(np.asarray(feats), f.mean(0), np.cov(f, rowvar=False), mean_kernel(feats))


_reference_cache: dict[tuple[str, str, str], Reference] = {}


def dataset_features(dataset: str, split: str, settings: Settings | None = None) -> Reference:
    """Classifier features of a whole split of `dataset`, as a Reference (cached per process, dataset and data
    cache folder)."""
    from studio.classifier import load_classifier
    from studio.config import load_settings
    from studio.datasets import load_dataset

    settings = settings or load_settings()
    key = (str(settings.cache_path), dataset, split)
    if key not in _reference_cache:
        images = load_dataset(dataset, split, settings=settings).images
        _reference_cache[key] = Reference.of(load_classifier(dataset).features(images).numpy())
    return _reference_cache[key]


def sample_images(backend: Backend, n: int, seed: int = 0, progress: Progress = no_progress) -> torch.Tensor:
    """Decode prior draws (seeds seed .. seed+n-1) of the backend's SEED-role space, in chunks."""
    import torch

    space = backend.space_for(SEED)
    out = []
    total = -(-n // CHUNK)
    for i, start in enumerate(range(seed, seed + n, CHUNK)):
        seeds = range(start, min(start + CHUNK, seed + n))
        point = {space.name: backend.sample_prior(space.name, seeds=seeds), **backend.condition(len(seeds))}
        out.append(backend.decode(point).float().cpu())
        progress(i + 1, total, f"sampling {min(start + CHUNK, seed + n) - seed}/{n}")
    return torch.cat(out)


def _check_draws(dataset: str, n: int, repeats: int, train_size: int | None = None) -> None:
    if n < 10:
        raise InputError(f"evaluate needs n of at least 10, got {n}")
    if repeats < 1:
        raise InputError(f"evaluate needs repeats of at least 1, got {repeats}")
    if train_size is not None and n * repeats > train_size:
        raise InputError(f"evaluate on {dataset} needs n x repeats of at most {train_size} (disjoint subsets of "
                         f"its training set), got {n} x {repeats}")


def draw_scores(feats: np.ndarray, n: int, reference: Reference, suffix: str = "") -> dict:
    """FCD and KID of each of the len(feats) // n consecutive draws of n rows against `reference`:
    `fcd<suffix>`, `kid<suffix>` (means over the draws) and their `_range`s ([min, max])."""
    draws = [feats[i:i + n] for i in range(0, len(feats) - n + 1, n)]
    fcds = [frechet_distance(f, reference.feats, reference) for f in draws]
    kids = [kernel_distance(f, reference.feats, reference.self_kernel) for f in draws]
    return {f"fcd{suffix}": round(float(np.mean(fcds)), 4), f"kid{suffix}": round(float(np.mean(kids)), 4),
            f"fcd{suffix}_range": [round(min(fcds), 4), round(max(fcds), 4)],
            f"kid{suffix}_range": [round(min(kids), 4), round(max(kids), 4)]}


def floor_scores(dataset: str = "mnist", n: int = 2000, repeats: int = 5, seed: int = 0,
                 settings: Settings | None = None) -> dict:
    """What a perfect generator scores: FCD and KID of `repeats` disjoint draws of n real training images of
    `dataset` (drawn with `seed`) against its test split: `fcd_floor`, `kid_floor` and their `_range`s."""
    from studio.classifier import check_dataset, load_classifier
    from studio.config import load_settings
    from studio.datasets import load_dataset

    check_dataset(dataset)
    _check_draws(dataset, n, repeats)
    settings = settings or load_settings()
    train = load_dataset(dataset, "train", settings=settings)
    _check_draws(dataset, n, repeats, len(train))
    subset = np.random.default_rng(seed).choice(len(train), size=n * repeats, replace=False)
    feats = load_classifier(dataset).features(train.images[subset]).numpy()
    return draw_scores(feats, n, dataset_features(dataset, "test", settings), "_floor")


def evaluate_backend(backend: Backend, n: int = 2000, seed: int = 0, settings: Settings | None = None,
                     progress: Progress = no_progress, repeats: int = 5, dataset: str = "mnist") -> dict:
    """FCD and KID of `n` samples against `dataset`'s test split, their floors (n real training images), and
    the confident share, in the features of the dataset's classifier (see the module docstring for each key).

    Every distance is a mean over `repeats` independent draws of n: sample sets from seeds seed ..
    seed+n*repeats-1 (n consecutive seeds each) and disjoint training subsets drawn with `seed`. One draw of
    2000 is a noisy yardstick (the MNIST FCD floor alone ranged 2.3-4.3 over five subsets); the mean estimates
    the same expected distances with a smaller spread, which is reported. Needs a backend whose images have
    the dataset's shape (1 x 28 x 28).
    """
    from studio.classifier import INPUT_SHAPE, check_dataset, load_classifier
    from studio.config import load_settings

    check_dataset(dataset)
    shape = tuple(backend.image_shape())
    if shape != INPUT_SHAPE:
        raise InputError(f"evaluate on {dataset} needs {'x'.join(map(str, INPUT_SHAPE))} images (its images and "
                         f"classifier's input); backend {backend.name!r} makes {'x'.join(map(str, shape))}")
    settings = settings or load_settings()
    floor = floor_scores(dataset, n, repeats, seed, settings)  # checks n and repeats before any sampling
    classifier = load_classifier(dataset)
    samples = sample_images(backend, n * repeats, seed, progress)
    proba = classifier.predict_proba(samples)
    scores = draw_scores(classifier.features(samples).numpy(), n, dataset_features(dataset, "test", settings))
    counts = np.bincount(proba.argmax(1).numpy(), minlength=proba.shape[1])
    return {"fcd": scores["fcd"], "fcd_floor": floor["fcd_floor"],
            "fcd_ratio": round(scores["fcd"] / max(floor["fcd_floor"], 1e-12), 3),
            "kid": scores["kid"], "kid_floor": floor["kid_floor"],
            "fcd_range": scores["fcd_range"], "fcd_floor_range": floor["fcd_floor_range"],
            "kid_range": scores["kid_range"], "kid_floor_range": floor["kid_floor_range"],
            "confident_share": round(float((proba.max(1).values >= 0.9).float().mean()), 4),
            "dataset": dataset, "n": n, "repeats": repeats, "seed": seed, "backend": backend.name,
            "model": backend.model.name, "class_share": [round(float(c) / len(samples), 4) for c in counts]}
