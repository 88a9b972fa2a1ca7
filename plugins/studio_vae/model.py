"""A small convolutional VAE for C x 28 x 28 images with a Bernoulli decoder.

The decoder predicts per-pixel Bernoulli logits for pixels in [0, 1]; images cross the contract as
`tanh(logits / 2) = 2 * sigmoid(logits) - 1`, i.e. the Bernoulli mean mapped to [-1, 1].

A model may carry a whitening of its latent (`Whitening`, stored in the weights' metadata): a full-covariance
Gaussian N(m, L L^T) fitted after training to the posterior means of the training set. The latent that crosses
the contract is then w = L^-1 (mu - m): `encode_latent` returns it and `decode_latent` decodes m + L w, so
N(0, I) seeds land where the encoded data lies and the two stay exact inverses of each other.

A model may also carry a learned prior over that public latent (`studio_vae.prior.MixturePrior`, stored as
`prior.*` tensors): seeds are then drawn from it instead of N(0, I); encoding and decoding do not change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from studio.errors import InputError

from .config import VAEConfig
from .prior import PRIOR_PREFIX, MixturePrior

__all__ = ["ConvVAE", "VAEConfig", "Whitening", "load_vae", "parameter_count"]

WHITEN_MEAN, WHITEN_CHOL = "whitening_mean", "whitening_chol"  # metadata keys


@dataclass(frozen=True)
class Whitening:
    """The affine map between the decoder's latent mu and the public latent w: mu = mean + chol @ w."""

    mean: torch.Tensor  # (d,) float32
    chol: torch.Tensor  # (d, d) float32, lower triangular with a positive diagonal

    @classmethod
    def fit(cls, means: torch.Tensor, jitter: float = 1e-6) -> Whitening:
        """The Gaussian of `means` (rows): their mean and the Cholesky factor of their covariance (float64 fit;
        `jitter` is added to the diagonal, so a collapsed dimension still factors)."""
        x = means.double()
        mean = x.mean(0)
        cov = torch.cov(x.T) + jitter * torch.eye(x.shape[1], dtype=torch.float64)
        return cls(mean.float(), torch.linalg.cholesky(cov).float().tril())

    def to_metadata(self) -> dict[str, str]:
        return {WHITEN_MEAN: json.dumps(self.mean.tolist()), WHITEN_CHOL: json.dumps(self.chol.tolist())}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], dim: int) -> Whitening | None:
        """The whitening in `metadata`; None when it holds none. Raises ValueError when it is malformed."""
        if WHITEN_MEAN not in metadata and WHITEN_CHOL not in metadata:
            return None
        mean = torch.tensor(json.loads(metadata[WHITEN_MEAN]), dtype=torch.float32)
        chol = torch.tensor(json.loads(metadata[WHITEN_CHOL]), dtype=torch.float32)
        if mean.shape != (dim,) or chol.shape != (dim, dim):
            raise ValueError(f"whitening must be ({dim},) and ({dim}, {dim}), got {tuple(mean.shape)} and "
                             f"{tuple(chol.shape)}")
        if not (torch.isfinite(chol).all() and torch.isfinite(mean).all()) or (chol.diagonal() <= 0).any():
            raise ValueError("whitening holds non-finite values or a non-positive diagonal")
        return cls(mean, chol.tril())

    def whiten(self, mu: torch.Tensor) -> torch.Tensor:
        """mu (N, d) -> L^-1 (mu - m), in float32 on mu's device."""
        chol = self.chol.to(mu.device)
        centred = (mu.float() - self.mean.to(mu.device)).T
        return torch.linalg.solve_triangular(chol, centred, upper=False).T

    def unwhiten(self, w: torch.Tensor) -> torch.Tensor:
        """w (N, d) -> m + L w, in float32 on w's device."""
        return self.mean.to(w.device) + w.float() @ self.chol.to(w.device).T


def _convs(width: int, count: int) -> list[nn.Module]:
    """`count` shape-keeping 3x3 convolutions, each followed by a leaky ReLU."""
    layers: list[nn.Module] = []
    for _ in range(count):
        layers += [nn.Conv2d(width, width, 3, 1, 1), nn.LeakyReLU(0.2)]
    return layers


