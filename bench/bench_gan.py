"""Benchmark of the gan backend: inversion PSNR against steps and seconds per image on MNIST test images, and
the sample quality (FCD and KID against their floors; the FCD was called FLD before).

    .venv/bin/python bench/bench_gan.py --limit 100 --steps 0,10,20,40,60,100 --fcd-n 2000 --json out.json

PSNR is measured on [0, 1] images (peak 1), averaged over images; class_kept is the share of reconstructions
the project's MNIST classifier puts in the same class as their originals. Times are wall-clock on the CPU with the
given thread count; on a shared machine, note the load average the script prints.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist", help="gan model name (default mnist)")
    parser.add_argument("--weights", default="", help="a GAN safetensors file to bench instead of --model")
    parser.add_argument("--limit", type=int, default=100, help="MNIST test images to invert")
    parser.add_argument("--steps", default="0,10,20,40,60,100", help="comma-separated inversion step counts")
    parser.add_argument("--restarts", type=int, default=None, help="restarts (default: the backend default)")
    parser.add_argument("--features", default="auto", choices=["auto", "classifier", "pyramid", "none"])
    parser.add_argument("--no-encoder", action="store_true", help="do not start a restart from the learned encoder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--fcd-n", type=int, default=2000, help="samples for FCD and KID (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="write the results here too")
    args = parser.parse_args()

    import torch
    from studio_gan.backend import GANBackend, GANOptions
    from studio_gan.importer import load_weights

    from studio.config import load_settings
    from studio.contract import ModelInfo
    from studio.datasets import load_dataset
    from studio.hashing import file_sha256

    torch.set_num_threads(args.threads)
    settings = load_settings()
    if args.weights:
        generator, encoder, _ = load_weights(args.weights)
        backend = GANBackend(ModelInfo("bench", args.weights, file_sha256(args.weights)), generator, encoder,
                             settings=settings)
    else:
        backend = GANBackend.load(args.model, settings)
    images = load_dataset("mnist", "test", limit=args.limit, settings=settings).images
    results: dict = {"model": backend.model.name, "sha256": backend.model.sha256, "images": len(images),
                     "threads": args.threads, "load_average": os.getloadavg(), "inversion": []}
    print(f"model {backend.model.name} ({backend.model.sha256[:12]}), {len(images)} MNIST test images, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    classes = None
    if tuple(images.shape[1:]) == (1, 28, 28) and backend.image_shape() == (1, 28, 28):
        from studio.classifier import load_classifier

        classifier = load_classifier()
        classes = classifier.predict(images)
    print(f"{'steps':>6} {'restarts':>8} {'psnr_db':>8} {'psnr_min':>8} {'>=16dB':>7} {'class_kept':>10} "
          f"{'s/image':>8}")
    for steps in [int(s) for s in args.steps.split(",") if s.strip()]:
        fields = {"invert_steps": steps, "invert_features": args.features, "invert_encoder": not args.no_encoder}
        if args.restarts is not None:
            fields["invert_restarts"] = args.restarts
        options = GANOptions(**fields)
        started = time.perf_counter()
        point = backend.encode(images, options, seed=args.seed)
        seconds = time.perf_counter() - started
        recon = backend.decode(point)
        psnr = 10 * torch.log10(1.0 / (((recon - images) / 2) ** 2).flatten(1).mean(1).clamp_min(1e-10))
        row = {"steps": steps, "restarts": options.invert_restarts, "psnr": round(float(psnr.mean()), 3),
               "psnr_min": round(float(psnr.min()), 3), "share_16db": round(float((psnr >= 16).float().mean()), 3),
               "seconds_per_image": round(seconds / len(images), 4)}
        if classes is not None:
            row["class_kept"] = round(float((classifier.predict(recon) == classes).float().mean()), 3)
        results["inversion"].append(row)
        print(f"{steps:>6} {row['restarts']:>8} {row['psnr']:>8.2f} {row['psnr_min']:>8.2f} "
              f"{row['share_16db']:>7.2f} {row.get('class_kept', float('nan')):>10.3f} "
              f"{row['seconds_per_image']:>8.3f}", flush=True)
    if args.fcd_n:
        from studio.evaluate import evaluate_backend

        started = time.perf_counter()
        quality = evaluate_backend(backend, n=args.fcd_n, seed=args.seed, settings=settings)
        quality["seconds"] = round(time.perf_counter() - started, 1)
        results["quality"] = quality
        print(f"FCD {quality['fcd']:.3f}  floor {quality['fcd_floor']:.3f}  ratio {quality['fcd_ratio']:.2f}  "
              f"KID {quality['kid']:.4f}  floor {quality['kid_floor']:.4f}  "
              f"confident {quality['confident_share']:.3f}  (means of {quality['repeats']} draws of n={args.fcd_n}; "
              f"FCD range {quality['fcd_range']}, floor range {quality['fcd_floor_range']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
