"""The shipped text-to-image model (`--backend sd --model mnist-fashion`): prompt adherence against guidance,
sample quality (FCD/KID against their floors), autoencoder PSNR, and CPU speed.

    .venv/bin/python bench/bench_ldm.py                      # the full numbers of docs/BENCHMARKS.md (~25 min)
    .venv/bin/python bench/bench_ldm.py --per-class 10 --n-fcd 500 --repeats 1   # a quick look (~3 min)

- Adherence: for each of the 10 digit and 10 Fashion-MNIST prompts, `--per-class` images at 20 DDIM steps, the
  share the project's classifier gives the prompt's class, at each `--guidances` value (7.5 is the default).
- FCD/KID: digit prompts (an equal share per class, default guidance) against MNIST's test split, with the floor
  of real training images, as `studio evaluate` reports them; the same for garments against Fashion-MNIST.
- PSNR: the autoencoder's round trip (encode, decode) of the whole MNIST and Fashion-MNIST test sets.
- Speed: ms per image for 20 DDIM steps at guidance 7.5, batch 1 and batch 16, alternated `--speed-repeats` times.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _fcd(backend, kind: str, n: int, repeats: int, seed: int) -> dict:
    from studio_sd.quality import CLASSIFIER, for_classifier, generate
    from studio_sd.train_ldm import prompt_for

    from studio.classifier import load_classifier
    from studio.evaluate import dataset_features, draw_scores, floor_scores

    dataset = CLASSIFIER[kind]
    classifier = load_classifier(dataset)
    per = n * repeats // 10
    feats = []
    for label in range(10):
        images = for_classifier(generate(backend, range(seed, seed + per), prompt=prompt_for(kind, label)))
        feats.append(classifier.features(images).numpy())
    feats = np.concatenate(feats)[np.random.default_rng(seed).permutation(per * 10)]  # draws mix the classes
    scores = draw_scores(feats, n, dataset_features(dataset, "test"))
    floor = floor_scores(dataset, n, repeats, seed)
    return {**scores, **floor, "fcd_over_floor": round(scores["fcd"] / floor["fcd_floor"], 3)}


def _psnr(backend, dataset: str) -> float:
    import torch
    from studio_sd.train_ldm import psnr

    from studio.config import load_settings
    from studio.datasets import load_dataset
    from studio.ops.explore import load_in_shape

    n = len(load_dataset(dataset, "test"))
    images = load_in_shape(backend, dataset, "test", n, load_settings()).images
    with torch.no_grad():
        recon = torch.cat([backend.decode(backend.encode(images[i:i + 500])) for i in range(0, n, 500)])
    return round(psnr(images, recon), 3)


def _speed(backend, repeats: int) -> dict:
    from studio_sd.quality import generate

    times: dict[int, list[float]] = {1: [], 16: []}
    generate(backend, [0], prompt="a handwritten digit 1", steps=2)  # warm-up
    for r in range(repeats):
        for batch in (1, 16):
            start = time.perf_counter()
            generate(backend, range(r * 16, r * 16 + batch), prompt="a photo of a bag", steps=20, guidance=7.5)
            times[batch].append((time.perf_counter() - start) * 1000 / batch)
    return {f"ms_per_image_batch_{b}": round(float(np.median(t)), 2) for b, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-fashion")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--guidances", default="1,3,5,7.5")
    parser.add_argument("--n-fcd", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--speed-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="adherence,fcd,psnr,speed", help="comma list of the parts to run")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))

    import torch
    from studio_sd.quality import KINDS, adherence

    from studio.config import load_settings
    from studio.registry import get_backend_class

    torch.set_num_threads(args.threads)
    backend = get_backend_class("sd").load(args.model, load_settings())
    report: dict = {"model": args.model, "sha256": backend.model.sha256, "threads": args.threads,
                    "load_average": os.getloadavg()[0], "adherence": {}}
    start = time.time()
    for guidance in [float(g) for g in args.guidances.split(",")] if "adherence" in parts else []:
        row = {kind: adherence(backend, kind, args.per_class, args.seed, guidance=guidance) for kind in KINDS}
        report["adherence"][str(guidance)] = {kind: round(r["share"], 4) for kind, r in row.items()}
        if guidance == 7.5:
            report["per_class_at_7.5"] = {p: round(s, 3) for kind in KINDS for p, s in row[kind]["per_class"].items()}
        shares = report["adherence"][str(guidance)]
        print(f"guidance {guidance}: " + ", ".join(f"{k} {v:.3f}" for k, v in shares.items()), flush=True)
    if "fcd" in parts:
        report["fcd"] = {kind: _fcd(backend, kind, args.n_fcd, args.repeats, args.seed) for kind in KINDS}
    if "psnr" in parts:
        report["autoencoder_psnr"] = {d: _psnr(backend, d) for d in ("mnist", "fashion")}
    if "speed" in parts:
        report["speed"] = _speed(backend, args.speed_repeats)
    report["seconds"] = round(time.time() - start, 1)
    report["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
