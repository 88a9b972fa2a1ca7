"""Attribute-vector benchmark on the VAE: AUC of each fitting method, and the thickness edit criterion.

Criterion (issue 2, Quality): a `thickness` edit at strength +2 makes the decoded image thicker than the
unedited reconstruction (strength 0) for at least 90% of the test images, while the project's MNIST
classifier gives the edited image the same class as the original image for at least 90% of them
(`class_kept`; `class_kept_vs_reconstruction` compares with the reconstruction's class instead).

    .venv/bin/python bench/bench_vectors.py                  # 500 test images, vectors fitted on 10k train
    .venv/bin/python bench/bench_vectors.py --json --n-test 10000
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from studio.attributes import thickness
from studio.config import load_settings
from studio.contract import CODEC
from studio.datasets import load_dataset
from studio.ops.edit import apply_vector
from studio.ops.vectors import DEFAULT_SCALE, METHODS, SCALES, fit_attribute_vector
from studio.registry import get_backend_class

TARGET = 0.9


def predict(classifier: object, images: torch.Tensor) -> np.ndarray:
    """Class indices from the project's classifier."""
    proba = classifier.predict_proba(images)  # type: ignore[attr-defined]
    proba = proba.detach().cpu().numpy() if isinstance(proba, torch.Tensor) else np.asarray(proba)
    return proba.argmax(axis=1)


def edit_criterion(backend: object, classifier: object, images: torch.Tensor, vector: torch.Tensor,
                   strengths: list[float]) -> list[dict]:
    """For each strength: share of images made thicker than their reconstruction, share keeping their class."""
    space = backend.space_for(CODEC).name  # type: ignore[attr-defined]
    point = backend.encode(images)  # type: ignore[attr-defined]
    original_class = predict(classifier, images)
    reconstruction = backend.decode(point)  # type: ignore[attr-defined]
    base_thickness = thickness(reconstruction)
    edited = backend.decode(apply_vector(point, space, vector, strengths))  # type: ignore[attr-defined]
    edited = edited.reshape(len(images), len(strengths), *edited.shape[1:])
    reconstruction_class = predict(classifier, reconstruction)
    rows = []
    for j, s in enumerate(strengths):
        t = thickness(edited[:, j])
        edited_class = predict(classifier, edited[:, j])
        thicker = float(np.mean(t > base_thickness))
        kept = float(np.mean(edited_class == original_class))
        rows.append({"strength": s, "thicker": thicker, "class_kept": kept,
                     "class_kept_vs_reconstruction": float(np.mean(edited_class == reconstruction_class)),
                     "thickness_gain": float(np.mean(t - base_thickness)),
                     "passes": thicker >= TARGET and kept >= TARGET})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="VAE model name (default: the shipped one)")
    parser.add_argument("--n-test", type=int, default=500, help="test images for the edit criterion")
    parser.add_argument("--limit", type=int, default=10000, help="train images the vectors are fitted on")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--strengths", default="1,2,3", help="strengths to report (the criterion uses 2)")
    parser.add_argument("--scale", default=DEFAULT_SCALE, choices=SCALES, help="what strength 1 means")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auc-attributes", default="",
                        help="also report each method's held-out AUC for these attributes, e.g. slant,class:7")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from studio.classifier import load_classifier

    torch.set_num_threads(min(2, torch.get_num_threads()))
    settings = load_settings()
    backend = get_backend_class("vae").load(args.model, settings)
    classifier = load_classifier()
    test = load_dataset("mnist", "test", limit=args.n_test, settings=settings)
    strengths = [float(s) for s in args.strengths.split(",")]
    report: dict = {"backend": backend.describe()["model"], "n_test": len(test), "train_limit": args.limit,
                    "scale": args.scale, "target": TARGET, "methods": {}}
    for method in args.methods.split(","):
        start = time.perf_counter()
        vector, meta = fit_attribute_vector(backend, "mnist", "thickness", method, settings, limit=args.limit,
                                            seed=args.seed, scale=args.scale)
        fit_s = time.perf_counter() - start
        rows = edit_criterion(backend, classifier, test.images, vector, strengths)
        report["methods"][method] = {"auc": meta["auc"], "norm": meta["norm"], "sigma": meta["sigma"],
                                     "separation": meta["separation"], "fit_s": round(fit_s, 2), "edits": rows}
    report["auc"] = {}
    for attribute in filter(None, args.auc_attributes.split(",")):
        report["auc"][attribute] = {
            method: fit_attribute_vector(backend, "mnist", attribute, method, settings, limit=args.limit,
                                         seed=args.seed, scale=args.scale)[1]["auc"]
            for method in args.methods.split(",")}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"VAE {report['backend']['name']} ({report['backend']['sha256'][:16]}); thickness vectors (scale "
              f"{args.scale}) fitted on {args.limit} train images; edit criterion on {len(test)} test images "
              f"(target {TARGET:.0%} each)")
        print(f"{'method':<11}{'auc':>7}{'norm':>7}{'sep':>6}{'strength':>10}{'thicker':>9}{'kept':>7}"
              f"{'kept/rec':>9}{'gain':>8}  pass")
        for method, r in report["methods"].items():
            for e in r["edits"]:
                print(f"{method:<11}{r['auc']:>7.3f}{r['norm']:>7.2f}{r['separation']:>6.2f}{e['strength']:>10.1f}"
                      f"{e['thicker']:>9.1%}{e['class_kept']:>7.1%}{e['class_kept_vs_reconstruction']:>9.1%}"
                      f"{e['thickness_gain']:>8.3f}  {'yes' if e['passes'] else 'no'}")
        if report["auc"]:
            print(f"\nheld-out AUC{''.join(f'{m:>12}' for m in args.methods.split(','))}")
            for attribute, aucs in report["auc"].items():
                print(f"{attribute:<12}{''.join(f'{a:>12.3f}' for a in aucs.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
