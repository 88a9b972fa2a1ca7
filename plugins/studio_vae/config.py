"""The VAE's architecture config, torch-free: listing a model's spaces reads it from the weights' metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a `ConvVAE`; stored in the weights' metadata so `load` can rebuild it."""

    channels: int = 1
    size: int = 28
    latent_dim: int = 16
    base_width: int = 32

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VAEConfig:
        return cls(**json.loads(text))