class ConvVAE(nn.Module):
    """Encoder: two stride-2 convolutions and a linear layer to (mean, log-variance).
    Decoder: a linear layer and two stride-2 transposed convolutions to pixel logits.
    `config.extra_convs` adds that many 3x3 convolutions at each resolution of both; `config.hidden` adds a
    fully connected layer of that width on both sides of the latent. At 0 (the defaults) neither exists."""

    def __init__(self, config: VAEConfig = VAEConfig()) -> None:
        super().__init__()
        if config.size != 28:
            raise ValueError(f"ConvVAE is built for 28x28 images, not {config.size}x{config.size}")
        if config.extra_convs < 0 or config.hidden < 0:
            raise ValueError("extra_convs and hidden must be at least 0")
        self.config = config
        self.whitening: Whitening | None = None
        self.prior: MixturePrior | None = None  # not a module: kept out of state_dict, stored as prior.* tensors
        w, c, d, k, h = config.base_width, config.channels, config.latent_dim, config.extra_convs, config.hidden
        flat = 2 * w * 7 * 7
        self.encoder = nn.Sequential(
            nn.Conv2d(c, w, 4, 2, 1), nn.LeakyReLU(0.2), *_convs(w, k),  # 28 -> 14
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2), *_convs(2 * w, k),  # 14 -> 7
            nn.Flatten(),
        )
        if h:
            self.to_stats: nn.Module = nn.Sequential(nn.Linear(flat, h), nn.LeakyReLU(0.2), nn.Linear(h, 2 * d))
            self.from_latent = nn.Sequential(nn.Linear(d, h), nn.LeakyReLU(0.2), nn.Linear(h, flat), nn.LeakyReLU(0.2))
        else:
            self.to_stats = nn.Linear(flat, 2 * d)
            self.from_latent = nn.Sequential(nn.Linear(d, flat), nn.LeakyReLU(0.2))
        self.decoder = nn.Sequential(
            *_convs(2 * w, k),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.LeakyReLU(0.2), *_convs(w, k),  # 7 -> 14
            nn.ConvTranspose2d(w, c, 4, 2, 1),  # 14 -> 28, logits
        )

    def encode_stats(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> posterior mean and log-variance (in the decoder's own latent, never whitened)."""
        mean, logvar = self.to_stats(self.encoder(images)).chunk(2, dim=1)
        return mean, logvar.clamp(-12.0, 8.0)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        w = self.config.base_width
        return self.decoder(self.from_latent(z).view(-1, 2 * w, 7, 7))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (the decoder's own) -> images in [-1, 1] (the Bernoulli mean, rescaled)."""
        return torch.tanh(self.decode_logits(z) / 2)

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the public latent: the posterior mean, whitened when the model has a whitening (float32)."""
        mean = self.encode_stats(images)[0]
        return mean.float() if self.whitening is None else self.whitening.whiten(mean)

    def decode_latent(self, w: torch.Tensor) -> torch.Tensor:
        """The public latent -> images in [-1, 1]; the exact inverse map of `encode_latent`'s whitening."""
        dtype = next(self.parameters()).dtype
        z = w if self.whitening is None else self.whitening.unwhiten(w)
        return self.decode(z.to(dtype))

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
    """Rebuild a `ConvVAE` (with its whitening and prior, if any) from a safetensors file whose metadata holds its
    config."""
    from studio.safetensors_io import CorruptWeights, load_tensors, read_metadata

    try:
        metadata = read_metadata(path)
        config = VAEConfig.from_json(metadata["config"])
        state = load_tensors(path)
        model = ConvVAE(config)
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(PRIOR_PREFIX)})
        model.whitening = Whitening.from_metadata(metadata, config.latent_dim)
        model.prior = MixturePrior.from_tensors(state, config.latent_dim)
    except CorruptWeights:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError, OSError) as exc:
        first = (str(exc).splitlines() or [""])[0][:160]
        raise InputError(f"VAE weights {Path(path).name!r} are not readable: {type(exc).__name__}: {first}") from None
    return model.eval(), metadata
