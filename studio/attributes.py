"""Image attributes measured on pixels, and the attribute names a vector fit understands.

Attribute names (for `attribute_split`):
- `class:C`       images of class C against every other labelled image (C: a class name or index);
- `class:A-vs-B`  class A against class B, other classes excluded;
- `thickness`     the top `quantile` of ink mass against the bottom `quantile`;
- `slant`         the top `quantile` of slant (leaning right) against the bottom (leaning left).

Measurements take images in the contract's convention (NCHW or NHW, values in [-1, 1]; torch or numpy);
ink is (x + 1) / 2, averaged over channels.
"""

from __future__ import annotations

import numpy as np

from studio.datasets import Dataset
from studio.errors import InputError

MEASURED = ("thickness", "slant")
ATTRIBUTE_FORMS = ("class:C", "class:A-vs-B", *MEASURED)


def _ink(images: object) -> np.ndarray:
    """Ink in [0, 1] as float64 (N, H, W)."""
    a = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    a = a.astype(np.float64)
    if a.ndim == 4:
        a = a.mean(axis=1)
    if a.ndim != 3:
        raise InputError(f"expected images shaped NCHW or NHW, got shape {tuple(a.shape)}")
    return np.clip((a + 1.0) / 2.0, 0.0, 1.0)


def thickness(images: object) -> np.ndarray:
    """Ink mass per image: the mean ink over all pixels (0 blank, 1 all ink)."""
    return _ink(images).mean(axis=(1, 2))


def slant(images: object) -> np.ndarray:
    """Slant per image from second-order central moments: the shear mu11 / mu02.

    x runs rightwards and y *upwards* (row index flipped), so a stroke whose top leans to the right
    (an italic digit) has a positive slant; mirroring an image left-right flips the sign. It is the
    horizontal shift per unit of height (0 upright, 0.3 ~ 17 degrees). A blank image has slant 0.
    """
    ink = _ink(images)
    _, h, w = ink.shape
    ys = (h - 1 - np.arange(h, dtype=np.float64))[None, :, None]  # upwards
    xs = np.arange(w, dtype=np.float64)[None, None, :]
    mass = ink.sum(axis=(1, 2))
    safe = np.where(mass > 0, mass, 1.0)
    cx = (ink * xs).sum(axis=(1, 2)) / safe
    cy = (ink * ys).sum(axis=(1, 2)) / safe
    dx = xs - cx[:, None, None]
    dy = ys - cy[:, None, None]
    mu11 = (ink * dx * dy).sum(axis=(1, 2))
    mu02 = (ink * dy * dy).sum(axis=(1, 2))
    return np.where(mu02 > 1e-12, mu11 / np.where(mu02 > 1e-12, mu02, 1.0), 0.0)


def _forms_hint(dataset: Dataset) -> str:
    classes = ", ".join(dataset.classes) if dataset.classes else "none"
    return f"use one of {', '.join(ATTRIBUTE_FORMS)}; classes of {dataset.name}: {classes}"


def _class_index(dataset: Dataset, token: str, attribute: str) -> int:
    if token in dataset.classes:
        index = dataset.classes.index(token)
    elif token.lstrip("-").isdigit() and 0 <= int(token) < len(dataset.classes):
        index = int(token)
    else:
        raise InputError(f"unknown class {token!r} in attribute {attribute!r} ({_forms_hint(dataset)})")
    if not np.any(dataset.labels == index):
        raise InputError(f"class {token!r} of attribute {attribute!r} has no images in dataset {dataset.name!r}")
    return index


def _quantile_split(values: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the top and bottom `quantile` of values (disjoint; ties broken by index)."""
    k = int(np.floor(quantile * len(values)))
    order = np.argsort(values, kind="stable")
    return np.sort(order[len(values) - k:]), np.sort(order[:k])


def _quantile_split_within(values: np.ndarray, labels: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """`_quantile_split` inside each label group, so every class has the same share on both sides."""
    pos, neg = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        top, bottom = _quantile_split(values[members], quantile)
        pos.append(members[top])
        neg.append(members[bottom])
    return np.sort(np.concatenate(pos)), np.sort(np.concatenate(neg))


def attribute_split(dataset: Dataset, attribute: str, quantile: float = 0.3,
                    within_class: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Split a dataset by an attribute: (indices with it, indices without it, a one-line description).

    For measured attributes, `within_class` takes the quantiles inside each class (the images without a
    label form one more group): each class then fills the same share of both sides, which balances the
    class cells of White's bias correction by construction. Class attributes ignore it.
    """
    if not 0 < quantile <= 0.5:
        raise InputError(f"quantile must be in (0, 0.5], got {quantile}")
    name = attribute.strip()
    if name.startswith("class:"):
        body = name.split(":", 1)[1]
        if "-vs-" in body:
            a_token, b_token = body.split("-vs-", 1)
            a, b = _class_index(dataset, a_token, name), _class_index(dataset, b_token, name)
            if a == b:
                raise InputError(f"attribute {name!r} compares a class with itself")
            pos, neg = np.flatnonzero(dataset.labels == a), np.flatnonzero(dataset.labels == b)
            return pos, neg, f"class {dataset.classes[a]} ({len(pos)}) vs class {dataset.classes[b]} ({len(neg)})"
        c = _class_index(dataset, body, name)
        pos = np.flatnonzero(dataset.labels == c)
        neg = np.flatnonzero((dataset.labels != c) & (dataset.labels >= 0))
        return pos, neg, f"class {dataset.classes[c]} ({len(pos)}) vs the other classes ({len(neg)})"
    if name in MEASURED:
        values = thickness(dataset.images) if name == "thickness" else slant(dataset.images)
        if within_class:
            pos, neg = _quantile_split_within(values, np.asarray(dataset.labels), quantile)
        else:
            pos, neg = _quantile_split(values, quantile)
        if len(pos) == 0:
            raise InputError(f"dataset {dataset.name!r} has too few images ({len(values)}) to split {name!r} "
                             f"at quantile {quantile}")
        pct = round(100 * quantile)
        where = " within each class" if within_class else ""
        return pos, neg, (f"{name}: top {pct}%{where} ({len(pos)}, mean {values[pos].mean():.4g}) vs bottom {pct}% "
                          f"({len(neg)}, mean {values[neg].mean():.4g})")
    raise InputError(f"unknown attribute {attribute!r} ({_forms_hint(dataset)})")


def confounders(dataset: Dataset, index: np.ndarray) -> np.ndarray:
    """The labels used for bias correction (the class of each image; -1 where unknown)."""
    return np.asarray(dataset.labels, dtype=np.int64)[np.asarray(index, dtype=np.int64)]
