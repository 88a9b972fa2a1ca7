"""Training recipe for a codec model: a `ConvVAE` used as a deterministic autoencoder for rate and distortion.

The round trip (`studio.ops.compression`) codes element d of the latent with 2**bits equal bins over
mean_d +- 4 std_d, dequantises to the bin's centroid under N(mean_d, std_d) and entropy-codes the symbols
under that discretised Gaussian. In those std units the rate per element depends on `bits` alone (about
bits - 0.95 bits from 4 bits up; 1, 1.27 and 2.09 bits at 1, 2 and 3): the rate of an operating point is
set by `latent_dim` and `bits`, and what training can still buy is distortion at every operating point.
So the encoder is deterministic (the posterior mean; the log-variance head is unused) and each training
image is decoded from its latent *quantised exactly as the coder will quantise it*, at a bit depth drawn
per image from `bits` (default 4..10: with 128 elements, 1-3 bits give 16-33 byte payloads, below any
baseline file; the model still decodes them, less well): the forward pass uses the
centroid, the backward pass the straight-through gradient.
The per-dimension mean and std the quantiser needs are tracked during training (a running average of the
batch statistics) and recomputed over the whole training set at the end: those are the coding statistics
saved in the metadata, exactly as `studio_vae.train` saves them. The loss (`mse`, the default) is the
squared error on [0, 1] pixels, what PSNR measures, plus 0.05 x the Bernoulli cross-entropy, whose gradient
keeps a saturated output pixel trainable (the squared error alone through a saturated sigmoid can leave the
decoder stuck at a blank image); `bce` is the cross-entropy alone.

Run (the shipped `mnist-codec`: 8 epochs of 60k images, about 20-25 min on one shared thread):

    python -m studio_vae.train_codec --out plugins/studio_vae/weights/mnist-codec.safetensors

The same arguments on the same machine give a byte-identical file (seeded data order and bit depths,
deterministic CPU kernels at a fixed thread count, no clock time in the metadata).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from studio.config import Settings, load_settings
from studio.contract import Progress, no_progress
from studio.errors import InputError

from .model import ConvVAE, VAEConfig, parameter_count
from .train import (
    FORMAT,
    check_shape_arguments,
    deterministic_torch,
    encode_means,
    load_train_and_test,
    psnr_per_image,
)

RANGE_STDS = 4.0  # studio.ops.compression.RANGE_STDS, checked at import time of the round trip's tests
DEFAULT_BITS = tuple(range(4, 11))  # where a D=128 model's payloads meet the baselines' files (about 50-145 B)
STAT_MOMENTUM = 0.05
LOSSES = ("mse", "bce")
MSE_BCE_WEIGHT = 0.05


def centroid_table(bits: int) -> torch.Tensor:
    """The compression quantiser's dequantised values (std units) for `bits`, as a tensor."""
    from studio.ops.compression import _centroids

    return torch.from_numpy(_centroids(bits)).float()


def quantise_ste(units: torch.Tensor, bits: torch.Tensor, tables: dict[int, torch.Tensor]) -> torch.Tensor:
    """Latents in std units (N, D), one bit depth per row -> the round trip's dequantised values.

    Forward: the centroid of each value's bin (clipped into the outer bins), exactly what the coder's
    decoder sees. Backward: the identity (straight-through).
    """
    out = torch.empty_like(units)
    for b in bits.unique().tolist():
        rows = bits == b
        levels = 1 << b
        u = units[rows]
        symbols = torch.floor((u + RANGE_STDS) * (levels / (2 * RANGE_STDS))).clamp(0, levels - 1).long()
        out[rows] = tables[b][symbols]
    return units + (out - units).detach()


@torch.no_grad()
def rd_metrics(model: ConvVAE, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               bits_list: tuple[int, ...]) -> dict[str, float]:
    """Mean test PSNR at each bit depth (quantised as the coder does) and unquantised."""
    z = encode_means(model, images)
    out = {"test_psnr_unquantised": round(float(psnr_per_image(images, model.decode(z)).mean()), 4)}
    for b in bits_list:
        table = centroid_table(b)
        units = (z - mean) / std
        bits = torch.full((len(z),), b)
        zq = mean + std * quantise_ste(units, bits, {b: table})
        out[f"test_psnr_bits{b}"] = round(float(psnr_per_image(images, model.decode(zq)).mean()), 4)
    return out


