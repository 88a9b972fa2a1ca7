"""Benchmark the out-of-distribution check (studio.ood): the share of each full test set flagged by each shipped model.

Usage: .venv/bin/python bench/bench_ood.py [--models vae/mnist,sd/mnist-fashion,gan/mnist] [--budget 180]
[--compare] [--threads 2]. Default models: every shipped model of the vae, gan and sd backends.

For each model it calibrates (or reads the cached calibration: once per weights sha256), then prints one JSON line:
the share flagged of the MNIST, Fashion-MNIST and animal-mnist test sets (all images), and, for each dataset the
model was trained on, the share of its held-out test images (those after the calibration's first ones: the honest
false-positive rate). `--compare` adds what two simpler scores would flag at the same 99.9th percentile (plain
mean squared error, and the latent's -log density under a Gaussian fitted to the training split's codes), to show
why the score is what it is. `--budget 0` calibrates even a slow encoder (GAN inversion: ~0.14 s per image).
A markdown table follows the JSON lines.
"""

from __future__ import annotations

import argparse
import json
import time

DATASETS = ("mnist", "fashion", "animals")


def shipped_models(settings: object) -> list[str]:
    """backend/model for every shipped model (weights inside the plugins) of the vae, gan and sd backends."""
    from pathlib import Path

    from studio.registry import get_backend_class

    found = []
    for name in ("vae", "gan", "sd"):
        try:
            cls = get_backend_class(name)
            models = cls.available_models(settings)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot list is reported, not fatal
            print(json.dumps({"backend": name, "skipped": f"{type(exc).__name__}: {exc}"}))
            continue
        plugin_dir = Path(__import__(cls.__module__.split(".")[0]).__file__).parent
        found += [f"{name}/{m.name}" for m in models
                  if not m.error and Path(m.path).resolve().is_relative_to(plugin_dir)]
    return found


def compare(backend: object, settings: object, sets: dict[str, object], cal: object) -> dict:
    """Shares flagged by plain MSE and by the latent's -log density, each thresholded at the same percentile of the
    same calibration images."""
    import numpy as np
    import torch

    from studio import ood
    from studio.contract import CODEC

    space = backend.space_for(CODEC).name
    fit = ood._split_images(backend, cal.datasets, "train", ood.FIT_IMAGES, settings, None)
    test = ood._split_images(backend, cal.datasets, "test", ood.CALIBRATION_IMAGES, settings, None)

    def codes(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([backend.encode(x[i:i + 256])[space].reshape(len(x[i:i + 256]), -1).numpy()
                                   for i in range(0, len(x), 256)])

    zf = codes(fit)
    mu, sd = zf.mean(0), zf.std(0) + 1e-6

    def both(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        mse = (ood.residuals(backend, x).astype(np.float64) ** 2).mean(1)
        return mse, (0.5 * ((codes(x) - mu) / sd) ** 2).sum(1)

    cal_mse, cal_nll = both(test)
    t_mse, t_nll = np.percentile(cal_mse, ood.PERCENTILE), np.percentile(cal_nll, ood.PERCENTILE)
    out = {}
    for name, x in sets.items():
        mse, nll = both(x)
        out[name] = {"mse_only": round(float((mse > t_mse).mean()), 4),
                     "latent_only": round(float((nll > t_nll).mean()), 4)}
    return out


def bench_model(label: str, settings: object, budget: float | None, with_compare: bool) -> dict:
    from studio import ood
    from studio.errors import StudioError
    from studio.ops.explore import load_in_shape
    from studio.registry import get_backend_class

    backend_name, model = label.split("/", 1)
    started = time.perf_counter()
    backend = get_backend_class(backend_name).load(model, settings)
    cal = ood.calibrate(backend, settings, budget_s=budget)
    if isinstance(cal, str):
        return {"model": label, "calibrated": False, "reason": cal}
    row: dict = {"model": label, "calibrated": True, "trained_on": "+".join(cal.datasets),
                 "sha256": backend.model.sha256[:16], "threshold": round(cal.threshold, 4),
                 "calibration_images": len(cal.scores), "fit_images": cal.n_fit,
                 "calibration_seconds": cal.seconds, "shares": {}}
    sets = {}
    per_part = ood.CALIBRATION_IMAGES // len(cal.datasets)
    for name in DATASETS:
        try:
            x = load_in_shape(backend, name, "test", 10000, settings).images
        except StudioError as exc:
            row["shares"][f"{name}_test"] = f"not installed: {exc}"
            continue
        t0 = time.perf_counter()
        share = ood.assess(backend, x, settings).share
        row["shares"][f"{name}_test"] = {"n": len(x), "flagged": round(share, 4),
                                         "seconds": round(time.perf_counter() - t0, 2)}
        sets[f"{name}_test"] = x
        if name in cal.datasets and len(x) > per_part:
            held = x[per_part:]
            row["shares"][f"{name}_test_heldout"] = {"n": len(held), "flagged": round(ood.assess(backend, held,
                                                                                                 settings).share, 4)}
            sets[f"{name}_test_heldout"] = held
    if with_compare:
        row["compare"] = compare(backend, settings, sets, cal)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def _cell(v: object) -> str:
    return f"{100 * v['flagged']:.2f}% of {v['n']}" if isinstance(v, dict) else "-"


def table(rows: list[dict]) -> str:
    lines = ["| model | trained on | MNIST test | MNIST held-out | Fashion test | Fashion held-out | animals test |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.get("calibrated"):
            lines.append(f"| {r['model']} | not calibrated: {r.get('reason', '')} | | | | | |")
            continue
        cells = [_cell(r["shares"].get(key)) for key in ("mnist_test", "mnist_test_heldout", "fashion_test",
                                                         "fashion_test_heldout", "animals_test")]
        lines.append(f"| {r['model']} | {r['trained_on']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated backend/model (default: every shipped one)")
    parser.add_argument("--budget", type=float, default=None,
                        help="calibration time budget in seconds (default: studio.ood.BUDGET_S; 0: no limit)")
    parser.add_argument("--compare", action="store_true", help="also the shares of plain MSE and latent density")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from studio import ood
    from studio.config import load_settings

    torch.set_num_threads(args.threads)
    settings = load_settings()
    budget = ood.BUDGET_S if args.budget is None else (None if args.budget <= 0 else args.budget)
    labels = args.models.split(",") if args.models else shipped_models(settings)
    rows = []
    for label in labels:
        row = bench_model(label.strip(), settings, budget, args.compare)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
