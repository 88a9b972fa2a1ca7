"""Training recipe for the GAN plugin: a DCGAN, deterministic by seed, progress per batch, weights written
atomically as safetensors.

The recipe: the non-saturating GAN loss, Adam (2e-4, betas 0.5/0.999), an exponential moving average of
the generator's weights (the shipped generator), batch-norm statistics recomputed for that average, and
optionally a small encoder trained on generator samples (stored in the same file under `encoder.`) that
initialises inversion. The same arguments on the same machine give a byte-identical file: every random
draw comes from the seed, the thread count is fixed and the metadata holds no clock time.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from studio.config import Settings, load_settings
from studio.contract import Progress, no_progress, wants_preview
from studio.errors import InputError
from studio.safetensors_io import save_weights

from .models import Discriminator, Encoder, Generator, GeneratorConfig, init_dcgan_weights

FORMAT = "studio-gan/1"
ENCODER_PREFIX = "encoder."
BN_CALIBRATION_BATCHES = 40


@contextmanager
def deterministic_torch(threads: int, seed: int) -> Iterator[None]:
    """Seed a private copy of the global RNG, fix the thread count, use deterministic algorithms; restore all."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)
            torch.use_deterministic_algorithms(old_det)


def weights_metadata(config: GeneratorConfig, encoder_width: int | None, training: dict | None = None,
                     source: str = "") -> dict[str, str]:
    """The safetensors metadata of a GAN weights file: format, generator config, encoder width, provenance."""
    meta = {"format": FORMAT, **config.metadata()}
    if encoder_width is not None:
        meta["encoder_width"] = str(encoder_width)
    if training is not None:
        meta["training"] = json.dumps(training, sort_keys=True)
    if source:
        meta["source"] = source
    return meta


