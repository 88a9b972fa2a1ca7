"""Attribute vectors: directions in a latent space that add or remove an attribute.

Pure math over tensors (`fit_vector`, `pca_directions`), plus two fits over a loaded backend
(`fit_attribute_vector` from a labelled dataset, `fit_example_vector` from picked seeds).

Methods (after Tom White, "Sampling Generative Networks", 2016, and InterFaceGAN):
- `mean`: mean(pos) - mean(neg).
- `balanced`: White's bias correction. Labels of a correlated attribute (the confounder: the class, for
  MNIST) split both sides into cells, and every cell gets the same weight, which is what resampling each
  cell to equal counts does in expectation, without the sampling noise. Cells present on both sides
  (at least `MIN_CELL` training examples each) give per-cell mean differences, averaged with equal
  weights; cells found on one side only are dropped, because they carry the confounder. When no cell is
  shared (the attribute *is* the label, e.g. `class:7` vs the rest), each side's mean is the equal-weight
  average of its cell means instead, so an over-represented class does not dominate.
- `classifier`: the normal of a logistic-regression boundary (class-balanced), rescaled so its length is
  the projection of the mean difference onto it: strength 1 is one typical attribute step.

Over a labelled dataset (`fit_attribute_vector`), `balanced` and `classifier` also take the quantile
split of a measured attribute (thickness, slant) within each class, so that each class fills the same
share of both sides: the cells are balanced by construction, and the classifier finds no class signal
to lean on. `mean` stays the uncorrected baseline.

Scale (what strength 1 means):
- `step`: the length above, one typical attribute step (from the typical "without" example to the
  typical "with" one): White's convention, the default of `fit_vector` and of picked-example vectors.
- `std`: the unit direction times the standard deviation of the data projected on it (a `reference`
  set; by default the fitted latents): strength s moves s standard deviations along the attribute, the
  unit of traversal ranges. `fit_attribute_vector` uses it, with all the encoded images as reference.
  The top and bottom 30% of an attribute lie about 2 to 2.3 standard deviations apart, so strength +-2
  is a strong edit that stays near the data; a `step` vector at +2 overshoots the extremes.

Each fit reports its AUC: the vector used as a linear classifier (score = projection on it), on a
held-out part of both sides that the fit never saw, or in-sample when `holdout` is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from studio.contract import CODEC, ENCODE, SEED, Progress, no_progress
from studio.errors import InputError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from studio.config import Settings
    from studio.contract import Backend

METHODS = ("mean", "balanced", "classifier")
SCALES = ("step", "std")
DEFAULT_METHOD = "classifier"  # chosen with bench/bench_vectors.py (thickness +2 edit criterion)
CLASS_BALANCED_SPLIT = ("balanced", "classifier")  # methods whose dataset split is taken within each class
DEFAULT_SCALE = "std"  # for fit_attribute_vector
MIN_CELL = 3  # fewest training examples per side for a confounder cell to count in `balanced`
ENCODE_BATCH = 256


@dataclass
class VectorFit:
    """A fitted attribute vector and how well it separates the two sides."""

    vector: torch.Tensor  # (*shape), float32
    method: str
    auc: float  # the vector as a linear classifier (see auc_split)
    n_pos: int  # examples on each side, training and held-out together
    n_neg: int
    norm: float
    auc_split: str = "held-out"  # "held-out" or "in-sample"
    scale: str = "step"  # what strength 1 means: "step" or "std" (see the module docstring)
    sigma: float = 0.0  # std of the reference data projected on the unit direction
    separation: float = 0.0  # the mean difference projected on the unit direction, in units of sigma

    def describe(self) -> dict:
        return {"method": self.method, "auc": self.auc, "auc_split": self.auc_split, "n_pos": self.n_pos,
                "n_neg": self.n_neg, "norm": self.norm, "scale": self.scale, "sigma": self.sigma,
                "separation": self.separation, "shape": list(self.vector.shape)}


def _flat(x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim < 2:
        raise InputError(f"{what} must be batch-first with at least 2 dimensions, got shape {tuple(a.shape)}")
    return a.reshape(len(a), -1)


def _holdout_split(n: int, holdout: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    n_hold = 0 if holdout == 0 else max(1, int(round(holdout * n)))
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def _groups(groups: object, n: int, what: str) -> np.ndarray:
    g = np.asarray(groups)
    if g.shape != (n,):
        raise InputError(f"{what} must hold one label per example ({n}), got shape {tuple(g.shape)}")
    return g


def _balanced_direction(pos: np.ndarray, neg: np.ndarray, pos_groups: np.ndarray, neg_groups: np.ndarray) -> np.ndarray:
    def cells(x: np.ndarray, g: np.ndarray) -> dict:
        return {c: x[g == c].mean(axis=0) for c in np.unique(g) if np.sum(g == c) >= MIN_CELL}

    pos_cells, neg_cells = cells(pos, pos_groups), cells(neg, neg_groups)
    shared = sorted(set(pos_cells) & set(neg_cells))
    if shared:
        return np.mean([pos_cells[c] - neg_cells[c] for c in shared], axis=0)
    if not pos_cells or not neg_cells:
        raise InputError(f"the balanced method needs at least {MIN_CELL} examples of some confounder label on each "
                         "side; use method 'mean' or more examples")
    return np.mean(list(pos_cells.values()), axis=0) - np.mean(list(neg_cells.values()), axis=0)


def _classifier_direction(pos: np.ndarray, neg: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    scale = x.std(axis=0).mean() or 1.0  # one scalar: keeps the geometry, conditions the solver
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
    model.fit(x / scale, y)
    w = model.coef_[0].astype(np.float64)
    if not np.all(np.isfinite(w)) or np.linalg.norm(w) == 0:
        raise InputError("the linear classifier found no direction (are the two sides identical?)")
    unit = w / np.linalg.norm(w)
    step = float((pos.mean(axis=0) - neg.mean(axis=0)) @ unit)
    return unit * abs(step)


def auc_of(vector: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of `vector` used as a linear classifier: scores are projections on it."""
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([pos @ vector, neg @ vector])
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    return float(roc_auc_score(labels, scores))


