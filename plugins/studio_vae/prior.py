"""A learned prior for the VAE's public latent: a Gaussian mixture fitted to the encoded training set.

A VAE trained with a small KL weight reconstructs well, but its encoded data gather in clusters (one per
class, roughly), and a single Gaussian puts much of its mass between them, where the decoder draws blurry
in-between shapes. Fitting a full-covariance Gaussian mixture to the encoded training latents after training
(an "ex-post" density estimate) puts the seeds where the data are. Encoding and decoding are unchanged: the
prior only decides where `sample_prior` draws seeds.

A seed draws its latent on its own generator, so a seed's latent never depends on its batch: first the
standard-normal noise `eps` (the same noise a plain N(0, I) prior would give that seed), then a uniform number
that picks the component `k` by its weight; the latent is `mean[k] + chol[k] @ eps`.

The mixture is stored in the weights file as three tensors, `prior.weights` (K,), `prior.means` (K, d) and
`prior.chols` (K, d, d), with `{"kind": "gaussian_mixture", ...}` under the metadata key `prior`.

Add one to existing weights (the shipped models were made this way, with the defaults)::

    python -m studio_vae.prior plugins/studio_vae/weights/mnist.safetensors --dataset mnist --components 100
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["PRIOR_KEY", "PRIOR_PREFIX", "MixturePrior", "add_prior", "prior_info"]

PRIOR_PREFIX = "prior."  # tensor names in the weights file
PRIOR_KEY = "prior"  # metadata key
DEFAULT_COMPONENTS = 100


@dataclass(frozen=True)
class MixturePrior:
    """A Gaussian mixture over the public latent: weights (K,), means (K, d), Cholesky factors (K, d, d)."""

    weights: torch.Tensor
    means: torch.Tensor
    chols: torch.Tensor

    @property
    def components(self) -> int:
        return int(self.weights.shape[0])

    @classmethod
    def fit(cls, latents: torch.Tensor, components: int = DEFAULT_COMPONENTS, seed: int = 0) -> MixturePrior:
        """Fit a full-covariance mixture of `components` Gaussians to `latents` (N, d) by EM (scikit-learn,
        k-means initialisation with `seed`; a 1e-4 ridge on each covariance keeps it well conditioned)."""
        import numpy as np
        from sklearn.mixture import GaussianMixture

        if components < 1:
            raise ValueError(f"a mixture prior needs at least 1 component, got {components}")
        if len(latents) < 2 * components:
            raise ValueError(f"fitting {components} components needs at least {2 * components} latents, "
                             f"got {len(latents)}")
        gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, max_iter=200,
                              random_state=seed).fit(latents.double().numpy())
        chols = np.linalg.cholesky(gmm.covariances_)
        return cls(torch.tensor(gmm.weights_, dtype=torch.float32), torch.tensor(gmm.means_, dtype=torch.float32),
                   torch.tensor(chols, dtype=torch.float32).tril())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store in a weights file (see the module docstring)."""
        return {f"{PRIOR_PREFIX}weights": self.weights.contiguous(), f"{PRIOR_PREFIX}means": self.means.contiguous(),
                f"{PRIOR_PREFIX}chols": self.chols.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], dim: int) -> MixturePrior | None:
        """The mixture among `tensors` (None when they hold none). Raises ValueError when it is malformed:
        wrong shapes, non-finite values, weights that are not positive and summing to 1, or a factor whose
        diagonal is not positive."""
        names = {f"{PRIOR_PREFIX}{n}" for n in ("weights", "means", "chols")}
        present = names & set(tensors)
        if not present:
            return None
        if present != names:
            raise ValueError(f"prior tensors incomplete: found {sorted(present)}, need {sorted(names)}")
        weights, means, chols = (tensors[f"{PRIOR_PREFIX}{n}"].float() for n in ("weights", "means", "chols"))
        k = weights.shape[0] if weights.dim() == 1 else -1
        if k < 1 or means.shape != (k, dim) or chols.shape != (k, dim, dim):
            raise ValueError(f"prior must be weights (K,), means (K, {dim}), chols (K, {dim}, {dim}); got "
                             f"{tuple(weights.shape)}, {tuple(means.shape)}, {tuple(chols.shape)}")
        if not all(torch.isfinite(t).all() for t in (weights, means, chols)):
            raise ValueError("prior holds non-finite values")
        if (weights <= 0).any() or abs(float(weights.sum()) - 1.0) > 1e-4:
            raise ValueError("prior weights must be positive and sum to 1")
        if (chols.diagonal(dim1=1, dim2=2) <= 0).any():
            raise ValueError("prior Cholesky factors must have a positive diagonal")
        return cls(weights, means, chols.tril())

    def sample(self, seeds: Sequence[int]) -> torch.Tensor:
        """One latent per seed (float32, CPU), each from its own generator (see the module docstring)."""
        d = self.means.shape[1]
        cumulative = self.weights.double().cumsum(0)
        out = []
        for seed in seeds:
            generator = torch.Generator("cpu").manual_seed(int(seed))
            eps = torch.randn(d, generator=generator)
            u = torch.rand((), generator=generator, dtype=torch.float64) * cumulative[-1]
            k = min(int(torch.searchsorted(cumulative, u.reshape(1), right=True)), self.components - 1)
            out.append(self.means[k] + self.chols[k] @ eps)
        return torch.stack(out) if out else torch.zeros((0, d))


def prior_info(components: int, seed: int, dataset: str, train_images: int) -> dict:
    """The metadata stored under `PRIOR_KEY` for a mixture fitted with these settings."""
    return {"kind": "gaussian_mixture", "components": components, "seed": seed, "dataset": dataset,
            "train_images": train_images}


def add_prior(weights: str | Path, dataset: str, components: int = DEFAULT_COMPONENTS, seed: int = 0,
              out: str | Path | None = None) -> dict:
    """Fit a `MixturePrior` to the public latents of `dataset`'s training split under the VAE in `weights`
    and write the weights with it to `out` (default: in place). Returns the prior's metadata."""
    from studio.datasets import load_dataset
    from studio.safetensors_io import load_tensors, read_metadata, save_weights

    from .model import load_vae
    from .train import encode_means

    net, metadata = load_vae(weights)
    images = load_dataset(dataset, "train", shape=(net.config.channels, 28, 28)).images
    means = encode_means(net, images)
    latents = means if net.whitening is None else net.whitening.whiten(means)
    prior = MixturePrior.fit(latents, components, seed)
    info = prior_info(components, seed, dataset, len(images))
    state = {k: v for k, v in load_tensors(weights).items() if not k.startswith(PRIOR_PREFIX)}
    save_weights(out or weights, {**state, **prior.tensors()},
                 {**read_metadata(weights), PRIOR_KEY: json.dumps(info, sort_keys=True)})
    return info


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Add a Gaussian-mixture prior to VAE weights.")
    parser.add_argument("weights")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--components", type=int, default=DEFAULT_COMPONENTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(add_prior(args.weights, args.dataset, args.components, args.seed, args.out)))


if __name__ == "__main__":
    main()
