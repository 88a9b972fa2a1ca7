"""Discovered directions: unsupervised, ordered directions in a latent space, stored as ordinary named vectors.

Two methods, over the contract:
- `encoded`: the principal directions of the backend's encoded data (PCA of encode(dataset) in the CODEC-role
  space; for a VAE that space is also the seed space, so the directions edit seeds and images alike). Needs
  ENCODE.
- `features`: GANSpace (Härkönen et al., 2020): draw prior samples z of the SEED-role space, read an intermediate
  layer's activations y (`Backend.intermediate_features`, an optional contract method), PCA there, and map each
  principal direction back to z by linear regression of z on the PCA coordinates (z ~ x B + c; direction i is
  row i of B).

Either way the k directions are made orthonormal in order (Gram-Schmidt: direction 0 keeps its own direction,
each later one loses its components along the earlier ones) and signed so that their largest-magnitude element
is positive. Unit length: strength s moves s units in the latent, about s prior standard deviations in a
Gaussian seed space. Direction 0 is the one along which the data (or the layer) varies most.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from studio.contract import CODEC, ENCODE, SEED, Backend, Progress, no_progress
from studio.errors import InputError

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from studio.config import Settings

METHODS = ("auto", "encoded", "features")
MAX_K = 64
DEFAULT_SAMPLES = 5000  # encoded images or GANSpace draws
CHUNK = 500


@dataclass
class Discovery:
    """k discovered directions of one latent space, and what each explains."""

    directions: torch.Tensor  # (k, *space shape), orthonormal rows
    space: str
    method: str  # "encoded" or "features"
    explained: list[float]  # share of the variance each principal component explains (data or layer)
    sigma: list[float]  # std of the samples' latents projected on each direction
    n: int  # samples used
    source: str  # what was analysed, in words
    extra: dict = field(default_factory=dict)

    def meta(self, i: int) -> dict:
        """The stored metadata of direction i."""
        return {"space": self.space, "method": f"discover-{self.method}", "attribute": f"pc{i}",
                "index": i, "k": len(self.directions), "explained_variance": round(self.explained[i], 5),
                "sigma": round(self.sigma[i], 5), "norm": 1.0, "scale": "unit", "n": self.n,
                "description": f"discovered direction {i} of {len(self.directions)}: {self.source}",
                "shape": list(self.directions.shape[1:]), **self.extra}


def has_features(backend: Backend) -> bool:
    """Whether the backend implements the optional `intermediate_features` hook."""
    return type(backend).intermediate_features is not Backend.intermediate_features


def choose_method(backend: Backend, method: str = "auto") -> str:
    """`features` when the backend exposes intermediate features, else `encoded` when it encodes cheaply."""
    if method not in METHODS:
        raise InputError(f"unknown discovery method {method!r} (use {', '.join(METHODS)})")
    if method == "features" and not has_features(backend):
        raise InputError(f"backend {backend.name!r} does not expose intermediate features; use method 'encoded'")
    if method == "encoded" and ENCODE not in backend.capabilities:
        raise InputError(f"backend {backend.name!r} cannot encode images; use method 'features'")
    if method != "auto":
        return method
    if has_features(backend):
        return "features"
    if ENCODE in backend.capabilities and getattr(backend, "encode_cost", "cheap") == "cheap":
        return "encoded"
    raise InputError(f"backend {backend.name!r} neither exposes intermediate features nor encodes cheaply: "
                     "no directions to discover")


def orthonormal_rows(rows: np.ndarray) -> np.ndarray:
    """Gram-Schmidt in order (QR of the transpose): row i keeps only what is new relative to rows 0..i-1, unit
    length, signed so its largest-magnitude element is positive. InputError when the rows are dependent."""
    q, r = np.linalg.qr(np.asarray(rows, dtype=np.float64).T)
    if np.any(np.abs(np.diag(r)) < 1e-10 * max(1.0, float(np.abs(r).max()))):
        raise InputError("the discovered directions are linearly dependent; use a smaller k")
    out = q.T
    signs = np.sign(out[np.arange(len(out)), np.abs(out).argmax(axis=1)])
    return out * signs[:, None]


def _pca(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, components k x D, explained variance ratios) of the rows of x."""
    from sklearn.decomposition import PCA

    if not 1 <= k <= min(len(x) - 1, x.shape[1]):
        raise InputError(f"k must be between 1 and {min(len(x) - 1, x.shape[1])} for {len(x)} samples of "
                         f"{x.shape[1]} values, got {k}")
    pca = PCA(n_components=k, random_state=seed).fit(x)
    return pca.mean_, pca.components_, pca.explained_variance_ratio_


def check_k(k: int) -> None:
    """InputError unless 1 <= k <= MAX_K (no torch needed: the CLI checks before loading a model)."""
    if not 1 <= k <= MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k}")


