"""Training recipe for the VAE: deterministic by seed, progress per batch, weights written atomically.

The same arguments on the same machine give a byte-identical safetensors file: the initial weights, the
data order and the reparameterisation noise all come from the seed, the kernels are deterministic,
the thread count is fixed (default 1: on a shared, oversubscribed CPU two intra-op threads stall each
other, and one thread is the count anyone can reproduce), and the metadata holds no clock time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from studio.config import Settings, load_settings
from studio.contract import Progress, no_progress, wants_preview
from studio.errors import InputError

from .model import ConvVAE, VAEConfig, Whitening, parameter_count
from .prior import PRIOR_KEY, MixturePrior, prior_info

FORMAT = "studio-vae/1"
ENCODE_BATCH = 512


@contextmanager
def deterministic_torch(threads: int, device: str = "cpu") -> Iterator[None]:
    """Fix the thread count and, off the CPU, turn on deterministic algorithms; restore both afterwards.

    Every CPU kernel this recipe uses is deterministic for a fixed thread count, and the flag's first use
    imports torch._inductor (3+ s), so it is only set for other devices.
    """
    old_threads, old_det = torch.get_num_threads(), None
    torch.set_num_threads(threads)
    if not device.startswith("cpu"):
        old_det = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        if old_det is not None:
            torch.use_deterministic_algorithms(old_det)


def psnr_per_image(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image, with both mapped from [-1, 1] to [0, 1] (peak 1)."""
    mse = (((images - reconstructions) / 2) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def encode_means(model: ConvVAE, images: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    """Posterior means of `images`, batched, on the CPU."""
    out = [model.encode_stats(images[i:i + ENCODE_BATCH].to(device))[0].cpu()
           for i in range(0, len(images), ENCODE_BATCH)]
    return torch.cat(out)


@torch.no_grad()
def reconstruction_metrics(model: ConvVAE, images: torch.Tensor, device: str = "cpu") -> dict[str, float]:
    """Mean per-image PSNR and the PSNR of the pooled MSE, both on [0, 1] images with peak 1."""
    per_image, sq_err = [], 0.0
    for i in range(0, len(images), ENCODE_BATCH):
        x = images[i:i + ENCODE_BATCH]
        rec = model.decode(model.encode_stats(x.to(device))[0]).cpu()
        per_image.append(psnr_per_image(x, rec))
        sq_err += float((((x - rec) / 2) ** 2).double().sum())
    pooled_mse = sq_err / images.numel()
    return {"test_psnr": round(float(torch.cat(per_image).mean()), 4),
            "test_psnr_pooled": round(10 * math.log10(1.0 / max(pooled_mse, 1e-10)), 4)}


PREVIEW_SEEDS = 16  # samples in the preview after each epoch, always the same noise (seed 0)


@torch.no_grad()
def epoch_preview(model: ConvVAE, device: str = "cpu") -> object:
    """A grid (PIL image) of PREVIEW_SEEDS samples from fixed noise, for the progress callback after each epoch.

    It draws from its own generator and runs in eval mode, then restores the mode: the global RNG, the data order,
    the training noise and the weights are untouched, so the trained file is byte-identical with or without it.
    """
    from studio import images as imgs

    was_training = model.training
    model.eval()
    try:
        z = torch.randn(PREVIEW_SEEDS, model.config.latent_dim, generator=torch.Generator("cpu").manual_seed(0))
        x = model.decode(z.to(device)).float().cpu().clamp(-1, 1)
    finally:
        model.train(was_training)
    return imgs.grid(imgs.to_pil(x))


def check_shape_arguments(epochs: int, batch_size: int, latent_dim: int, base_width: int, channels: int) -> None:
    """One line (InputError) for the arguments every ConvVAE recipe shares, when one is out of range."""
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1 or latent_dim < 1 or base_width < 1 or channels not in (1, 3):
        raise InputError("batch_size, latent_dim and base_width must be positive and channels 1 or 3")


def load_train_and_test(dataset: str, channels: int, limit: int | None, settings: Settings) -> tuple:
    """The train and test splits of `dataset` as channels x 28 x 28 images (at most `limit` each); one line
    (InputError) when the dataset's images cannot have that shape."""
    from studio.datasets import load_dataset

    shape = (channels, 28, 28)
    train_set = load_dataset(dataset, "train", limit=limit, settings=settings, shape=shape)
    test_set = load_dataset(dataset, "test", limit=limit, settings=settings, shape=shape)
    if tuple(train_set.images.shape[1:]) != shape:
        raise InputError(f"dataset {dataset!r} has images of shape {tuple(train_set.images.shape[1:])}, not {shape}")
    return train_set, test_set


def train_vae(dataset: str, epochs: int, out: str | Path, seed: int = 0, settings: Settings | None = None,
              progress: Progress = no_progress, batch_size: int = 128, lr: float = 2e-3, latent_dim: int = 16,
              base_width: int = 32, channels: int = 1, kl_weight: float = 1.0, limit: int | None = None,
              threads: int = 1, device: str = "cpu", extra_convs: int = 0, hidden: int = 0,
              whiten: bool = False, prior_components: int = 0) -> dict:
    """Train a `ConvVAE` on `dataset` (any name `studio.datasets.load_dataset` accepts) and write it to `out`.

    Adam with a cosine learning-rate decay; the loss is the negative ELBO with a Bernoulli decoder (the KL
    term weighted by `kl_weight`). `extra_convs` and `hidden` enlarge the network (`VAEConfig`). With
    `whiten`, a full-covariance Gaussian is fitted to the posterior means of the training set and stored
    (`Whitening`): the public latent becomes the whitened mean, so N(0, I) seeds decode from where the data
    lies even when a small KL weight leaves the aggregate posterior far from N(0, I). With `prior_components`
    K > 0, a mixture of K Gaussians is fitted to the public latents of the training set and stored as the
    model's prior (`studio_vae.prior.MixturePrior`, seed `seed`): seeds are drawn from it. At the end, the
    per-dimension mean and std of the (public) latents of the training set (the coding statistics) and
    test-set reconstruction metrics go into the file's metadata. Returns the metrics.
    """
    from studio.safetensors_io import save_weights

    check_shape_arguments(epochs, batch_size, latent_dim, base_width, channels)
    if extra_convs < 0 or hidden < 0 or prior_components < 0 or not kl_weight >= 0:
        raise InputError("extra_convs, hidden, prior_components and kl_weight must be at least 0")
    train_set, test_set = load_train_and_test(dataset, channels, limit, settings or load_settings())
    started = time.perf_counter()
    with deterministic_torch(threads, device):
        torch.manual_seed(seed)
        config = VAEConfig(channels=channels, size=28, latent_dim=latent_dim, base_width=base_width,
                           extra_convs=extra_convs, hidden=hidden)
        model = ConvVAE(config).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        data_order = torch.Generator("cpu").manual_seed(seed)
        noise = torch.Generator("cpu").manual_seed(seed + 1)
        images = train_set.images
        batches = math.ceil(len(images) / batch_size)
        total = epochs * batches
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        step = 0
        history = []
        previews = wants_preview(progress)
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(images), generator=data_order)
            sums = torch.zeros(3, dtype=torch.float64)
            for b in range(batches):
                x = images[order[b * batch_size:(b + 1) * batch_size]].to(device)
                loss, rec, kl = model.loss(x, generator=noise, kl_weight=kl_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                sums += torch.tensor([loss.item(), rec.item(), kl.item()], dtype=torch.float64) * len(x)
                step += 1
                if b == batches - 1 and previews:  # samples after each epoch
                    progress(step, total, f"epoch {epoch + 1}/{epochs}", epoch_preview(model, device))
                else:
                    progress(step, total, f"epoch {epoch + 1}/{epochs}")
            history.append((sums / len(images)).tolist())
        model.eval()
        means = encode_means(model, train_set.images, device)
        if whiten:
            model.whitening = Whitening.fit(means)
            means = model.whitening.whiten(means)
        if prior_components:
            model.prior = MixturePrior.fit(means, prior_components, seed)
        coding_mean = [round(v, 6) for v in means.mean(0).tolist()]
        coding_std = [round(v, 6) for v in means.std(0).tolist()]
        metrics = {"train_loss": round(history[-1][0], 4), "train_reconstruction": round(history[-1][1], 4),
                   "train_kl": round(history[-1][2], 4), **reconstruction_metrics(model, test_set.images, device),
                   "test_images": len(test_set), "train_images": len(train_set), "parameters": parameter_count(model)}
    metadata = {
        "format": FORMAT, "config": config.to_json(), "dataset": dataset, "epochs": str(epochs), "seed": str(seed),
        "torch": torch.__version__,
        "training": json.dumps({"batch_size": batch_size, "lr": lr, "kl_weight": kl_weight, "limit": limit,
                                "threads": threads, "optimizer": "adam", "schedule": "cosine",
                                **({"whiten": True} if whiten else {})}, sort_keys=True),
        "coding_mean": json.dumps(coding_mean), "coding_std": json.dumps(coding_std),
        "metrics": json.dumps(metrics, sort_keys=True),
        **(model.whitening.to_metadata() if model.whitening is not None else {}),
        **({PRIOR_KEY: json.dumps(prior_info(prior_components, seed, dataset, len(train_set)), sort_keys=True)}
           if model.prior is not None else {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.prior is not None:
        state.update(model.prior.tensors())
    save_weights(out, state, metadata)
    return {**metrics, "seconds": round(time.perf_counter() - started, 1), "out": str(out)}
