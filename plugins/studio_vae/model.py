"""A small convolutional VAE for C x 28 x 28 images with a Bernoulli decoder.

The decoder predicts per-pixel Bernoulli logits for pixels in [0, 1]; images cross the contract as
`tanh(logits / 2) = 2 * sigmoid(logits) - 1`, i.e. the Bernoulli mean mapped to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from studio.errors import InputError

from .config import VAEConfig

__all__ = ["ConvVAE", "VAEConfig", "load_vae", "parameter_count"]


class ConvVAE(nn.Module):
    """Encoder: two stride-2 convolutions and a linear layer to (mean, log-variance).
    Decoder: a linear layer and two stride-2 transposed convolutions to pixel logits."""

    def __init__(self, config: VAEConfig = VAEConfig()) -> None:
        super().__init__()
        if config.size != 28:
            raise ValueError(f"ConvVAE is built for 28x28 images, not {config.size}x{config.size}")
        self.config = config
        w, c, d = config.base_width, config.channels, config.latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(c, w, 4, 2, 1), nn.LeakyReLU(0.2),  # 28 -> 14
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),  # 14 -> 7
            nn.Flatten(),
        )
        self.to_stats = nn.Linear(2 * w * 7 * 7, 2 * d)
        self.from_latent = nn.Sequential(nn.Linear(d, 2 * w * 7 * 7), nn.LeakyReLU(0.2))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.LeakyReLU(0.2),  # 7 -> 14
            nn.ConvTranspose2d(w, c, 4, 2, 1),  # 14 -> 28, logits
        )

    def encode_stats(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> posterior mean and log-variance."""
        mean, logvar = self.to_stats(self.encoder(images)).chunk(2, dim=1)
        return mean, logvar.clamp(-12.0, 8.0)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        w = self.config.base_width
        return self.decoder(self.from_latent(z).view(-1, 2 * w, 7, 7))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (the Bernoulli mean, rescaled)."""
        return torch.tanh(self.decode_logits(z) / 2)

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None,
             kl_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Negative ELBO per image (summed over pixels and latent dims): (total, reconstruction, kl)."""
        mean, logvar = self.encode_stats(images)
        noise = torch.randn(mean.shape, generator=generator, device="cpu").to(mean.device)
        z = mean + noise * torch.exp(0.5 * logvar)
        logits = self.decode_logits(z)
        target = (images + 1) / 2
        rec = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (rec + kl_weight * kl).mean(), rec.mean(), kl.mean()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_vae(path: str | Path) -> tuple[ConvVAE, dict[str, str]]:
    """Rebuild a `ConvVAE` from a safetensors file whose metadata holds its config."""
    from studio.safetensors_io import CorruptWeights, load_tensors, read_metadata

    try:
        metadata = read_metadata(path)
        config = VAEConfig.from_json(metadata["config"])
        state = load_tensors(path)
        model = ConvVAE(config)
        model.load_state_dict(state)
    except CorruptWeights:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError, OSError) as exc:
        first = (str(exc).splitlines() or [""])[0][:160]
        raise InputError(f"VAE weights {Path(path).name!r} are not readable: {type(exc).__name__}: {first}") from None
    return model.eval(), metadata
