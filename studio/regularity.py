"""Regularity of a latent space: whether small steps give small, predictable changes. Two measures, over the contract:

- **Perceptual path length** (PPL; Karras et al., StyleGAN, 2019): for random pairs of prior draws (a, b) of the
  SEED-role space and t ~ U(0, 1), d(G(p(t)), G(p(t + eps))) / eps^2, with p the slerp or lerp path from a to b
  (studio.ops.interpolate) and eps = 1e-4; the mean after dropping values outside the 1st-99th percentiles.
  `d` is the squared Euclidean distance between the images' features in the project classifier of a dataset
  (studio.classifier; LPIPS's place in StyleGAN): `ppl_slerp`, `ppl_lerp`. Images of another shape are converted
  to the classifier's 1x28x28 first (channel mean, antialiased resize), which `ppl_features` says. The same in
  pixels (d = the mean squared pixel difference, so resolutions compare): `ppl_slerp_pixels`, `ppl_lerp_pixels`.
  Lower is smoother. A decoder that is linear in the latent has a lerp PPL in pixels of exactly the mean of
  mean((W (b - a))^2) over the pairs (a test checks this).
- **Linear separability** (after StyleGAN's): how well a linear classifier (logistic regression) tells the
  dataset's classes apart from the latents alone, on held-out latents (`separability_accuracy`, with
  `separability_chance`, the held-out share of the commonest class) and as the conditional entropy
  H(class | linear prediction) in bits (`separability_entropy_bits`; 0 is perfectly separable, log2(10) = 3.32 is
  no information). The labelled latents come from one of two sources (`separability_labels` says which):
  * `dataset`: the dataset's test images encoded (their labels), when encoding is cheap and lands in the SEED
    space (a VAE);
  * `samples`: prior draws labelled with the class the dataset's classifier gives their decoded images, keeping
    the more confident half (StyleGAN's procedure), when encoding is costly (GAN inversion) or the codec space
    is not the seed space (SD: the seed space is the diffusion noise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from studio.contract import CODEC, ENCODE, SEED, Backend, Progress, no_progress
from studio.errors import InputError

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from studio.config import Settings

PPL_EPS = 1e-4
PPL_PAIRS = 1000
SEPARABILITY_N = 4000
TRIM = (1.0, 99.0)  # percentiles kept by the trimmed mean
CHUNK = 250  # pairs (or samples) decoded at once
LABELS = ("auto", "dataset", "samples")
PATHS = ("slerp", "lerp")
HOLDOUT = 0.25


def trimmed_mean(values: np.ndarray, low: float = TRIM[0], high: float = TRIM[1]) -> float:
    """Mean of the values between their `low` and `high` percentiles (inclusive), StyleGAN's PPL trimming."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise InputError("a trimmed mean needs at least one value")
    lo, hi = np.percentile(v, [low, high])
    return float(v[(v >= lo) & (v <= hi)].mean())


def classifier_input(images: torch.Tensor) -> torch.Tensor:
    """Images converted to the classifier's 1x28x28 (channel mean, antialiased resize); unchanged when they fit."""
    from studio.classifier import INPUT_SHAPE
    from studio.ops.vectors import images_for

    return images if tuple(images.shape[1:]) == INPUT_SHAPE else images_for(images, INPUT_SHAPE)


def feature_description(dataset: str, image_shape: tuple[int, ...]) -> str:
    """What `ppl_*` distances are measured in, for images of `image_shape`."""
    from studio.classifier import INPUT_SHAPE

    shape = tuple(image_shape)
    converted = "" if shape == INPUT_SHAPE else \
        f" (images converted from {'x'.join(map(str, shape))} to {'x'.join(map(str, INPUT_SHAPE))})"
    return f"{dataset} classifier features{converted}"


