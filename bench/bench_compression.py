"""Rate-distortion of the compression round trip against JPEG and WebP at matched bytes.

For each bit depth, every image is compressed through the backend's CODEC space and the baselines are
searched per image for the highest quality whose whole file (headers included) is no larger than our
payload. Where no baseline file is that small, the table says so (coverage 0%) and shows the smallest file
the encoder can make and its PSNR instead. A second table compares at larger budgets, where the baselines
fit, against our best point (whose quality is capped by the decoder: psnr_unquantised).

    .venv/bin/python bench/bench_compression.py                       # MNIST test, 10000 images, bits 2..10
    .venv/bin/python bench/bench_compression.py --limit 1000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from studio.config import load_settings
from studio.datasets import load_dataset
from studio.images import to_pil
from studio.ops.compression import jpeg_baseline, roundtrip, webp_baseline
from studio.registry import get_backend_class


def _fmt(value: object, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def rate_distortion(backend: object, images: object, bits_list: list[int], baselines: bool) -> list[dict]:
    rows = []
    for bits in bits_list:
        t0 = time.perf_counter()
        result = roundtrip(backend, images, bits, baselines=baselines)  # type: ignore[arg-type]
        rows.append(result.metrics | {"seconds": round(time.perf_counter() - t0, 2)})
        print(f"  bits={bits} done in {rows[-1]['seconds']} s", file=sys.stderr)
    return rows


def budget_table(images: object, budgets: list[int]) -> list[dict]:
    """JPEG and WebP at fixed byte budgets (per image), and at their smallest files."""
    originals = images.numpy()  # type: ignore[attr-defined]
    pil = to_pil(images)  # type: ignore[arg-type]
    rows = []
    for budget in budgets:
        row: dict = {"budget": budget}
        for name, make in (("jpeg", jpeg_baseline), ("webp", webp_baseline)):
            results = [make(im, budget, reference=originals[i]) for i, im in enumerate(pil)]
            fit = [r.matched for r in results if r.matched is not None]
            row |= {f"{name}_coverage": len(fit) / len(results),
                    f"{name}_psnr": float(np.mean([m.psnr for m in fit])) if fit else None,
                    f"{name}_ssim": float(np.mean([m.ssim for m in fit])) if fit else None,
                    f"{name}_bytes": float(np.mean([m.n_bytes for m in fit])) if fit else None}
            if budget == budgets[0]:
                row |= {f"{name}_min_bytes": float(np.mean([r.smallest.n_bytes for r in results])),
                        f"{name}_psnr_at_min_bytes": float(np.mean([r.smallest.psnr for r in results])),
                        f"{name}_ssim_at_min_bytes": float(np.mean([r.smallest.ssim for r in results]))}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="vae")
    parser.add_argument("--model", default=None, help="model name (default: the backend's default)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=10000)
    parser.add_argument("--bits", default="2-10", help="a range A-B or a list A,B,C")
    parser.add_argument("--budgets", default="60,80,100,150,200,300,500",
                        help="byte budgets for the baselines-only table")
    parser.add_argument("--budget-limit", type=int, default=1000, help="images used for the budget table")
    parser.add_argument("--no-baselines", action="store_true", help="skip the matched-bytes baselines")
    parser.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    args = parser.parse_args(argv)

    if "-" in args.bits:
        lo, hi = (int(x) for x in args.bits.split("-"))
        bits_list = list(range(lo, hi + 1))
    else:
        bits_list = [int(x) for x in args.bits.split(",")]
    budgets = [int(x) for x in args.budgets.split(",") if x]
    settings = load_settings()
    backend = get_backend_class(args.backend).load(args.model, settings)
    data = load_dataset(args.dataset, args.split, args.limit, settings, shape=backend.image_shape())
    images = data.images
    n, (c, h, w) = len(images), backend.image_shape()
    print(f"# {args.backend} ({backend.model.name}, sha256 {backend.model.sha256[:12]}), {args.dataset} "
          f"{args.split}, {n} images {c}x{h}x{w}", file=sys.stderr)

    rd = rate_distortion(backend, images, bits_list, baselines=not args.no_baselines)
    print(f"\n## Rate-distortion: {args.backend} on {args.dataset} {args.split}, n={n} "
          f"(baselines matched per image to our payload size; '-' = no file that small)\n")
    print("| bits | bytes/img | bpp | ideal B | PSNR | SSIM | PSNR unquant. | JPEG fit | JPEG PSNR | JPEG min B "
          "(PSNR) | WebP fit | WebP PSNR | WebP min B (PSNR) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rd:
        cells = [str(r["bits"]), f"{r['bytes_per_image']:.2f}", f"{r['bpp']:.3f}", f"{r['ideal_bytes_per_image']:.2f}",
                 f"{r['psnr']:.2f}", f"{r['ssim']:.3f}", f"{r['psnr_unquantised']:.2f}"]
        for b in ("jpeg", "webp"):
            if f"{b}_coverage" in r:
                cells += [f"{100 * r[f'{b}_coverage']:.0f}%", _fmt(r[f"{b}_psnr"]),
                          f"{r[f'{b}_min_bytes']:.0f} ({r[f'{b}_psnr_at_min_bytes']:.2f})"]
            else:
                cells += ["n/a"] * 3
        print("| " + " | ".join(cells) + " |")

    subset = images[:args.budget_limit]
    bt = budget_table(subset, budgets) if budgets else []
    top = max(r["psnr"] for r in rd)
    best = min((r for r in rd if r["psnr"] >= top - 0.05), key=lambda r: r["bytes_per_image"])  # fewest bytes
    if bt:
        print(f"\n## Larger budgets: baselines at fixed bytes per image (n={len(subset)}), against our best point\n")
        print(f"Ours, best (fewest bytes within 0.05 dB of the top PSNR): {best['bits']} bits, "
              f"{best['bytes_per_image']:.2f} B/img ({best['bpp']:.3f} bpp), "
              f"PSNR {best['psnr']:.2f} dB, SSIM {best['ssim']:.3f}; unquantised decoder ceiling "
              f"{best['psnr_unquantised']:.2f} dB.")
        first = bt[0]
        for b in ("jpeg", "webp"):
            print(f"{ {'jpeg': 'JPEG', 'webp': 'WebP'}[b]} smallest file: {first[f'{b}_min_bytes']:.1f} B/img, PSNR "
                  f"{first[f'{b}_psnr_at_min_bytes']:.2f} dB, SSIM {first[f'{b}_ssim_at_min_bytes']:.3f}.")
        print("\n| budget B | bpp | JPEG fit | JPEG B | JPEG PSNR | JPEG SSIM "
              "| WebP fit | WebP B | WebP PSNR | WebP SSIM |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in bt:
            cells = [str(r["budget"]), f"{8 * r['budget'] / (h * w):.2f}"]
            for b in ("jpeg", "webp"):
                cells += [f"{100 * r[f'{b}_coverage']:.0f}%", _fmt(r[f"{b}_bytes"], ".1f"), _fmt(r[f"{b}_psnr"]),
                          _fmt(r[f"{b}_ssim"], ".3f")]
            print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.backend, "model": backend.model.describe(), "dataset": args.dataset,
                       "split": args.split, "n": n, "rate_distortion": rd, "budgets": bt}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
