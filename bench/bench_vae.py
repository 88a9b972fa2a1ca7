"""Benchmark a shipped VAE: full-test-set reconstruction PSNR and sample quality (FCD, KID, confident share).

Usage: .venv/bin/python bench/bench_vae.py [--model mnist] [--dataset DATASET] [--n 2000] [--repeats 5] [--seed 0]
[--limit 10000]. The dataset (test images and classifier) defaults to the one the model was trained on.
Prints one JSON object. PSNR is measured on images mapped from [-1, 1] to [0, 1] with peak 1:
`test_psnr` is the mean of per-image PSNRs, `test_psnr_pooled` the PSNR of the MSE pooled over all pixels.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--dataset", default=None, help="default: the model's training dataset (its metadata)")
    parser.add_argument("--n", type=int, default=2000, help="samples for FCD, KID and the confident share")
    parser.add_argument("--repeats", type=int, default=5, help="draws of n averaged")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="test images for PSNR (default: all 10,000)")
    args = parser.parse_args()

    import torch
    from studio_vae.backend import VAEBackend
    from studio_vae.train import psnr_per_image

    from studio.config import load_settings
    from studio.datasets import load_dataset
    from studio.evaluate import evaluate_backend

    torch.set_num_threads(2)
    settings = load_settings()
    backend = VAEBackend.load(args.model, settings)
    dataset = args.dataset or backend.model.extra.get("dataset", "mnist")
    test = load_dataset(dataset, "test", limit=args.limit, settings=settings)
    started = time.perf_counter()
    rec = backend.decode(backend.encode(test.images))
    psnr_seconds = time.perf_counter() - started
    pooled_mse = float((((test.images - rec) / 2) ** 2).double().mean())
    started = time.perf_counter()
    quality = evaluate_backend(backend, n=args.n, seed=args.seed, settings=settings, repeats=args.repeats,
                               dataset=dataset)
    result = {
        "backend": "vae", "model": backend.model.name, "sha256": backend.model.sha256, "dataset": dataset,
        "test_images": len(test), "test_psnr": round(float(psnr_per_image(test.images, rec).mean()), 3),
        "test_psnr_pooled": round(10 * torch.log10(torch.tensor(1.0 / pooled_mse)).item(), 3),
        "roundtrip_seconds": round(psnr_seconds, 2),
        **{k: quality[k] for k in ("n", "repeats", "seed", "confident_share", "fcd", "fcd_floor", "fcd_ratio",
                                   "fcd_range", "fcd_floor_range", "kid", "kid_floor", "kid_range",
                                   "kid_floor_range", "class_share")},
        "evaluate_seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
