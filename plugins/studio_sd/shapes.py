"""A pipeline folder's shapes read from its component configs (JSON only: no torch, no diffusers), so listings
show each SD model's spaces without loading it. The numbers are the ones a loaded pipeline uses: the VAE scale
factor is 2 ** (len(vae.block_out_channels) - 1), as diffusers computes it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PipelineShapes:
    """Native (default-option) shapes of a pipeline: latent (C, H/f, W/f), condition (tokens, hidden), image."""

    latent: tuple[int, int, int]
    condition: tuple[int, int]
    image: tuple[int, int, int]


def _config(folder: Path, name: str) -> dict:
    data = json.loads((folder / name).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{name} is not a JSON object")
    return data


def pipeline_shapes(folder: str | Path) -> PipelineShapes | None:
    """The shapes of the diffusers folder `folder`; None when a config is missing or unreadable."""
    folder = Path(folder)
    try:
        unet = _config(folder, "unet/config.json")
        vae = _config(folder, "vae/config.json")
        text = _config(folder, "text_encoder/config.json")
        tokenizer_file = folder / "tokenizer" / "tokenizer_config.json"
        tokenizer = _config(folder, "tokenizer/tokenizer_config.json") if tokenizer_file.is_file() else {}
        factor = 2 ** (len(vae.get("block_out_channels") or [0]) - 1)
        sample = int(unet["sample_size"])
        tokens = int(tokenizer.get("model_max_length") or text["max_position_embeddings"])
        if tokens > 100_000:  # transformers' "no limit" sentinel: the text encoder's positions bound it
            tokens = int(text["max_position_embeddings"])
        side = sample * factor
        return PipelineShapes((int(unet["in_channels"]), sample, sample), (tokens, int(text["hidden_size"])),
                              (3, side, side))
    except (OSError, ValueError, KeyError, TypeError):
        return None