def class_balance_loss(class_logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy of each sample's class posterior minus the entropy of the batch's mean posterior.

    Low when every sample is clearly one class (sharp digits) and the batch covers the classes evenly.
    """
    log_p = F.log_softmax(class_logits, dim=1)
    p = log_p.exp()
    per_sample = -(p * log_p).sum(1).mean()
    mean_p = p.mean(0)
    marginal = -(mean_p * mean_p.clamp_min(1e-12).log()).sum()
    return per_sample - marginal


@torch.no_grad()
def _update_ema(ema: Generator, model: Generator, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


PREVIEW_SEEDS = 16  # samples in the preview after each epoch, always the same noise (seed 0)


@torch.no_grad()
def epoch_preview(ema: Generator) -> object:
    """A grid (PIL image) of PREVIEW_SEEDS samples of a copy of the EMA generator from fixed noise (batch-norm on
    the batch's statistics, as the EMA's are recalibrated only at the end), for the progress callback after each
    epoch. The noise comes from its own generator and the copy is thrown away: the global RNG and every weight
    and buffer are untouched, so the trained file is byte-identical with or without it."""
    from studio import images as imgs

    copy_ = copy.deepcopy(ema).train()
    z = torch.randn(PREVIEW_SEEDS, ema.config.nz, generator=torch.Generator().manual_seed(0))
    return imgs.grid(imgs.to_pil(copy_(z).float().clamp(-1, 1)))


@torch.no_grad()
def calibrate_batchnorm(generator: Generator, batches: int, batch_size: int) -> None:
    """Recompute the generator's batch-norm running statistics as exact averages over prior samples."""
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    generator.train()
    for _ in range(batches):
        generator(torch.randn(batch_size, generator.config.nz))
    for m in norms:
        m.momentum = 0.1
    generator.eval()


def train_encoder(generator: Generator, steps: int, batch_size: int = 128, width: int = 32, lr: float = 1e-3,
                  progress: Progress = no_progress, step_offset: int = 0, total: int | None = None) -> Encoder:
    """Train an `Encoder` to predict z from generator samples (latent MSE), with a cosine learning-rate decay."""
    encoder = Encoder(generator.config, width)
    opt = torch.optim.Adam(encoder.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    generator.eval()
    total = total or steps
    for step in range(steps):
        z = torch.randn(batch_size, generator.config.nz)
        with torch.no_grad():
            x = generator(z)
        loss = F.mse_loss(encoder(x), z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        progress(step_offset + step + 1, total, f"encoder loss {loss.item():.4f}")
    return encoder.eval()


def train_gan(dataset: str, epochs: int, out: str | Path, seed: int = 0, settings: Settings | None = None,
              progress: Progress = no_progress, nz: int = 64, ngf: int = 48, ndf: int = 48, d_extra_layers: int = 1,
              mapping: int = 2, mapping_width: int = 256, mapping_lr_scale: float = 0.1, size: int = 28,
              channels: int = 1, batch_size: int = 64, lr: float = 1.6e-3, lr_decay_from: float = 0.5,
              ema_decay: float = 0.999, class_weight: float = 3.0, encoder_steps: int = 2000,
              encoder_width: int = 32, limit: int | None = None, threads: int = 1,
              on_epoch: Callable[[int, Generator], None] | None = None) -> dict:
    """Train a DCGAN on `dataset` (any name `studio.datasets.load_dataset` accepts) and write it to `out`.

    Both learning rates stay at `lr` until the fraction `lr_decay_from` of the steps, then fall linearly to 0.
    The generator starts at 7x7 for 28/56/112-pixel images and at 4x4 for powers of two (the tutorial).
    Writes generator (EMA) and, when `encoder_steps` > 0, an inversion encoder. Returns metrics.
    With `class_weight` > 0 and a labelled dataset, the discriminator also learns the labels (an auxiliary
    head, AC-GAN style) and the unconditional generator is pushed towards samples its head finds
    clear and class-balanced (`class_balance_loss`); the generator never sees a label.
    `threads` defaults to 1: on a shared 2-core machine one thread is several times faster than two, and the
    file is byte-identical only for the same thread count. `on_epoch(epoch, ema_generator)`, if given, is
    called after each epoch (for monitoring; it must not touch the global RNG or the generator).
    """
    from studio.datasets import load_dataset

    settings = settings or load_settings()
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 2:
        raise InputError(f"batch_size must be at least 2, got {batch_size}")
    start = 7 if size % 7 == 0 else 4
    config = GeneratorConfig(nz=nz, ngf=ngf, nc=channels, size=size, start=start, mapping=mapping,
                             mapping_width=mapping_width if mapping else 0)
    try:
        config.validate()
    except ValueError as exc:
        raise InputError(f"invalid GAN architecture: {exc}") from None
    data = load_dataset(dataset, "train", limit=limit, settings=settings, shape=(channels, size, size))
    images = data.images
    if images.shape[1] != channels:
        images = images.mean(1, keepdim=True) if channels == 1 else images.expand(-1, channels, -1, -1)
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    images = images.contiguous()
    labels = torch.from_numpy(data.labels)
    n_classes = len(data.classes) if class_weight > 0 and len(data.classes) > 1 and bool((labels >= 0).all()) else 0
    n_batches = len(images) // batch_size
    if n_batches < 1:
        raise InputError(f"dataset {dataset!r} has {len(images)} images, fewer than one batch of {batch_size}")
    if not 0.0 <= lr_decay_from <= 1.0:
        raise InputError(f"lr_decay_from must lie in [0, 1], got {lr_decay_from}")
    total = epochs * n_batches + encoder_steps
    began = time.perf_counter()
    with deterministic_torch(threads, seed):
        generator, discriminator = Generator(config), Discriminator(config, ndf, n_classes, d_extra_layers)
        generator.apply(init_dcgan_weights)
        discriminator.apply(init_dcgan_weights)
        ema = copy.deepcopy(generator)
        groups: list[dict] = [{"params": list(generator.main.parameters()), "lr": lr}]
        if generator.mapping is not None:  # a slower mapping network (as in StyleGAN) keeps training stable
            groups.append({"params": list(generator.mapping.parameters()), "lr": lr * mapping_lr_scale})
        opt_g = torch.optim.Adam(groups, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
        gan_steps = epochs * n_batches
        decay_start = int(lr_decay_from * gan_steps)
        schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (gan_steps - s) / max(
            gan_steps - decay_start, 1))) for opt in (opt_g, opt_d)]
        order_rng = torch.Generator().manual_seed(seed)
        ones, zeros = torch.ones(batch_size), torch.zeros(batch_size)
        step, history = 0, []
        previews = wants_preview(progress)
        for epoch in range(epochs):
            order = torch.randperm(len(images), generator=order_rng)
            sums = torch.zeros(4, dtype=torch.float64)
            for b in range(n_batches):
                index = order[b * batch_size:(b + 1) * batch_size]
                real = images[index]
                fake = generator(torch.randn(batch_size, nz))
                (d_real, class_real), (d_fake, _) = discriminator(real), discriminator(fake.detach())
                loss_d = F.binary_cross_entropy_with_logits(d_real, ones) + F.binary_cross_entropy_with_logits(
                    d_fake, zeros)
                if n_classes:
                    loss_d = loss_d + F.cross_entropy(class_real, labels[index])
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                g_logit, g_class = discriminator(fake)
                loss_g = F.binary_cross_entropy_with_logits(g_logit, ones)
                if n_classes:
                    loss_g = loss_g + class_weight * class_balance_loss(g_class)
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                for schedule in schedules:
                    schedule.step()
                _update_ema(ema, generator, ema_decay if step >= n_batches // 2 else 0.0)
                step += 1
                sums += torch.tensor([loss_d.item(), loss_g.item(), torch.sigmoid(d_real).mean().item(),
                                      torch.sigmoid(d_fake).mean().item()], dtype=torch.float64)
                message = f"epoch {epoch + 1}/{epochs} loss_d {loss_d.item():.3f} loss_g {loss_g.item():.3f}"
                if b == n_batches - 1 and previews:  # samples after each epoch
                    progress(step, total, message, epoch_preview(ema))
                else:
                    progress(step, total, message)
            means = (sums / n_batches).tolist()
            history.append({"epoch": epoch + 1, "loss_d": round(means[0], 4), "loss_g": round(means[1], 4),
                            "d_real": round(means[2], 4), "d_fake": round(means[3], 4)})
            if on_epoch is not None:
                with torch.random.fork_rng(devices=[]):
                    on_epoch(epoch + 1, copy.deepcopy(ema))
        gan_seconds = time.perf_counter() - began
        calibrate_batchnorm(ema, BN_CALIBRATION_BATCHES, 256)
        tensors = {k: v.detach().clone() for k, v in ema.state_dict().items()}
        encoder_loss = None
        if encoder_steps > 0:
            encoder = train_encoder(ema, encoder_steps, width=encoder_width, progress=progress,
                                    step_offset=epochs * n_batches, total=total)
            tensors.update({ENCODER_PREFIX + k: v.detach().clone() for k, v in encoder.state_dict().items()})
            with torch.no_grad():
                z = torch.randn(1024, nz)
                encoder_loss = round(F.mse_loss(encoder(ema(z)), z).item(), 4)
    training = {"dataset": dataset, "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
                "lr_decay_from": lr_decay_from, "class_weight": class_weight if n_classes else 0.0,
                "ndf": ndf, "d_extra_layers": d_extra_layers, "ema_decay": ema_decay, "limit": limit,
                "images": len(images),
                "encoder_steps": encoder_steps, "threads": threads, "history": history,
                "encoder_latent_mse": encoder_loss}
    save_weights(out, tensors, weights_metadata(config, encoder_width if encoder_steps > 0 else None, training))
    seconds = time.perf_counter() - began
    return {"out": str(out), "epochs": epochs, "images": len(images), "steps": step,
            "final": history[-1], "encoder_latent_mse": encoder_loss, "gan_seconds": round(gan_seconds, 1),
            "seconds": round(seconds, 1), "parameters_generator": sum(p.numel() for p in ema.parameters())}
