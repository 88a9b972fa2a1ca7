"""Explore a latent space: 2-D projections of an encoded dataset, and anomalies by reconstruction error.

Both work over the contract only: `backend.encode` gives the CODEC point of each image (flattened into one
vector per image), `backend.decode` of that point gives the reconstruction.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from studio.contract import CODEC, DECODE, ENCODE, Backend, Progress, no_progress
from studio.errors import InputError

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from studio.config import Settings
    from studio.datasets import Dataset

log = logging.getLogger("studio.explore")
METHODS = ("pca", "tsne", "umap")
UMAP_MIN_IMAGES = 4
ENCODE_BATCH = 256
CACHE_VERSION = 2  # 2: UMAP on exact neighbours (studio.ops.umap_cache)


def _require(backend: Backend, caps: set[str], what: str) -> None:
    missing = caps - set(backend.capabilities)
    if missing:
        raise InputError(f"backend {backend.name!r} cannot {what}: it lacks {', '.join(sorted(missing))} "
                         f"(capabilities: {', '.join(sorted(backend.capabilities))})")


def load_in_shape(backend: Backend, dataset: str, split: str, limit: int, settings: Settings,
                  options: BaseModel | None = None) -> Dataset:
    """At least 2 and at most `limit` images of a dataset split in the backend's image shape for `options`
    (built-in datasets are 1x28x28 and get converted)."""
    from studio import images as imgs
    from studio.datasets import load_dataset

    if limit < 2:
        raise InputError(f"limit must be at least 2, got {limit}")
    shape = tuple(backend.image_shape(options))
    ds = load_dataset(dataset, split, limit=limit, settings=settings, shape=shape)
    if len(ds) < 2:
        raise InputError(f"dataset {dataset!r} split {split!r} has {len(ds)} image(s); at least 2 are needed")
    if tuple(ds.images.shape[1:]) != shape:
        ds.images = imgs.to_tensor(imgs.to_pil(ds.images), shape)
    return ds


def encode_flat(backend: Backend, images: torch.Tensor, progress: Progress = no_progress,
                message: str = "encoding", options: BaseModel | None = None) -> np.ndarray:
    """Encode images in batches (with the job's backend `options`) to their CODEC point, flattened to one float32
    row per image.

    Encoding runs under torch.no_grad() (nothing here needs gradients); a backend whose encode optimises
    (GAN inversion) switches gradients on for itself, so this stays the same for every backend.
    """
    import torch

    space = backend.space_for(CODEC, options).name
    rows = []
    n = len(images)
    for start in range(0, n, ENCODE_BATCH):
        with torch.no_grad():
            point = backend.encode(images[start:start + ENCODE_BATCH], options)
        if space not in point:
            raise InputError(f"backend {backend.name!r} encoded to {sorted(point)}, not its codec space {space!r}")
        rows.append(point[space].detach().float().cpu().reshape(len(point[space]), -1).numpy())
        progress(min(start + ENCODE_BATCH, n), n, f"{message} {min(start + ENCODE_BATCH, n)}/{n}")
    return np.concatenate(rows).astype(np.float32)


# ----- projections -----

def _reduce(features: np.ndarray, method: str, seed: int, settings: Settings) -> np.ndarray:
    n, d = features.shape
    if method == "pca":
        from sklearn.decomposition import PCA

        k = min(2, d, n)
        coords = PCA(n_components=k, random_state=seed).fit_transform(features)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                      max_iter=500).fit_transform(features)
    elif method == "umap":
        if n < UMAP_MIN_IMAGES:  # umap itself fails on fewer with an unhelpful scipy or numba error
            raise InputError(f"UMAP needs at least {UMAP_MIN_IMAGES} images, got {n} (use pca for fewer)")
        from studio.ops.umap_cache import fit_transform  # lazily: umap loads (or compiles) its numba code

        coords = fit_transform(features, seed, settings)
    else:
        raise InputError(f"unknown projection method {method!r} (use one of {', '.join(METHODS)})")
    coords = np.asarray(coords, dtype=np.float32)
    if coords.shape[1] < 2:  # a 1-d latent: put everything on the x axis
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


def plot_projection(coords: np.ndarray, labels: np.ndarray, classes: list[str], title: str = "",
                    size_px: int = 640) -> bytes:
    """A PNG scatter of 2-D coordinates coloured by label (matplotlib, Agg; no pyplot state)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labels = np.asarray(labels)
    cmap = colormaps["tab10"]
    point_size = float(np.clip(4000 / max(len(labels), 1), 2, 30))
    for value in sorted(set(labels.tolist())):
        mask = labels == value
        name = classes[value] if 0 <= value < len(classes) else ("unlabelled" if value < 0 else str(value))
        colour = cmap(value % 10) if value >= 0 else (0.5, 0.5, 0.5, 1.0)
        ax.scatter(coords[mask, 0], coords[mask, 1], s=point_size, color=colour, label=name, alpha=0.75,
                   linewidths=0)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(set(labels.tolist())) <= 20:
        ax.legend(loc="best", fontsize=8, markerscale=max(1.0, 20 / point_size) ** 0.5, frameon=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _cache_file(settings: Settings, backend: Backend, dataset: str, split: str, method: str, limit: int,
                seed: int, data_digest: str, options: BaseModel | None = None) -> Path:
    key = {"v": CACHE_VERSION, "backend": backend.name, "model": backend.model.name,
           "sha256": backend.model.sha256, "dataset": dataset, "split": split, "method": method,
           "limit": int(limit), "seed": int(seed), "data": data_digest}
    if options is not None and options.model_dump():  # options that change encodings key the cache too
        key["options"] = options.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(settings.cache_path) / "projections" / f"{backend.name}-{method}-{digest}.npz"


def _save_coords(path: Path, coords: np.ndarray, labels: np.ndarray) -> None:
    """Keep projected coordinates for the next identical request; a cache that cannot be written only costs time."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, coords=coords, labels=labels.astype(np.int64))
        tmp.replace(path)
    except OSError as exc:
        log.info("projection cache not written (%s): %s", path.parent, exc)


def _digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def project(backend: Backend, dataset: str, split: str, method: str, limit: int, seed: int, settings: Settings,
            progress: Progress = no_progress, options: BaseModel | None = None) -> dict:
    """Encode `limit` images of a dataset split and project their codec latents to 2-D.

    Returns coords ([x, y] per image), labels, classes, method, plot_png (a scatter coloured by label)
    and cached (whether the coordinates came from the on-disk cache, keyed by backend, weights sha256,
    backend options, dataset, split, method, limit, seed and the images themselves).
    """
    if method not in METHODS:
        raise InputError(f"unknown projection method {method!r} (use one of {', '.join(METHODS)})")
    _require(backend, {ENCODE}, "encode images, so it cannot project a dataset")
    progress(0, 4, "loading dataset")
    ds = load_in_shape(backend, dataset, split, limit, settings, options)
    path = _cache_file(settings, backend, dataset, split, method, limit, seed, _digest(ds.images), options)
    cached = path.is_file()
    coords = None
    if cached:
        try:
            with np.load(path, allow_pickle=False) as z:
                coords = z["coords"].astype(np.float32)
        except (OSError, ValueError, KeyError):
            cached = False
        if coords is not None and coords.shape != (len(ds), 2):
            coords, cached = None, False
    if coords is None:
        def encoding(step: int, total: int, message: str = "", preview: object = None) -> None:
            progress(1, 4, message)

        features = encode_flat(backend, ds.images, encoding, options=options)
        progress(2, 4, f"projecting {len(features)} latents with {method}")
        coords = _reduce(features, method, seed, settings)
        _save_coords(path, coords, ds.labels)
    progress(3, 4, "plotting")
    title = f"{backend.name} · {dataset} {split} · {method} ({len(ds)} images)"
    plot = plot_projection(coords, ds.labels, ds.classes, title)
    progress(4, 4, "done")
    return {"coords": coords.round(5).tolist(), "labels": [int(v) for v in ds.labels], "classes": list(ds.classes),
            "method": method, "plot_png": plot, "cached": cached}


# ----- anomalies -----

def reconstruction_errors(backend: Backend, images: torch.Tensor, progress: Progress = no_progress,
                          message: str = "scoring", options: BaseModel | None = None) -> np.ndarray:
    """Per-image mean squared error of decode(encode(x)) against x, in the [-1, 1] pixel range, with the job's
    backend `options`."""
    import torch

    _require(backend, {ENCODE, DECODE}, "encode and decode images, so it cannot score reconstructions")
    space = backend.space_for(CODEC, options).name
    scores = []
    n = len(images)
    for start in range(0, n, ENCODE_BATCH):
        x = images[start:start + ENCODE_BATCH].float()
        with torch.no_grad():
            point = backend.encode(x, options)
            recon = backend.decode({space: point[space]}, options).float().clamp(-1, 1)
        if recon.shape != x.shape:
            raise InputError(f"backend {backend.name!r} reconstructed shape {tuple(recon.shape)} for input "
                             f"{tuple(x.shape)}")
        scores.append(((recon - x) ** 2).reshape(len(x), -1).mean(1).numpy())
        progress(min(start + ENCODE_BATCH, n), n, f"{message} {min(start + ENCODE_BATCH, n)}/{n}")
    return np.concatenate(scores).astype(np.float64)


def anomalies(backend: Backend, dataset: str, split: str, limit: int, ood_dataset: str | None, settings: Settings,
              progress: Progress = no_progress, top: int = 64, options: BaseModel | None = None) -> dict:
    """Rank images by reconstruction error, highest first; with `ood_dataset`, the AUROC of in- vs out-of-
    distribution using that error as the score.

    Returns ranking (list of {index, score, label, source "in"|"ood"}), auroc (float or None), n,
    mean_score (in-distribution), mean_score_ood (or None), dataset, ood_dataset, top_images (PIL images
    of the `top` highest-scoring images).
    """
    from studio import images as imgs

    _require(backend, {ENCODE, DECODE}, "encode and decode images, so it cannot rank anomalies")
    sets = [("in", dataset)] + ([("ood", ood_dataset)] if ood_dataset else [])
    if ood_dataset == dataset:
        raise InputError(f"the out-of-distribution dataset must differ from the dataset ({dataset!r})")
    loaded, scores = [], []
    for k, (source, name) in enumerate(sets):
        ds = load_in_shape(backend, name, split, limit, settings, options)

        def scoring(step: int, total: int, message: str = "", preview: object = None, _k: int = k) -> None:
            progress(_k * 1000 + int(1000 * step / max(total, 1)), 1000 * len(sets), message)

        scores.append(reconstruction_errors(backend, ds.images, scoring, f"scoring {name}", options))
        loaded.append((source, ds))
    ranking = [{"index": i, "score": float(s), "label": int(ds.labels[i]), "source": source}
               for (source, ds), sc in zip(loaded, scores, strict=True) for i, s in enumerate(sc)]
    ranking.sort(key=lambda r: (-r["score"], r["source"], r["index"]))
    auroc = None
    if ood_dataset:
        from sklearn.metrics import roc_auc_score

        y = np.concatenate([np.zeros(len(scores[0])), np.ones(len(scores[1]))])
        auroc = float(roc_auc_score(y, np.concatenate(scores)))
    by_source = {source: ds for source, ds in loaded}
    top_images = [imgs.to_pil(by_source[r["source"]].images[r["index"]:r["index"] + 1])[0] for r in ranking[:top]]
    return {"ranking": ranking, "auroc": auroc, "n": len(ranking), "mean_score": float(np.mean(scores[0])),
            "mean_score_ood": float(np.mean(scores[1])) if ood_dataset else None, "dataset": dataset,
            "ood_dataset": ood_dataset, "top_images": top_images}

