"""Rate-distortion of the compression round trip against JPEG, WebP, AVIF and downscaled WebP at matched bytes.

For each bit depth, every image is compressed through the backend's CODEC space and the baselines are
searched per image for the best file no larger than our payload (headers included; see
`studio.ops.compression`). Where no baseline file is that small, the table says so (coverage 0%) and shows
the smallest file the encoder can make. "best" is, per image, the best PSNR of any codec whose file fit;
"gain" is ours minus best over those images (mean, and the worst image's). Our own numbers use `--limit`
images; the matched baselines (slow: hundreds of encodes per image) use the first `--baseline-limit`.

    .venv/bin/python bench/bench_compression.py                       # MNIST test, shipped VAE, bits 2..10
    .venv/bin/python bench/bench_compression.py --model mnist-codec --bits 1-10 --baseline-limit 1000 \\
        --plot docs/rd-mnist-codec.png --coders --json out.json
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
from studio.ops import compression as comp
from studio.registry import get_backend_class

CODECS = comp.BASELINE_CODECS
LABELS = {"jpeg": "JPEG", "webp": "WebP", "avif": "AVIF", "webp_downscaled": "WebP downscaled"}


def _fmt(value: object, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def rate_distortion(backend: object, images: object, bits_list: list[int], baseline_limit: int) -> list[dict]:
    """One row per bit depth: ours over all images, the matched baselines over the first `baseline_limit`."""
    rows = []
    for bits in bits_list:
        t0 = time.perf_counter()
        ours = comp.roundtrip(backend, images, bits, baselines=False).metrics  # type: ignore[arg-type]
        row = dict(ours)
        if baseline_limit > 0:
            matched = comp.roundtrip(backend, images[:baseline_limit], bits).metrics  # type: ignore[index,arg-type]
            row |= {"baseline_n": matched["n"], "psnr_subset": matched["psnr"], "ssim_subset": matched["ssim"],
                    "bytes_subset": matched["bytes_per_image"], "baselines": matched["baselines"]}
            row |= {k: v for k, v in matched.items() if k.startswith(("best_baseline", "psnr_on_best", "psnr_gain"))}
            for name in CODECS:
                row |= {k: v for k, v in matched.items() if k.startswith((f"{name}_", f"psnr_on_{name}_"))}
        rows.append(row | {"seconds": round(time.perf_counter() - t0, 2)})
        print(f"  bits={bits} done in {rows[-1]['seconds']} s", file=sys.stderr)
    return rows


def budget_table(images: object, budgets: list[int]) -> list[dict]:
    """Every baseline at fixed byte budgets (per image), and at its smallest files."""
    originals = images.numpy()  # type: ignore[attr-defined]
    pil = to_pil(images)  # type: ignore[arg-type]
    makers = {"jpeg": comp.jpeg_baseline, "webp": comp.webp_baseline, "webp_downscaled": comp.downscaled_webp_baseline}
    if comp.avif_available():
        makers["avif"] = comp.avif_baseline
    rows = []
    for budget in budgets:
        row: dict = {"budget": budget}
        for name, make in makers.items():
            results = [make(im, budget, reference=originals[i]) for i, im in enumerate(pil)]
            fit = [r.matched for r in results if r.matched is not None]
            row |= {f"{name}_coverage": len(fit) / len(results),
                    f"{name}_psnr": float(np.mean([m.psnr for m in fit])) if fit else None,
                    f"{name}_ssim": float(np.mean([m.ssim for m in fit])) if fit else None,
                    f"{name}_bytes": float(np.mean([m.n_bytes for m in fit])) if fit else None}
            if budget == budgets[0]:
                row |= {f"{name}_min_bytes": float(np.mean([r.smallest.n_bytes for r in results])),
                        f"{name}_psnr_at_min_bytes": float(np.mean([r.smallest.psnr for r in results]))}
        rows.append(row)
    return rows


def coder_comparison(backend: object, images: object, bits_list: list[int]) -> list[dict]:
    """The hand-written arithmetic coder against constriction's range coder on the same symbols and tables.

    constriction writes 32-bit words; "trimmed" drops the last word's trailing zero bytes (a decoder pads
    them back, as ours does), which is the fair size to compare. Both decode exactly (checked).
    """
    import constriction

    space = backend.space_for(comp.CODEC)  # type: ignore[attr-defined]
    z = backend.encode(images)[space.name]  # type: ignore[attr-defined]
    rows = []
    for bits in bits_list:
        tables = comp.coding_tables(space, bits)
        symbols = comp.quantise(z, space, bits).reshape(len(z), -1)
        t0 = time.perf_counter()
        ours = [comp.encode_symbols(row, tables) for row in symbols]
        t1 = time.perf_counter()
        decoded = np.stack([comp.decode_symbols(p, tables) for p in ours])
        t2 = time.perf_counter()
        assert np.array_equal(decoded, symbols)
        probs = np.diff(tables.cumulative, axis=1)[tables.index].astype(np.float64)
        probs /= probs.sum(1, keepdims=True)
        family = constriction.stream.model.Categorical(perfect=False)
        t3 = time.perf_counter()
        words = []
        for row in symbols:
            enc = constriction.stream.queue.RangeEncoder()
            enc.encode(row.astype(np.int32), family, probs)
            words.append(enc.get_compressed())
        t4 = time.perf_counter()
        back = np.stack([constriction.stream.queue.RangeDecoder(w).decode(family, probs) for w in words])
        t5 = time.perf_counter()
        assert np.array_equal(back, symbols)
        raw = [4 * len(w) for w in words]
        trimmed = [len(w.astype("<u4").tobytes().rstrip(b"\x00")) for w in words]
        n = len(symbols)
        rows.append({"bits": bits, "ideal_bytes": float(np.mean([tables.information_bits(r) for r in symbols]) / 8),
                     "ours_bytes": float(np.mean([len(p) for p in ours])),
                     "constriction_bytes": float(np.mean(raw)), "constriction_trimmed_bytes": float(np.mean(trimmed)),
                     "ours_encode_ms": 1000 * (t1 - t0) / n, "ours_decode_ms": 1000 * (t2 - t1) / n,
                     "constriction_encode_ms": 1000 * (t4 - t3) / n, "constriction_decode_ms": 1000 * (t5 - t4) / n})
    return rows


def plot(rows: list[dict], path: str, title: str) -> None:
    """PSNR against bytes per image: ours, and each baseline at our payload's size (where its files fit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    x = [r.get("bytes_subset", r["bytes_per_image"]) for r in rows]
    ax.plot(x, [r.get("psnr_subset", r["psnr"]) for r in rows], "o-", color="black", label="ours (mnist-codec)")
    markers = {"jpeg": "s", "webp": "^", "avif": "D", "webp_downscaled": "v"}
    for name in CODECS:
        pts = [(xi, r.get(f"{name}_psnr"), r.get(f"{name}_coverage", 0.0)) for xi, r in zip(x, rows, strict=True)]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], markers[name] + "--", label=LABELS[name])
    best = [(xi, r["best_baseline_psnr"]) for xi, r in zip(x, rows, strict=True) if r.get("best_baseline_psnr")]
    if best:
        ax.plot([b[0] for b in best], [b[1] + 3 for b in best], ":", color="grey", label="best baseline + 3 dB")
    ax.axvspan(16, 128, color="green", alpha=0.05)
    ax.set_xlabel("bytes per image (whole file / payload)")
    ax.set_ylabel("PSNR (dB), mean over images where the baseline fits")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _bits(text: str) -> list[int]:
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="vae")
    parser.add_argument("--model", default=None, help="model name (default: the backend's default)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=10000)
    parser.add_argument("--baseline-limit", type=int, default=1000, help="images for the matched baselines")
    parser.add_argument("--bits", default="2-10", help="a range A-B or a list A,B,C")
    parser.add_argument("--budgets", default="", help="byte budgets for a baselines-only table, e.g. 60,100,200")
    parser.add_argument("--budget-limit", type=int, default=1000, help="images used for the budget table")
    parser.add_argument("--plot", default=None, help="write the rate-distortion plot (PNG) here")
    parser.add_argument("--coders", action="store_true", help="compare with constriction (needs it installed)")
    parser.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    args = parser.parse_args(argv)

    bits_list = _bits(args.bits)
    budgets = [int(x) for x in args.budgets.split(",") if x]
    settings = load_settings()
    backend = get_backend_class(args.backend).load(args.model, settings)
    data = load_dataset(args.dataset, args.split, args.limit, settings, shape=backend.image_shape())
    images = data.images
    n, (c, h, w) = len(images), backend.image_shape()
    nb = min(n, args.baseline_limit)
    comp.set_encode_cache(max(1 << 15, 400 * nb))  # one pass of files, reused at the next bit depth
    print(f"# {args.backend} ({backend.model.name}, sha256 {backend.model.sha256[:12]}), {args.dataset} "
          f"{args.split}, {n} images {c}x{h}x{w}; matched baselines on the first {nb}", file=sys.stderr)

    rd = rate_distortion(backend, images, bits_list, nb)
    print(f"\n## Rate-distortion: {args.backend}/{backend.model.name} on {args.dataset} {args.split}\n")
    print(f"Ours over n={n}; the matched comparison over the first {nb} images (ours re-measured there). "
          "Baseline cells: PSNR (share of images with a file that fits); '-' = no file that small.\n")
    head = ["bits", "bytes/img", "bpp", "PSNR", "SSIM", "PSNR unquant.", f"B/img (n={nb})", f"PSNR (n={nb})",
            "best baseline", "gain", "worst-image gain"] + [LABELS[k] for k in CODECS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for r in rd:
        cells = [str(r["bits"]), f"{r['bytes_per_image']:.2f}", f"{r['bpp']:.3f}", f"{r['psnr']:.2f}",
                 f"{r['ssim']:.3f}", f"{r['psnr_unquantised']:.2f}"]
        if "baselines" in r:
            cells += [f"{r['bytes_subset']:.2f}", f"{r['psnr_subset']:.2f}",
                      f"{_fmt(r['best_baseline_psnr'])} ({100 * r['best_baseline_coverage']:.0f}%)",
                      _fmt(r["psnr_gain_over_best_baseline"], "+.2f"),
                      _fmt(r["psnr_gain_over_best_baseline_min"], "+.2f")]
            for entry in r["baselines"]:
                cells.append("n/a" if not entry["available"] else
                             f"{_fmt(entry['psnr'])} ({100 * entry['coverage']:.0f}%)")
        print("| " + " | ".join(cells) + " |")
    if rd and "baselines" in rd[0]:
        print("\nSmallest file each baseline makes (mean over images): " + "; ".join(
            f"{LABELS[e['codec']]} {e['min_bytes']:.1f} B at {e['psnr_at_min_bytes']:.2f} dB"
            for e in rd[0]["baselines"] if e["available"]))

    bt = budget_table(images[:args.budget_limit], budgets) if budgets else []
    if bt:
        names = [k for k in CODECS if f"{k}_coverage" in bt[0]]
        print(f"\n## Baselines at fixed budgets (n={min(n, args.budget_limit)})\n")
        print("| budget B | " + " | ".join(f"{LABELS[k]} PSNR (fit)" for k in names) + " |")
        print("|---:|" + "---:|" * len(names))
        for r in bt:
            print(f"| {r['budget']} | " + " | ".join(f"{_fmt(r[f'{k}_psnr'])} ({100 * r[f'{k}_coverage']:.0f}%)"
                                                    for k in names) + " |")
    coders = coder_comparison(backend, images[:nb], bits_list) if args.coders else []
    if coders:
        print(f"\n## Entropy coders on the same symbols and tables (n={nb} payloads)\n")
        print("| bits | ideal B | ours B | constriction B (32-bit words) | constriction B (trimmed) "
              "| ours enc ms | ours dec ms | constriction enc ms | constriction dec ms |")
        print("|" + "---:|" * 9)
        for r in coders:
            print(f"| {r['bits']} | {r['ideal_bytes']:.2f} | {r['ours_bytes']:.2f} | {r['constriction_bytes']:.2f} | "
                  f"{r['constriction_trimmed_bytes']:.2f} | {r['ours_encode_ms']:.3f} | {r['ours_decode_ms']:.3f} | "
                  f"{r['constriction_encode_ms']:.3f} | {r['constriction_decode_ms']:.3f} |")
    if args.plot:
        plot(rd, args.plot, f"{args.backend}/{backend.model.name} on {args.dataset} {args.split} "
                            f"(matched baselines, n={nb})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.backend, "model": backend.model.describe(), "dataset": args.dataset,
                       "split": args.split, "n": n, "baseline_n": nb, "rate_distortion": rd, "budgets": bt,
                       "coders": coders}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
