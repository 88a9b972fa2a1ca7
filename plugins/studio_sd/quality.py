"""How well a text-to-image model trained by `train_ldm` follows its prompts, scored by the project's classifiers.

Used by the tests (small samples) and by `bench/bench_ldm.py` (the full numbers): images come from the backend
through the core's points (`random_point` + `decode_batched`), exactly as `studio run sample` makes them, and are
scored at the classifiers' 1x28x28 (resized as the studio resizes every image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .train_ldm import prompt_for

if TYPE_CHECKING:
    import torch

    from studio.contract import Backend

CLASSIFIER = {"digit": "mnist", "fashion": "fashion"}  # prompt kind -> the dataset whose classifier scores it
KINDS = tuple(CLASSIFIER)


def generate(backend: Backend, seeds: Sequence[int], **options: object) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] for `seeds` under the backend's options (prompt, guidance, steps...)."""
    from studio.points import decode_batched, random_point

    opts = backend.parse_options(options)
    return decode_batched(backend, random_point(backend, list(seeds), opts), opts)


def for_classifier(images: torch.Tensor) -> torch.Tensor:
    """Images as the classifiers take them: 1 x 28 x 28 grey, resized with the studio's own conversion."""
    from studio import images as imgs
    from studio.classifier import INPUT_SHAPE

    return imgs.to_tensor(imgs.to_pil(images), INPUT_SHAPE)


def adherence(backend: Backend, kind: str, per_class: int, seed: int = 0, classes: Sequence[int] = range(10),
              **options: object) -> dict:
    """For each class's plain prompt ("a handwritten digit 7", "a photo of a sneaker"), `per_class` images
    (seeds seed ..), classified by the kind's classifier: `share` (all classes), `per_class` shares and, for
    each prompt, the `predicted` class counts."""
    from studio.classifier import load_classifier

    classifier = load_classifier(CLASSIFIER[kind])
    per, predicted = {}, {}
    for label in classes:
        images = generate(backend, range(seed, seed + per_class), prompt=prompt_for(kind, label), **options)
        guess = classifier.predict(for_classifier(images)).numpy()
        per[prompt_for(kind, label)] = float((guess == label).mean())
        predicted[prompt_for(kind, label)] = np.bincount(guess, minlength=10).tolist()
    return {"share": float(np.mean(list(per.values()))), "per_class": per, "predicted": predicted}


def ink(images: torch.Tensor) -> float:
    """Mean brightness of images in [-1, 1], mapped to [0, 1] (a digit's ink: thicker strokes, more ink)."""
    return float(((images + 1) / 2).mean())
