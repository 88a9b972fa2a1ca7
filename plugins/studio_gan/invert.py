"""Encoding by inversion (GAN projection): find z whose generated image matches a given image.

Adam optimises a batch of latents (every image times every restart at once). The loss per latent is
  pixel MSE + feature_weight * feature MSE + prior_weight * ((|z| - sqrt(nz)) / sqrt(nz))^2
where the features are a frozen network's (the project's MNIST classifier) or a cheap multi-scale pixel
and gradient pyramid, and the prior term keeps z on the shell where the Gaussian prior's mass lies.
Without a guess, the restarts start from prior samples drawn from `seed`; with a learned encoder's guess,
restart 0 starts at the guess and the others at the guess plus `init_jitter` times those samples. The
learning rate decays on a cosine; each latent's best point seen is kept, and the restart with the lowest
loss wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from studio.contract import Progress, no_progress

from .config import InversionSettings

Features = Callable[[torch.Tensor], torch.Tensor]
MAX_LATENTS_PER_GROUP = 256


def pyramid_features(images: torch.Tensor) -> torch.Tensor:
    """Cheap perceptual features: pixels at 1/2 and 1/4 scale and horizontal/vertical gradients."""
    feats = []
    for scale in (2, 4):
        feats.append(F.avg_pool2d(images, scale).flatten(1))
    feats.append((images[..., :, 1:] - images[..., :, :-1]).flatten(1))
    feats.append((images[..., 1:, :] - images[..., :-1, :]).flatten(1))
    return torch.cat(feats, 1)


def per_item_loss(generated: torch.Tensor, target: torch.Tensor, z: torch.Tensor, target_features: torch.Tensor | None,
                  features: Features | None, settings: InversionSettings) -> torch.Tensor:
    """The inversion loss of each latent (1-d, one value per row of z)."""
    loss = (generated - target).pow(2).flatten(1).mean(1)
    if features is not None and target_features is not None and settings.feature_weight > 0:
        loss = loss + settings.feature_weight * (features(generated) - target_features).pow(2).flatten(1).mean(1)
    if settings.prior_weight > 0:
        root = math.sqrt(z.shape[1])
        loss = loss + settings.prior_weight * ((z.norm(dim=1) - root) / root).pow(2)
    return loss


def _invert_group(generator: torch.nn.Module, images: torch.Tensor, start: torch.Tensor, features: Features | None,
                  settings: InversionSettings, tick: Callable[[], None]) -> tuple[torch.Tensor, torch.Tensor]:
    n, r, nz = start.shape
    target = images.repeat_interleave(r, dim=0)
    with torch.no_grad():
        target_features = features(images).repeat_interleave(r, dim=0) if features is not None else None
    z = start.reshape(n * r, nz).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=settings.lr)
    best_z, best_loss = z.detach().clone(), torch.full((n * r,), math.inf)

    def evaluate() -> torch.Tensor:
        loss = per_item_loss(generator(z), target, z, target_features, features, settings)
        better = loss.detach() < best_loss
        best_loss[better] = loss.detach()[better]
        best_z[better] = z.detach()[better]
        return loss

    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        loss = evaluate()
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        tick()
    with torch.no_grad():
        evaluate()
    best_loss, best_z = best_loss.reshape(n, r), best_z.reshape(n, r, nz)
    winner = best_loss.argmin(1)
    rows = torch.arange(n)
    return best_z[rows, winner], best_loss[rows, winner]


def invert(generator: torch.nn.Module, images: torch.Tensor, nz: int, seed: int = 0,
           settings: InversionSettings = InversionSettings(), features: Features | None = None,
           init: torch.Tensor | None = None, progress: Progress = no_progress) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert `generator` at `images` (NCHW in [-1, 1], on the generator's device and dtype).

    `init` (N, nz), e.g. a learned encoder's output, is restart 0's start and the centre of the others.
    Runs with gradients enabled whatever the caller's grad mode (an outer torch.no_grad() is fine).
    Returns the best latents (N, nz) and their losses (N,). Calls progress(step, total) once per optimisation step.
    """
    n, r = images.shape[0], settings.restarts
    start = torch.randn(n, r, nz, generator=torch.Generator("cpu").manual_seed(int(seed)))
    if init is not None:  # restart 0 at the guess, the others jittered around it
        guess = init.detach().float().cpu().unsqueeze(1)
        start = guess + settings.init_jitter * start
        start[:, 0] = guess[:, 0]
    start = start.to(device=images.device, dtype=images.dtype)
    per_group = max(1, MAX_LATENTS_PER_GROUP // r)
    groups = [(i, min(i + per_group, n)) for i in range(0, n, per_group)]
    total, done = settings.steps * len(groups), [0]

    def tick() -> None:
        done[0] += 1
        progress(done[0], total)

    params = list(generator.parameters())
    was_training, needs_grad = generator.training, [p.requires_grad for p in params]
    generator.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        # Inversion is an optimisation: it needs autograd even when the caller encodes under torch.no_grad()
        # or torch.inference_mode() (as ops that only read latents may), so it is switched on here, where it is
        # needed; tensors made in inference mode are copied into ordinary ones first.
        with torch.inference_mode(False), torch.enable_grad():
            images, start = (t.clone() if t.is_inference() else t for t in (images, start))
            results = [_invert_group(generator, images[a:b], start[a:b], features, settings, tick)
                       for a, b in groups]
    finally:
        generator.train(was_training)
        for p, flag in zip(params, needs_grad, strict=True):
            p.requires_grad_(flag)
    return torch.cat([z for z, _ in results]), torch.cat([loss for _, loss in results])
