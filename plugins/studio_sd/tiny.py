"""Stable Diffusion pipelines built from configs with random weights: a tiny one for tests and offline
demos, and the full SD-1.5 architecture for speed benchmarks (speed does not depend on weight values).

`build_tiny_sd(path)` writes a diffusers folder (safetensors) that `SDBackend.load` reads like a real
checkpoint: UNet, VAE (scale factor 8, so 64x64 images have 4x8x8 latents), a CLIP text encoder, a
hand-written CLIP BPE tokenizer and a DDIM scheduler. It needs no network and takes about 0.1 s.

UNet and text encoder are random (deterministic by seed). The VAE is the small trained one shipped in
`weights/tiny-vae.safetensors` (recipe: `train_tiny_vae.py`), so the codec space round-trips images
(about 20 dB) and compression, img2img and the conformance round trip mean something offline.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Literal

TINY_VAE_WEIGHTS = Path(__file__).parent / "weights" / "tiny-vae.safetensors"
Arch = Literal["tiny", "sd15"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Words the tiny tokenizer merges into single tokens (others fall back to byte tokens, as CLIP does).
TINY_WORDS = ("a", "photo", "of", "face", "smiling", "cat", "dog", "the", "portrait", "painting", "red", "blue")

SCHEDULER_CONFIG = {  # SD-1.x noise schedule, as DDIM wants it (steps_offset=1 avoids a FutureWarning)
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def tiny_vocab_and_merges(words: tuple[str, ...] = TINY_WORDS) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary: the 256 byte symbols, the same with `</w>`, merges that build `words`
    left to right, then the two special tokens (the order of the real CLIP vocabulary)."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in words:
        if len(word) < 2:
            continue
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            merged += piece
            if rule not in merges:
                merges.append(rule)
                tokens.append(merged)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tiny_tokenizer(folder: Path, max_length: int = 77, words: tuple[str, ...] = TINY_WORDS) -> Path:
    """Write vocab.json, merges.txt and the tokenizer config of a tiny CLIP tokenizer (merging `words` into
    single tokens) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocab_and_merges(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": BOS,
              "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}))
    return folder


def _configs(arch: Arch, vocab_size: int) -> tuple[dict, dict, dict]:
    if arch == "tiny":
        unet = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                "block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32,
                "attention_head_dim": 4, "norm_num_groups": 16}
        vae = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
               "block_out_channels": (8, 16, 16, 16), "norm_num_groups": 8, "sample_size": 64,
               "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}
        text = {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "max_position_embeddings": 77, "projection_dim": 32}
        return unet, vae, text
    if arch == "sd15":
        unet = {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
                "block_out_channels": (320, 640, 1280, 1280),
                "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "cross_attention_dim": 768,
                "attention_head_dim": 8, "norm_num_groups": 32}
        vae = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
               "block_out_channels": (128, 256, 512, 512), "norm_num_groups": 32, "sample_size": 512,
               "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}
        text = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768,
                "hidden_act": "quick_gelu"}
        return unet, vae, text
    raise ValueError(f"unknown SD architecture {arch!r} (use tiny or sd15)")


def _trained_tiny_vae(config: dict):  # -> AutoencoderKL
    import json

    from diffusers import AutoencoderKL

    from studio.safetensors_io import load_tensors, read_metadata

    if not TINY_VAE_WEIGHTS.is_file():
        raise FileNotFoundError(f"the tiny VAE weights {TINY_VAE_WEIGHTS} are missing; rebuild them with "
                                "`python -m studio_sd.train_tiny_vae` or pass trained_vae=False")
    metrics = json.loads(read_metadata(TINY_VAE_WEIGHTS)["metrics"])
    vae = AutoencoderKL(**config, scaling_factor=round(metrics["scaling_factor"], 5))
    vae.load_state_dict(load_tensors(TINY_VAE_WEIGHTS), strict=True)
    return vae


def build_sd_pipeline(arch: Arch = "tiny", seed: int = 0, trained_vae: bool = True):  # -> a StableDiffusionPipeline
    """A StableDiffusionPipeline of the given architecture, deterministic by seed.

    Weights are random, except the tiny architecture's VAE when `trained_vae` (the shipped weights).
    Both architectures use the tiny tokenizer (no CLIP vocabulary is available offline); for `sd15` the
    text encoder still has CLIP ViT-L's 49408-token embedding, so its cost is the real one.
    """
    import torch

    from .models import silence_optional_dependency_warnings

    silence_optional_dependency_warnings()
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, _ = tiny_vocab_and_merges()
    unet_config, vae_config, text_config = _configs(arch, len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(Path(tmp)), local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = _trained_tiny_vae(vae_config) if arch == "tiny" and trained_vae else AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **text_config, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS]))
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_tiny_sd(path: str | Path, seed: int = 0, arch: Arch = "tiny", trained_vae: bool = True) -> Path:
    """Build an SD pipeline from configs (see build_sd_pipeline) and save it as a diffusers folder
    (safetensors) at `path`; returns `path`."""
    out = Path(path)
    pipe = build_sd_pipeline(arch, seed, trained_vae=trained_vae)
    from .models import quiet_loading

    with quiet_loading():
        pipe.save_pretrained(out, safe_serialization=True)
    return out