def reconstruction_loss(logits: torch.Tensor, images: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-image loss, batch mean. "bce": the Bernoulli cross-entropy. "mse": the squared error on [0, 1]
    pixels (what PSNR measures) plus `MSE_BCE_WEIGHT` x the cross-entropy, whose gradient keeps a saturated
    output pixel trainable."""
    target = (images + 1) / 2
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)
    if kind == "bce":
        return bce.mean()
    mse = ((torch.sigmoid(logits) - target) ** 2).flatten(1).sum(1)
    return (mse + MSE_BCE_WEIGHT * bce).mean()


def train_codec(dataset: str, epochs: int, out: str | Path, seed: int = 0, settings: Settings | None = None,
                progress: Progress = no_progress, batch_size: int = 128, lr: float = 2e-3, latent_dim: int = 128,
                base_width: int = 32, channels: int = 1, bits: tuple[int, ...] = DEFAULT_BITS,
                limit: int | None = None, threads: int = 1, loss_kind: str = "mse", extra_convs: int = 0) -> dict:
    """Train a codec `ConvVAE` on `dataset` and write it (weights plus metadata) to `out`; return its metrics."""
    from studio.safetensors_io import save_weights

    check_shape_arguments(epochs, batch_size, latent_dim, base_width, channels)
    if loss_kind not in LOSSES:
        raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {loss_kind!r}")
    if not bits or any(not 1 <= b <= 12 for b in bits):
        raise InputError(f"bits must be a non-empty list of values in 1..12, got {list(bits)}")
    train_set, test_set = load_train_and_test(dataset, channels, limit, settings or load_settings())
    started = time.perf_counter()
    with deterministic_torch(threads):
        torch.manual_seed(seed)
        config = VAEConfig(channels=channels, size=28, latent_dim=latent_dim, base_width=base_width,
                           extra_convs=extra_convs)
        model = ConvVAE(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        data_order = torch.Generator("cpu").manual_seed(seed)
        depth_draw = torch.Generator("cpu").manual_seed(seed + 1)
        tables = {b: centroid_table(b) for b in bits}
        choices = torch.tensor(sorted(set(bits)))
        images = train_set.images
        batches = math.ceil(len(images) / batch_size)
        total = epochs * batches
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        run_mean = torch.zeros(latent_dim)
        run_std = torch.ones(latent_dim)
        step, history = 0, []
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(images), generator=data_order)
            loss_sum = 0.0
            for b in range(batches):
                x = images[order[b * batch_size:(b + 1) * batch_size]]
                z = model.encode_stats(x)[0]
                with torch.no_grad():
                    m = STAT_MOMENTUM if step else 1.0
                    run_mean.lerp_(z.mean(0), m)
                    run_std.lerp_(z.std(0).clamp_min(1e-6) if len(z) > 1 else run_std, m)
                depth = choices[torch.randint(len(choices), (len(x),), generator=depth_draw)]
                zq = run_mean + run_std * quantise_ste((z - run_mean) / run_std, depth, tables)
                loss = reconstruction_loss(model.decode_logits(zq), x, loss_kind)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(x)
                step += 1
                progress(step, total, f"epoch {epoch + 1}/{epochs}")
            history.append(loss_sum / len(images))
        model.eval()
        means = encode_means(model, train_set.images)
        coding_mean = [round(v, 6) for v in means.mean(0).tolist()]
        coding_std = [round(v, 6) for v in means.std(0).tolist()]
        metrics = {"train_loss": round(history[-1], 4),
                   **rd_metrics(model, test_set.images, torch.tensor(coding_mean), torch.tensor(coding_std),
                                tuple(sorted(set(bits)))),
                   "test_images": len(test_set), "train_images": len(train_set), "parameters": parameter_count(model)}
    metadata = {
        "format": FORMAT, "config": config.to_json(), "dataset": dataset, "epochs": str(epochs), "seed": str(seed),
        "torch": torch.__version__,
        "training": json.dumps({"recipe": "studio_vae.train_codec", "batch_size": batch_size, "lr": lr,
                                "bits": sorted(set(bits)), "limit": limit, "threads": threads, "optimizer": "adam",
                                "schedule": "cosine", "loss": loss_kind,
                                "latent": "quantised as the coder does, straight-through"},
                               sort_keys=True),
        "coding_mean": json.dumps(coding_mean), "coding_std": json.dumps(coding_std),
        "metrics": json.dumps(metrics, sort_keys=True),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_weights(out, state, metadata)
    return {**metrics, "seconds": round(time.perf_counter() - started, 1), "out": str(out)}


def _bits(text: str) -> tuple[int, ...]:
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return tuple(range(lo, hi + 1))
    return tuple(int(x) for x in text.split(","))


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m studio_vae.train_codec --out PATH [options]`."""
    parser = argparse.ArgumentParser(description="Train a codec model (see the module docstring).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--base-width", type=int, default=32)
    parser.add_argument("--extra-convs", type=int, default=0, help="3x3 convolutions added per resolution")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--bits", default="4-10", help="bit depths trained on: a range A-B or a list A,B,C")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loss", default="mse", choices=LOSSES)
    args = parser.parse_args(argv)
    last = [0.0]

    def report(step: int, total: int, message: str = "", preview: object = None) -> None:
        now = time.perf_counter()
        if step == total or now - last[0] > 30:
            last[0] = now
            print(f"{step}/{total} {message}", file=sys.stderr, flush=True)

    try:
        metrics = train_codec(args.dataset, args.epochs, args.out, args.seed, progress=report,
                              batch_size=args.batch_size, lr=args.lr, latent_dim=args.latent_dim,
                              base_width=args.base_width, bits=_bits(args.bits), limit=args.limit,
                              threads=args.threads, loss_kind=args.loss, extra_convs=args.extra_convs)
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
