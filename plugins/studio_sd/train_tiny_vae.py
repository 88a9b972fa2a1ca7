"""Training recipe of the tiny SD pipeline's VAE (the weights shipped in `weights/tiny-vae.safetensors`).

A VAE with random weights maps every image to about the same reconstruction, so the codec space of a
tiny test pipeline would say nothing (the conformance round-trip check fails on it). This trains the tiny
VAE architecture of `tiny.py` (81k parameters, 64x64 RGB <-> 4x8x8) on crops of the RGB images bundled
with scikit-image plus synthetic shapes, with SD's VAE loss (reconstruction + 1e-6 KL; no GAN/LPIPS),
and stores `scaling_factor` = 1 / std of the latent means, so scaled codec latents have std ~1 as in SD.

    .venv/bin/python -m studio_sd.train_tiny_vae --steps 2500 --out plugins/studio_sd/weights/tiny-vae.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "retina", "immunohistochemistry", "hubble_deep_field",
          "colorwheel", "logo")
SIZE = 64


def _shapes(rng: np.random.Generator) -> np.ndarray:
    """A 64x64 RGB image of a smooth colour field with a few flat-coloured rectangles and discs, in [0, 1]."""
    from PIL import Image

    field = rng.random((3, 3, 3)).astype(np.float32)
    im = np.asarray(Image.fromarray((field * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BICUBIC),
                    dtype=np.float32) / 255
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for _ in range(rng.integers(1, 5)):
        colour = rng.random(3).astype(np.float32)
        cy, cx, r = rng.integers(0, SIZE, 2).tolist() + [int(rng.integers(4, 20))]
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if rng.random() < 0.5 else (
            (abs(yy - cy) < r) & (abs(xx - cx) < rng.integers(4, 20)))
        im[mask] = colour
    return im


def make_images(n: int, seed: int) -> np.ndarray:
    """n training images (N, 3, 64, 64) in [-1, 1]: 70% random crops of scikit-image's RGB images, 30% shapes."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in IMAGES]
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(n):
        if rng.random() < 0.3:
            im = _shapes(rng)
        else:
            src = sources[rng.integers(len(sources))]
            side = int(rng.integers(SIZE, min(src.size) // 2 + SIZE))
            x, y = int(rng.integers(0, src.width - side + 1)), int(rng.integers(0, src.height - side + 1))
            crop = src.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            im = np.asarray(crop, dtype=np.float32) / 255
            if rng.random() < 0.5:
                im = im[:, ::-1]
        out[i] = im.transpose(2, 0, 1) * 2 - 1
    return out


def train(steps: int, batch: int = 16, lr: float = 1e-3, seed: int = 0, n_train: int = 4096, n_test: int = 256,
          log_every: int = 100) -> tuple[dict, dict]:
    """Train the tiny VAE; returns (state_dict, metrics)."""
    import torch

    from .tiny import build_sd_pipeline

    torch.manual_seed(seed)
    vae = build_sd_pipeline("tiny", seed=seed, trained_vae=False).vae.train()
    train_x = torch.from_numpy(make_images(n_train, seed))
    test_x = torch.from_numpy(make_images(n_test, seed + 1))
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(1, steps + 1):
        x = train_x[torch.randint(0, n_train, (batch,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)", file=sys.stderr)
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(test_x[i:i + 64]).latent_dist.mean for i in range(0, n_test, 64)])
        recon = torch.cat([vae.decode(means[i:i + 64]).sample for i in range(0, n_test, 64)]).clamp(-1, 1)
    mse = ((recon - test_x) ** 2).flatten(1).mean(1)
    psnr = float((10 * torch.log10(4.0 / mse)).mean())
    metrics = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "train_images": n_train,
               "test_images": n_test, "test_psnr_db": round(psnr, 2), "latent_std": float(means.std()),
               "scaling_factor": float(1.0 / means.std()), "seconds": round(time.time() - start, 1)}
    return {k: v.detach().contiguous() for k, v in vae.state_dict().items()}, metrics


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "weights" / "tiny-vae.safetensors")
    args = parser.parse_args(argv)
    state, metrics = train(args.steps, args.batch, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={"metrics": json.dumps(metrics), "recipe": "studio_sd.train_tiny_vae"})
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