def path_distances(backend: Backend, n_pairs: int, method: str, eps: float = PPL_EPS, seed: int = 0,
                   dataset: str = "mnist", options: BaseModel | None = None,
                   progress: Progress = no_progress) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair d / eps^2 along `method` paths, in classifier features and in pixels: two arrays of n_pairs.

    Pair i joins the prior draws of seeds seed + 2i and seed + 2i + 1 of the SEED-role space, at t drawn
    uniformly from [0, 1) (numpy, seeded with `seed`), and t + eps.
    """
    import torch

    from studio.classifier import load_classifier
    from studio.ops.interpolate import interpolate

    if method not in PATHS:
        raise InputError(f"unknown path {method!r} (use slerp or lerp)")
    if n_pairs < 1:
        raise InputError(f"the path length needs at least 1 pair, got {n_pairs}")
    if not 0 < eps <= 0.1:
        raise InputError(f"eps must be in (0, 0.1], got {eps}")
    classifier = load_classifier(dataset)
    space = backend.space_for(SEED, options).name
    ts = np.random.default_rng(seed).uniform(0.0, 1.0, n_pairs)
    feats, pixels = [], []
    for start in range(0, n_pairs, CHUNK):
        idx = range(start, min(start + CHUNK, n_pairs))
        seeds = [s for i in idx for s in (seed + 2 * i, seed + 2 * i + 1)]
        prior = backend.sample_prior(space, seeds, options).double()
        ends = torch.cat([interpolate(prior[2 * j], prior[2 * j + 1], [ts[i], ts[i] + eps], method)
                          for j, i in enumerate(idx)]).float()  # rows: (t, t + eps) per pair
        point = {space: ends, **backend.condition(len(ends), options)}
        images = backend.decode(point, options).float()
        x0, x1 = images[0::2], images[1::2]
        pixels.append(((x1 - x0).double() ** 2).flatten(1).mean(1).numpy() / eps ** 2)
        f = classifier.features(classifier_input(images)).double()
        feats.append(((f[1::2] - f[0::2]) ** 2).sum(1).numpy() / eps ** 2)
        progress(idx[-1] + 1, n_pairs, f"{method} path length {idx[-1] + 1}/{n_pairs}")
    return np.concatenate(feats), np.concatenate(pixels)


def perceptual_path_length(backend: Backend, n_pairs: int = PPL_PAIRS, eps: float = PPL_EPS, seed: int = 0,
                           dataset: str = "mnist", options: BaseModel | None = None,
                           progress: Progress = no_progress) -> dict:
    """PPL along slerp and lerp paths (see the module docstring): `ppl_slerp`, `ppl_lerp` (classifier features),
    `ppl_slerp_pixels`, `ppl_lerp_pixels`, `ppl_pairs`, `ppl_eps`, `ppl_features`."""
    from studio.classifier import check_dataset

    check_dataset(dataset)
    out: dict = {}
    for i, method in enumerate(PATHS):
        feats, pixels = path_distances(backend, n_pairs, method, eps, seed, dataset, options,
                                       _sub(progress, i, len(PATHS)))
        if not (np.all(np.isfinite(feats)) and np.all(np.isfinite(pixels))):
            raise InputError(f"the {method} path length is not finite (the decoder returned unstable images)")
        out[f"ppl_{method}"] = _round(trimmed_mean(feats))
        out[f"ppl_{method}_pixels"] = _round(trimmed_mean(pixels))
    return {**out, "ppl_pairs": n_pairs, "ppl_eps": eps,
            "ppl_features": feature_description(dataset, backend.image_shape(options))}


def _round(x: float) -> float:
    return float(f"{x:.5g}")


def _sub(progress: Progress, part: int, parts: int) -> Progress:
    def report(step: int, total: int, message: str = "", preview: object = None) -> None:
        progress(part * total + step, parts * total, message)
    return report


def label_source(backend: Backend, options: BaseModel | None = None) -> str:
    """`dataset` when the backend encodes cheaply into its SEED-role space, else `samples`."""
    if ENCODE not in backend.capabilities or getattr(backend, "encode_cost", "cheap") != "cheap":
        return "samples"
    try:
        codec = backend.space_for(CODEC, options)
    except InputError:
        return "samples"
    return "dataset" if SEED in codec.roles else "samples"


def labelled_latents(backend: Backend, n: int, labels: str = "auto", dataset: str = "mnist", seed: int = 0,
                     settings: Settings | None = None, options: BaseModel | None = None,
                     progress: Progress = no_progress) -> tuple[np.ndarray, np.ndarray, str]:
    """(latents N x D of the SEED-role space, class labels N, the source used): the dataset's first `n` test
    images encoded, or `n` prior draws labelled by the classifier, the more confident half kept."""
    import torch

    from studio.classifier import check_dataset, load_classifier
    from studio.config import load_settings

    check_dataset(dataset)
    if labels not in LABELS:
        raise InputError(f"unknown separability labels {labels!r} (use {', '.join(LABELS)})")
    source = label_source(backend, options) if labels == "auto" else labels
    space = backend.space_for(SEED, options)
    if source == "dataset":
        from studio.datasets import load_dataset
        from studio.ops.vectors import encode_batched, images_for

        if ENCODE not in backend.capabilities or SEED not in backend.space_for(CODEC, options).roles:
            raise InputError(f"backend {backend.name!r} does not encode into its seed space; use labels 'samples'")
        shape = backend.image_shape(options)
        data = load_dataset(dataset, "test", limit=n, settings=settings or load_settings(), shape=shape)
        latents = encode_batched(backend, images_for(data.images, shape), space.name, options, seed=seed,
                                 progress=progress)
        return latents.flatten(1).double().numpy(), np.asarray(data.labels), source
    classifier = load_classifier(dataset)
    zs, probas = [], []
    for start in range(0, n, CHUNK):
        seeds = range(seed + start, seed + min(start + CHUNK, n))
        z = backend.sample_prior(space.name, seeds, options)
        images = backend.decode({space.name: z, **backend.condition(len(z), options)}, options)
        zs.append(z.flatten(1).double())
        probas.append(classifier.predict_proba(classifier_input(images.float())))
        progress(min(start + CHUNK, n), n, f"labelling samples {min(start + CHUNK, n)}/{n}")
    proba = torch.cat(probas)
    keep = torch.argsort(proba.max(1).values, descending=True, stable=True)[: max(1, n // 2)].sort().values
    return torch.cat(zs)[keep].numpy(), proba.argmax(1)[keep].numpy(), source


def separability_of(latents: np.ndarray, labels: np.ndarray, seed: int = 0, holdout: float = HOLDOUT) -> dict:
    """Held-out accuracy of a logistic regression from latents to labels, the chance level (the commonest class's
    held-out share) and H(label | prediction) in bits on the held-out part."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = np.asarray(latents, dtype=np.float64), np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y):
        raise InputError(f"latents (N x D) and labels (N) disagree: {x.shape} and {y.shape}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or len(x) < 8:
        raise InputError(f"separability needs at least 8 latents of 2 classes or more, got {len(x)} of "
                         f"{len(classes)}")
    stratify = y if counts.min() >= 2 and round(holdout * len(y)) >= len(classes) else None
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=holdout, random_state=seed, stratify=stratify)
    if len(np.unique(y_train)) < 2:
        raise InputError("separability: the training part holds one class only; use more latents")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12
    model = LogisticRegression(max_iter=2000, random_state=seed)
    model.fit((x_train - mean) / std, y_train)
    predicted = model.predict((x_test - mean) / std)
    _, test_counts = np.unique(y_test, return_counts=True)
    return {"separability_accuracy": round(float((predicted == y_test).mean()), 4),
            "separability_chance": round(float(test_counts.max() / len(y_test)), 4),
            "separability_entropy_bits": round(conditional_entropy(y_test, predicted), 4),
            "separability_n": int(len(x)), "separability_classes": int(len(classes))}