def fit_vector(pos: torch.Tensor, neg: torch.Tensor, method: str, pos_groups: object = None,
               neg_groups: object = None, seed: int = 0, holdout: float = 0.25, min_per_side: int = 2,
               scale: str = "step", reference: torch.Tensor | None = None) -> VectorFit:
    """Fit an attribute vector from latents with (`pos`, P x shape) and without (`neg`, N x shape) it.

    The fit uses the training part of each side; the AUC uses the held-out part (`holdout` of each side,
    drawn with `seed`), or the training part itself when `holdout` is 0. `pos_groups`/`neg_groups` are
    the confounder labels the `balanced` method needs. `scale` sets the length (see the module docstring);
    `reference` (M x shape) is the data whose spread defines sigma (default: the training parts of both
    sides). Fewer than `min_per_side` training examples, or no held-out example, on a side is an InputError.
    """
    if method not in METHODS:
        raise InputError(f"unknown vector method {method!r} (use one of {', '.join(METHODS)})")
    if scale not in SCALES:
        raise InputError(f"unknown vector scale {scale!r} (use one of {', '.join(SCALES)})")
    if not 0 <= holdout < 1:
        raise InputError(f"holdout must be in [0, 1), got {holdout}")
    p, n = _flat(pos, "pos"), _flat(neg, "neg")
    shape = tuple(pos.shape[1:])
    if p.shape[1] != n.shape[1] or tuple(neg.shape[1:]) != shape:
        raise InputError(f"pos and neg latents differ in shape: {shape} vs {tuple(neg.shape[1:])}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(n))):
        raise InputError("latents hold NaN or infinite values")
    rng = np.random.default_rng(seed)
    p_train, p_hold = _holdout_split(len(p), holdout, rng)
    n_train, n_hold = _holdout_split(len(n), holdout, rng)
    if min(len(p_train), len(n_train)) < min_per_side or (holdout > 0 and min(len(p_hold), len(n_hold)) < 1):
        raise InputError(f"too few examples to fit a vector: {len(p)} with and {len(n)} without the attribute; "
                         f"need at least {min_per_side} per side for the fit"
                         + (f" plus a held-out {holdout:.0%}" if holdout > 0 else ""))
    if method == "mean":
        direction = p[p_train].mean(axis=0) - n[n_train].mean(axis=0)
    elif method == "balanced":
        if pos_groups is None or neg_groups is None:
            raise InputError("the balanced method needs confounder labels for both sides (pos_groups, neg_groups)")
        pg, ng = _groups(pos_groups, len(p), "pos_groups"), _groups(neg_groups, len(n), "neg_groups")
        direction = _balanced_direction(p[p_train], n[n_train], pg[p_train], ng[n_train])
    else:
        direction = _classifier_direction(p[p_train], n[n_train], seed)
    length = float(np.linalg.norm(direction))
    if not np.isfinite(length) or length == 0:
        raise InputError("the two sides have the same mean: there is no direction to fit")
    unit = direction / length
    ref = _flat(reference, "reference") if reference is not None else np.concatenate([p[p_train], n[n_train]])
    if ref.shape[1] != p.shape[1]:
        raise InputError(f"reference latents have {ref.shape[1]} elements per item, not {p.shape[1]}")
    sigma = float((ref @ unit).std())
    step = float((p[p_train].mean(axis=0) - n[n_train].mean(axis=0)) @ unit)
    if scale == "std":
        if sigma == 0:
            raise InputError("the reference latents do not vary along the vector; use scale 'step'")
        direction = unit * sigma
    if holdout > 0:
        auc, split = auc_of(direction, p[p_hold], n[n_hold]), "held-out"
    else:
        auc, split = auc_of(direction, p[p_train], n[n_train]), "in-sample"
    vector = torch.from_numpy(direction.astype(np.float32)).reshape(shape)
    return VectorFit(vector=vector, method=method, auc=auc, n_pos=len(p), n_neg=len(n),
                     norm=float(np.linalg.norm(direction)), auc_split=split, scale=scale, sigma=sigma,
                     separation=step / sigma if sigma > 0 else float("inf"))


def pca_directions(latents: torch.Tensor, k: int) -> torch.Tensor:
    """The top `k` principal directions of `latents` (N x shape), each scaled by its component's std.

    Signs are fixed so that each direction's largest-magnitude element is positive.
    """
    x = _flat(latents, "latents")
    if not 1 <= k <= min(x.shape[0] - 1, x.shape[1]):
        raise InputError(f"k must be between 1 and {min(x.shape[0] - 1, x.shape[1])} for {x.shape[0]} latents "
                         f"of size {x.shape[1]}, got {k}")
    centered = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    vt = vt[:k]
    signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
    std = s[:k] / np.sqrt(x.shape[0] - 1)
    out = vt * signs[:, None] * std[:, None]
    return torch.from_numpy(out.astype(np.float32)).reshape(k, *latents.shape[1:])


# ----- fits over a loaded backend -----

def images_for(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Dataset images converted to the backend's (C, H, W): channels averaged or repeated, then resized."""
    c, h, w = shape
    if images.shape[1] != c:
        gray = images.mean(dim=1, keepdim=True)
        images = gray if c == 1 else gray.expand(-1, c, -1, -1)
    if tuple(images.shape[2:]) != (h, w):
        images = torch.nn.functional.interpolate(images, size=(h, w), mode="bilinear", align_corners=False,
                                                 antialias=True).clamp(-1, 1)
    return images.contiguous()


def encode_batched(backend: Backend, images: torch.Tensor, space: str, options: BaseModel | None = None,
                   seed: int = 0, progress: Progress = no_progress, batch: int = ENCODE_BATCH) -> torch.Tensor:
    """Encode images in batches and return the latents of `space` (N x shape)."""
    out = []
    total = len(images)
    for start in range(0, total, batch):
        progress(start, total, f"encoding {start}/{total}")
        point = backend.encode(images[start:start + batch], options, seed=seed)
        out.append(point[space].detach().float().cpu())
    progress(total, total, f"encoded {total}")
    return torch.cat(out)


def _weights_sha(backend: Backend) -> str:
    return getattr(getattr(backend, "model", None), "sha256", "") or ""


def fit_attribute_vector(backend: Backend, dataset: str, attribute: str, method: str, settings: Settings,
                         limit: int | None = 10000, seed: int = 0, progress: Progress = no_progress,
                         options: BaseModel | None = None, quantile: float = 0.3,
                         scale: str = DEFAULT_SCALE) -> tuple[torch.Tensor, dict]:
    """Fit an attribute vector from a labelled dataset's train split, in the space `backend.encode` returns.

    Encodes the first `limit` training images, splits them by `attribute` (for `balanced`, `classifier`
    and a measured attribute, within each class: see `studio.attributes.attribute_split`), and fits with
    `method`. With
    scale `std`, strength 1 is one standard deviation of all the encoded images along the vector.
    Returns (vector, meta); meta holds space, method, attribute, description, dataset, auc (held-out),
    n_pos, n_neg, norm, scale, sigma, separation, limit, seed, backend, model and weights_sha256.
    """
    from studio.attributes import attribute_split, confounders
    from studio.datasets import load_dataset

    if method not in METHODS:
        raise InputError(f"unknown vector method {method!r} (use one of {', '.join(METHODS)})")
    if ENCODE not in backend.capabilities:
        raise InputError(f"backend {backend.name!r} cannot encode images, so it cannot fit a vector from a dataset; "
                         "fit one from picked seeds instead")
    space = backend.space_for(CODEC, options).name
    progress(0, 1, f"loading {dataset}")
    data = load_dataset(dataset, "train", limit=limit, settings=settings, shape=backend.image_shape(options))
    index_pos, index_neg, description = attribute_split(data, attribute, quantile=quantile,
                                                        within_class=method in CLASS_BALANCED_SPLIT)
    images = images_for(data.images, backend.image_shape(options))
    latents = encode_batched(backend, images, space, options, seed=seed, progress=progress)
    pos, neg = latents[torch.from_numpy(index_pos)], latents[torch.from_numpy(index_neg)]
    groups = (confounders(data, index_pos), confounders(data, index_neg)) if method == "balanced" else (None, None)
    fit = fit_vector(pos, neg, method, pos_groups=groups[0], neg_groups=groups[1], seed=seed, scale=scale,
                     reference=latents)
    meta = {"space": space, "attribute": attribute, "description": description, "dataset": dataset,
            "split": "train", "limit": limit, "seed": seed, **fit.describe(), "backend": backend.name,
            "model": getattr(getattr(backend, "model", None), "name", ""), "weights_sha256": _weights_sha(backend)}
    return fit.vector, meta


def fit_example_vector(backend: Backend, with_seeds: Sequence[int], without_seeds: Sequence[int],
                       method: str = "mean", options: BaseModel | None = None) -> tuple[torch.Tensor, dict]:
    """Fit a vector from picked examples: prior latents of seeds with and without the attribute.

    The vector lives in the SEED-role space and has scale `step` (for `mean`, the plain mean difference,
    as in White's smile vector). With so few examples nothing is held out: the AUC is in-sample
    (auc_split "in-sample"). `balanced` needs confounder labels, which picks do not have.
    """
    if method == "balanced":
        raise InputError("the balanced method needs confounder labels, which picked examples do not have; "
                         "use 'mean' or 'classifier'")
    with_seeds, without_seeds = [int(s) for s in with_seeds], [int(s) for s in without_seeds]
    both = sorted(set(with_seeds) & set(without_seeds))
    if both:
        raise InputError(f"seeds {both} are picked both with and without the attribute")
    if not with_seeds or not without_seeds:
        raise InputError("pick at least one seed with the attribute and one without it")
    space = backend.space_for(SEED, options).name
    pos = backend.sample_prior(space, with_seeds, options)
    neg = backend.sample_prior(space, without_seeds, options)
    fit = fit_vector(pos, neg, method, holdout=0.0, min_per_side=1)
    meta = {"space": space, "attribute": "examples", "with_seeds": with_seeds, "without_seeds": without_seeds,
            **fit.describe(), "backend": backend.name,
            "model": getattr(getattr(backend, "model", None), "name", ""), "weights_sha256": _weights_sha(backend)}
    return fit.vector, meta
