"""Regularity of every shipped model's seed space: perceptual path length (slerp, lerp) and linear separability.

What `studio evaluate --no-quality` reports (studio.regularity), for each shipped model:
- vae mnist, gan mnist (and any other shipped vae/gan model whose images are 1x28x28: fashion models score
  against the fashion classifier);
- gan faces: PPL only. Its 3x64x64 images are converted to 1x28x28 for the MNIST classifier, so its feature PPL
  is a loose yardstick; the pixel PPL is the comparable one. There are no classes, so no separability.
- sd mnist-fashion: the seed space is the diffusion noise (4x8x8); decoding runs the sampler (DDIM, `--sd-steps`,
  empty prompt, guidance 1), so each image costs a whole diffusion. Separability uses classifier-labelled samples.

Run: STUDIO_HOME=/tmp/x .venv/bin/python bench/bench_regularity.py [--pairs 1000] [--n 4000] [--sd-pairs 200]
     [--sd-n 1000] [--only vae:mnist,gan:faces]
"""

from __future__ import annotations

import argparse
import json
import time


def models(only: str | None) -> list[tuple[str, str, str]]:
    """(backend, model, dataset) of every shipped model (or those named in `only`)."""
    from studio.config import load_settings
    from studio.registry import get_backend_class

    settings = load_settings()
    found = []
    for backend in ("vae", "gan", "sd"):
        try:
            infos = get_backend_class(backend).available_models(settings)
        except Exception as exc:  # noqa: BLE001 - a missing plugin is reported, not fatal
            print(f"{backend}: not available ({exc})")
            continue
        for info in infos:
            if info.error or "user weights" in info.description:
                continue
            dataset = "fashion" if info.name.startswith("fashion") else "mnist"
            found.append((backend, info.name, dataset))
    if only:
        wanted = {tuple(x.split(":")) for x in only.split(",")}
        found = [f for f in found if f[:2] in wanted]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1000, help="PPL pairs (vae, gan)")
    parser.add_argument("--n", type=int, default=4000, help="separability latents (vae, gan)")
    parser.add_argument("--sd-pairs", type=int, default=200)
    parser.add_argument("--sd-n", type=int, default=1000)
    parser.add_argument("--sd-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="comma-separated backend:model")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from studio.config import load_settings
    from studio.executor import Runtime
    from studio.regularity import regularity

    settings = load_settings()
    runtime = Runtime(settings)
    rows = []
    for backend_name, model, dataset in models(args.only):
        backend = runtime.get_backend(backend_name, model)
        options = None
        pairs, n = args.pairs, args.n
        if backend_name == "sd":
            options = backend.parse_options({"steps": args.sd_steps, "guidance": 1.0, "prompt": ""})
            pairs, n = args.sd_pairs, args.sd_n
        if backend_name == "gan" and tuple(backend.image_shape()) != (1, 28, 28):
            n = 0  # faces: no classes to separate
        started = time.perf_counter()
        result = regularity(backend, ppl_pairs=pairs, separability_n=n, dataset=dataset, seed=args.seed,
                            settings=settings, options=options)
        seconds = round(time.perf_counter() - started, 1)
        row = {"backend": backend_name, "model": model, "sha256": backend.model.sha256[:16], "dataset": dataset,
               "seconds": seconds, **result}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| model | PPL slerp | PPL lerp | PPL slerp (pixels) | PPL lerp (pixels) | separability (chance) | "
          "H(class given prediction), bits | labels | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        sep = (f"{r['separability_accuracy']:.3f} ({r['separability_chance']:.3f})"
               if "separability_accuracy" in r else "n/a")
        bits = f"{r['separability_entropy_bits']:.3f}" if "separability_entropy_bits" in r else "n/a"
        print(f"| {r['backend']} {r['model']} | {r['ppl_slerp']} | {r['ppl_lerp']} | {r['ppl_slerp_pixels']} | "
              f"{r['ppl_lerp_pixels']} | {sep} | {bits} | {r.get('separability_labels', 'n/a')} | {r['seconds']} |")


if __name__ == "__main__":
    main()