def conditional_entropy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """H(truth | predicted) in bits, from the empirical joint distribution."""
    joint: dict[tuple, int] = {}
    for t, p in zip(np.asarray(truth).tolist(), np.asarray(predicted).tolist(), strict=True):
        joint[(t, p)] = joint.get((t, p), 0) + 1
    n = sum(joint.values())
    marginal: dict = {}
    for (_, p), c in joint.items():
        marginal[p] = marginal.get(p, 0) + c
    return float(-sum(c / n * np.log2(c / marginal[p]) for (_, p), c in joint.items()) + 0.0)


def linear_separability(backend: Backend, n: int = SEPARABILITY_N, labels: str = "auto", dataset: str = "mnist",
                        seed: int = 0, settings: Settings | None = None, options: BaseModel | None = None,
                        progress: Progress = no_progress) -> dict:
    """Linear separability of `dataset`'s classes in the backend's SEED-role space (see the module docstring)."""
    latents, y, source = labelled_latents(backend, n, labels, dataset, seed, settings, options, progress)
    described = {"dataset": f"{dataset} test images encoded, with their labels",
                 "samples": f"prior samples labelled by the {dataset} classifier (the more confident half)"}
    return {**separability_of(latents, y, seed), "separability_labels": source,
            "separability_source": described[source], "separability_space": backend.space_for(SEED, options).name}


def regularity(backend: Backend, ppl_pairs: int = PPL_PAIRS, separability_n: int = SEPARABILITY_N,
               labels: str = "auto", dataset: str = "mnist", seed: int = 0, eps: float = PPL_EPS,
               settings: Settings | None = None, options: BaseModel | None = None,
               progress: Progress = no_progress) -> dict:
    """Both measures (either skipped when its size is 0), as one dict of metrics."""
    out: dict = {}
    steps: list[Callable[[Progress], dict]] = []
    if ppl_pairs:
        steps.append(lambda p: perceptual_path_length(backend, ppl_pairs, eps, seed, dataset, options, p))
    if separability_n:
        steps.append(lambda p: linear_separability(backend, separability_n, labels, dataset, seed, settings,
                                                   options, p))
    for i, step in enumerate(steps):
        out.update(step(_sub(progress, i, len(steps))))
    return out