def encoded_directions(backend: Backend, k: int, dataset: str = "mnist", limit: int = DEFAULT_SAMPLES,
                       seed: int = 0, settings: Settings | None = None, options: BaseModel | None = None,
                       progress: Progress = no_progress) -> Discovery:
    """The top-k principal directions of the first `limit` training images of `dataset`, encoded."""
    import torch

    from studio.config import load_settings
    from studio.datasets import load_dataset
    from studio.ops.vectors import encode_batched, images_for

    check_k(k)
    if ENCODE not in backend.capabilities:
        raise InputError(f"backend {backend.name!r} cannot encode images")
    space = backend.space_for(CODEC, options)
    shape = backend.image_shape(options)
    data = load_dataset(dataset, "train", limit=limit, settings=settings or load_settings(), shape=shape)
    latents = encode_batched(backend, images_for(data.images, shape), space.name, options, seed=seed,
                             progress=progress)
    x = latents.flatten(1).double().numpy()
    _, components, explained = _pca(x, k, seed)
    dirs = orthonormal_rows(components)
    sigma = (x - x.mean(0)) @ dirs.T
    edits = "seeds and images" if SEED in space.roles else "images (encoded sources) only"
    return Discovery(torch.from_numpy(dirs.astype(np.float32)).reshape(k, *space.shape), space.name, "encoded",
                     [float(e) for e in explained], [float(s) for s in sigma.std(0)], len(x),
                     f"PCA of {len(x)} encoded {dataset} training images in space {space.name!r} (edits {edits})",
                     {"dataset": dataset})


def feature_directions(backend: Backend, k: int, n: int = DEFAULT_SAMPLES, seed: int = 0,
                       options: BaseModel | None = None, progress: Progress = no_progress) -> Discovery:
    """GANSpace: PCA of `n` prior samples' intermediate features, regressed back to the SEED-role space."""
    import torch

    check_k(k)
    space = backend.space_for(SEED, options)
    zs, feats = [], []
    for start in range(0, n, CHUNK):
        seeds = range(seed + start, seed + min(start + CHUNK, n))
        z = backend.sample_prior(space.name, seeds, options)
        y = backend.intermediate_features({space.name: z, **backend.condition(len(z), options)}, options)
        if y.dim() != 2 or len(y) != len(z):
            raise InputError(f"backend {backend.name!r} returned intermediate features of shape {tuple(y.shape)}, "
                             f"not ({len(z)}, D)")
        zs.append(z.flatten(1).double())
        feats.append(y.double())
        progress(min(start + CHUNK, n), n, f"features {min(start + CHUNK, n)}/{n}")
    z, y = torch.cat(zs).numpy(), torch.cat(feats).numpy()
    mean, components, explained = _pca(y, k, seed)
    coords = (y - mean) @ components.T  # (n, k)
    design = np.concatenate([coords, np.ones((len(coords), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, z, rcond=None)  # z ~ coords B + c
    dirs = orthonormal_rows(solution[:k])
    sigma = (z - z.mean(0)) @ dirs.T
    return Discovery(torch.from_numpy(dirs.astype(np.float32)).reshape(k, *space.shape), space.name, "features",
                     [float(e) for e in explained], [float(s) for s in sigma.std(0)], len(z),
                     f"GANSpace: PCA of an intermediate layer ({y.shape[1]} values) over {len(z)} prior samples, "
                     f"regressed back to space {space.name!r}", {"feature_size": int(y.shape[1])})


def discover(backend: Backend, k: int, method: str = "auto", dataset: str = "mnist", n: int = DEFAULT_SAMPLES,
             seed: int = 0, settings: Settings | None = None, options: BaseModel | None = None,
             progress: Progress = no_progress) -> Discovery:
    """k discovered directions by `method` (see the module docstring); `n`: encoded images or sampled draws."""
    if n < 2:
        raise InputError(f"discovery needs at least 2 samples, got {n}")
    chosen: Literal["encoded", "features"] = choose_method(backend, method)  # type: ignore[assignment]
    if chosen == "features":
        return feature_directions(backend, k, n, seed, options, progress)
    return encoded_directions(backend, k, dataset, n, seed, settings, options, progress)


def save_discovery(found: Discovery, backend: Backend, settings: Settings, prefix: str = "pc",
                   owner: str | None = None) -> list[str]:
    """Store direction i as the vector `{prefix}{i}` of the backend's weights; returns the names."""
    from studio.vectorstore import check_can_save, check_name, save_vector

    names = [check_name(f"{prefix}{i}") for i in range(len(found.directions))]
    sha = backend.model.sha256
    for name in names:  # every name before any save
        check_can_save(settings, backend.name, sha, name, owner)
    for i, name in enumerate(names):
        meta = {**found.meta(i), "name": name, "backend": backend.name, "model": backend.model.name,
                "weights_sha256": sha}
        save_vector(settings, backend.name, sha, name, found.directions[i], meta, owner=owner)
    return names
