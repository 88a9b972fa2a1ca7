"""The VAE's architecture config, torch-free: listing a model's spaces reads it from the weights' metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

OPTIONAL = ("extra_convs", "hidden")  # fields added later; written only when not 0


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a `ConvVAE`; stored in the weights' metadata so `load` can rebuild it.

    `extra_convs` (3x3 convolutions added at each resolution of the encoder and decoder) and `hidden` (a
    fully connected layer of that width between the convolutions and the latent) default to 0, which is the
    original architecture: weights saved before these fields existed load unchanged, with the same keys.
    """

    channels: int = 1
    size: int = 28
    latent_dim: int = 16
    base_width: int = 32
    extra_convs: int = 0
    hidden: int = 0

    def to_json(self) -> str:
        """JSON of the fields; the added fields are left out at their defaults (0), so the original architecture
        writes the same JSON (and the same weights file) as before they existed."""
        fields = {k: v for k, v in asdict(self).items() if k not in OPTIONAL or v != 0}
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VAEConfig:
        return cls(**json.loads(text))
