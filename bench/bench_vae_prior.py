"""Sample quality of a shipped VAE under priors of several sizes: N(0, I) (no prior) and Gaussian mixtures of K
components (`studio_vae.prior`), fitted to copies of the weights (the shipped file is not touched).

Usage: .venv/bin/python bench/bench_vae_prior.py [--model mnist] [--components 10,30,100] [--n 2000] [--repeats 2]
Prints one JSON line per prior: confident share, FCD, its floor and KID (`studio.evaluate.evaluate_backend`, the
dataset the model was trained on), and the seconds the mixture took to fit.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--components", default="10,30,100")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch
    from studio_vae.backend import VAEBackend, _model_info
    from studio_vae.prior import PRIOR_KEY, PRIOR_PREFIX, add_prior

    from studio.config import load_settings
    from studio.evaluate import evaluate_backend
    from studio.safetensors_io import load_tensors, read_metadata, save_weights

    torch.set_num_threads(1)
    settings = load_settings()
    shipped = VAEBackend.load(args.model, settings).model
    dataset = shipped.extra.get("dataset", "mnist")
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.safetensors"
        meta = {k: v for k, v in read_metadata(shipped.path).items() if k != PRIOR_KEY}
        save_weights(plain, {k: v for k, v in load_tensors(shipped.path).items() if not k.startswith(PRIOR_PREFIX)},
                     meta)
        for k in [0, *(int(c) for c in args.components.split(","))]:
            path, started = plain, time.perf_counter()
            if k:
                path = Path(tmp) / f"k{k}.safetensors"
                add_prior(plain, dataset, components=k, out=path)
            fit_seconds = round(time.perf_counter() - started, 1)
            backend = VAEBackend(_model_info(path.stem, path, "bench"))
            q = evaluate_backend(backend, n=args.n, repeats=args.repeats, dataset=dataset, settings=settings)
            print(json.dumps({"model": args.model, "prior": f"mixture of {k}" if k else "N(0, I)",
                              "fit_seconds": fit_seconds, "n": args.n, "repeats": args.repeats,
                              **{key: q[key] for key in ("confident_share", "fcd", "fcd_floor", "kid")}}), flush=True)


if __name__ == "__main__":
    main()
