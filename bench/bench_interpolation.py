"""slerp vs lerp midpoints between prior samples: how far the midpoint's norm is from the endpoints' norm.

Usage: python bench/bench_interpolation.py [--pairs 10000]
Prints, per latent shape (VAE 16, GAN 100, SD noise 4x64x64), the mean and worst relative norm change at t=0.5.
"""

from __future__ import annotations

import argparse
import json

import torch

from studio.ops.interpolate import lerp, slerp

SHAPES = {"vae z (16)": (16,), "gan z (100)": (100,), "sd noise (4x64x64)": (4, 64, 64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=10000)
    args = parser.parse_args()
    rows = {}
    for label, shape in SHAPES.items():
        pairs = args.pairs if len(shape) == 1 else max(100, args.pairs // 100)
        gen = torch.Generator().manual_seed(0)
        ratios = {"slerp": [], "lerp": []}
        for _ in range(pairs):
            a, b = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
            ends = (a.norm() + b.norm()) / 2
            ratios["slerp"].append(float(slerp(a, b, [0.5])[0].norm() / ends))
            ratios["lerp"].append(float(lerp(a, b, [0.5])[0].norm() / ends))
        rows[label] = {m: {"mean_change_pct": round(100 * (sum(r) / len(r) - 1), 3),
                           "worst_change_pct": round(100 * max(abs(x - 1) for x in r), 3)} for m, r in ratios.items()}
        rows[label]["pairs"] = pairs
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
