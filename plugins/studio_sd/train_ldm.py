"""Training recipe of the shipped text-to-image latent diffusion model `mnist-fashion`: a Stable Diffusion
pipeline (AutoencoderKL, CLIP text encoder and tokenizer, UNet2DConditionModel, DDIM scheduler) trained from
scratch on MNIST plus Fashion-MNIST, sized for two CPU cores.

Three stages, all deterministic by seed for a fixed thread count:
1. the autoencoder: 3x32x32 images (28x28 resized as the studio's datasets are) <-> 4x8x8 latents, SD's VAE loss
   (reconstruction plus a tiny KL term); `scaling_factor` = 1 / std of the training latents, as in SD;
2. the training set is encoded once (posterior means) and cached in memory;
3. the UNet and the text encoder learn together to predict the noise (SD's epsilon objective and noise schedule),
   with 10% empty captions so that classifier-free guidance works; the saved weights are an EMA of them.

Captions (`caption`) are drawn afresh each time an image is seen: "a handwritten digit 7" or "... seven",
"a photo of a sneaker", and the style variations "thick"/"thin" digits (the top and bottom quarter of ink within
their class) and "dark"/"light" garments (the same by brightness).

    studio train sd --dataset mnist-fashion --epochs 8 --out DIR
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from studio.config import Settings, load_settings
from studio.contract import Progress, no_progress, wants_preview
from studio.errors import InputError

SIZE = 32
TOKENS = 16
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
DIGIT_STYLES = ("thin", "thick")  # bottom and top quarter of ink within the class
FASHION_STYLES = ("light", "dark")  # top and bottom quarter of brightness within the class
WORDS = ("a", "an", "the", "photo", "of", "handwritten", "digit", "number", *DIGIT_WORDS, "t", "shirt", "trouser",
         "pullover", "dress", "coat", "sandal", "sneaker", "bag", "ankle", "boot", *DIGIT_STYLES, *FASHION_STYLES)
PARTS = {"mnist-fashion": (("mnist", "digit"), ("fashion", "fashion")), "mnist": (("mnist", "digit"),),
         "fashion": (("fashion", "fashion"),), "digits": (("digits", "digit"),)}  # dataset -> (source, kind)
P_UNCONDITIONAL = 0.1
PREVIEW_STEPS = 10  # DDIM steps of the samples shown after each epoch

VAE_CONFIG = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
              "block_out_channels": (16, 32, 32), "norm_num_groups": 8, "sample_size": SIZE,
              "mid_block_add_attention": False,
              "down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3}
UNET_CONFIG = {"sample_size": SIZE // 4, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
               "block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 64,
               "attention_head_dim": 8, "norm_num_groups": 16}
TEXT_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "max_position_embeddings": TOKENS, "projection_dim": 64}


def caption(kind: str, label: int, style: int, rng: np.random.Generator) -> str:
    """A training caption for one image: kind "digit" or "fashion", its class, style -1 (plain), 0 or 1."""
    if rng.random() < P_UNCONDITIONAL:
        return ""
    if kind == "digit":
        adjective = f"{DIGIT_STYLES[style]} " if style >= 0 and rng.random() < 0.7 else ""
        number = DIGIT_WORDS[label] if rng.random() < 0.5 else str(label)
        return f"a {adjective}handwritten digit {number}"
    adjective = f"{FASHION_STYLES[style]} " if style >= 0 and rng.random() < 0.7 else ""
    return f"a photo of a {adjective}{FASHION_NAMES[label]}"


def prompt_for(kind: str, label: int) -> str:
    """The plain prompt of a class: "a handwritten digit 7", "a photo of a sneaker"."""
    return f"a handwritten digit {label}" if kind == "digit" else f"a photo of a {FASHION_NAMES[label]}"


def _styles(x: np.ndarray, labels: np.ndarray, kind: str) -> np.ndarray:
    """-1 for most images; 0/1 for the bottom/top quarter of mean intensity within each class."""
    ink = x.reshape(len(x), -1).mean(1)
    styles = np.full(len(x), -1, dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        lo, hi = np.quantile(ink[idx], [0.25, 0.75])
        styles[idx[ink[idx] <= lo]] = 0
        styles[idx[ink[idx] >= hi]] = 1
    if kind == "fashion":  # bright garments are "light" (0), dark ones "dark" (1): flip the brightness order
        styles = np.where(styles >= 0, 1 - styles, styles)
    return styles


def load_training_set(dataset: str, split: str, settings: Settings, limit: int | None = None
                      ) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(images uint8 N x 32 x 32, kind per image, labels, styles) of `dataset` (a key of PARTS).
    The 28x28 images are resized as studio.images.to_tensor resizes them (Lanczos)."""
    from PIL import Image

    from studio.datasets import load_arrays

    if dataset not in PARTS:
        raise InputError(f"the sd recipe trains on {', '.join(PARTS)} (captioned datasets); got {dataset!r}")
    xs, kinds, labels, styles = [], [], [], []
    for name, kind in PARTS[dataset]:
        x, y, _ = load_arrays(name, split, limit, settings)
        big = np.stack([np.asarray(Image.fromarray(im, "L").resize((SIZE, SIZE), Image.Resampling.LANCZOS))
                        for im in x])
        xs.append(big)
        kinds += [kind] * len(x)
        labels.append(y)
        styles.append(_styles(x, y, kind))
    return np.concatenate(xs), kinds, np.concatenate(labels), np.concatenate(styles)


def _to_float(x: np.ndarray):  # uint8 (N, 32, 32) -> torch (N, 3, 32, 32) in [-1, 1]
    import torch

    t = torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0)[:, None]
    return t.expand(-1, 3, -1, -1).contiguous()


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total) / max(total - warmup, 1)))


def psnr(images, reconstructions) -> float:
    """Mean per-image PSNR (dB) of [-1, 1] images, peak 1 on [0, 1]."""
    import torch

    mse = (((images - reconstructions) / 2) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


def train_autoencoder(x: np.ndarray, steps: int, seed: int, progress: Progress, batch: int = 64, lr: float = 1e-3,
                      kl_weight: float = 1e-6):
    """The AutoencoderKL trained on `x` (uint8 N x 32 x 32) for `steps` batches."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG).train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * _cosine(step, steps, 100)
        images = _to_float(x[torch.randint(0, len(x), (batch,), generator=gen).numpy()])
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = (recon - images).abs().mean() + ((recon - images) ** 2).mean() + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step + 1, steps, f"autoencoder loss {loss.item():.4f}")
    return vae.eval()


def encode_all(vae, x: np.ndarray, batch: int = 512):
    """Posterior means (N, 4, 8, 8) of uint8 images."""
    import torch

    with torch.no_grad():
        return torch.cat([vae.encode(_to_float(x[i:i + batch])).latent_dist.mean for i in range(0, len(x), batch)])


def build_tokenizer(folder: Path):
    """The tokenizer of the recipe's vocabulary (CLIP BPE over bytes, with WORDS merged to single tokens)."""
    from transformers import CLIPTokenizer

    from .tiny import write_tiny_tokenizer

    return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder, max_length=TOKENS, words=WORDS),
                                         local_files_only=True)


def preview_prompts(kinds: list[str]) -> list[str]:
    """The fixed prompts of the per-epoch samples: up to eight classes of the dataset's kinds."""
    prompts = []
    for kind in dict.fromkeys(kinds):
        prompts += [prompt_for(kind, c) for c in range(10)]
    return (prompts[::max(1, len(prompts) // 8)])[:8]


def epoch_samples(vae, text_encoder, tokenizer, unet, prompts: list[str]):  # -> PIL image
    """A grid of samples (one per prompt, seed 0, PREVIEW_STEPS DDIM steps, guidance 3) of the EMA models.

    The noise comes from a private generator inside a forked global RNG and the models are only read: the training
    draws and the weights are untouched, so the saved pipeline is byte-identical with or without the preview."""
    import torch

    from studio import images as imgs

    from .models import quiet_loading

    with torch.random.fork_rng(devices=[]), torch.no_grad(), quiet_loading():
        pipe = assemble(vae, text_encoder, tokenizer, unet)
        pipe.set_progress_bar_config(disable=True)
        x = pipe(prompts, num_inference_steps=PREVIEW_STEPS, guidance_scale=3.0, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    return imgs.grid(imgs.to_pil(x.float() * 2 - 1))


def _ema_update(ema, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)


def train_diffusion(latents, kinds: list[str], labels: np.ndarray, styles: np.ndarray, tokenizer, epochs: int,
                    seed: int, progress: Progress, batch: int = 64, lr: float = 1e-3, ema_decay: float = 0.999,
                    snr_gamma: float = 5.0, on_epoch=None, preview=None):
    """(unet, text_encoder), EMA weights, trained on scaled `latents` with captions drawn per image and step.
    The loss is weighted by min(SNR, gamma) / SNR per timestep (Min-SNR weighting, which converges faster);
    `on_epoch(unet, text_encoder)` gets the EMA models after each epoch, and so does `preview(unet, text_encoder)`,
    whose image (samples) goes to `progress` as its fourth argument."""
    import copy

    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tiny import SCHEDULER_CONFIG

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG).train()
    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        **TEXT_CONFIG, vocab_size=len(vocab), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).train()
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    noise_schedule = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                                      if k not in ("set_alpha_to_one", "steps_offset")})
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    token_cache: dict[str, torch.Tensor] = {}

    def tokens(texts: list[str]) -> torch.Tensor:
        for t in set(texts) - token_cache.keys():
            token_cache[t] = tokenizer(t, padding="max_length", max_length=TOKENS, truncation=True,
                                       return_tensors="pt").input_ids[0]
        return torch.stack([token_cache[t] for t in texts])

    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    loss_weight = torch.clamp(snr, max=snr_gamma) / snr
    n = len(latents)
    per_epoch = n // batch
    total = epochs * per_epoch
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).numpy()
        for b in range(per_epoch):
            idx = order[b * batch:(b + 1) * batch]
            for group in opt.param_groups:
                group["lr"] = lr * _cosine(step, total, 300)
            z = latents[idx]
            texts = [caption(kinds[i], int(labels[i]), int(styles[i]), rng) for i in idx]
            hidden = text_encoder(tokens(texts))[0]
            noise = torch.randn(z.shape, generator=gen)
            t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(idx),), generator=gen)
            pred = unet(noise_schedule.add_noise(z, noise, t), t, encoder_hidden_states=hidden).sample
            loss = (((pred - noise) ** 2).mean(dim=(1, 2, 3)) * loss_weight[t]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(ema_decay, (1 + step) / (10 + step))
            _ema_update(ema_unet, unet, decay)
            _ema_update(ema_text, text_encoder, decay)
            step += 1
            progress(step, total, f"diffusion loss {loss.item():.4f}")
        if on_epoch is not None:
            on_epoch(ema_unet, ema_text)
        if preview is not None:
            progress(step, total, f"epoch {epoch + 1}/{epochs} samples", preview(ema_unet, ema_text))
    return ema_unet, ema_text


def assemble(vae, text_encoder, tokenizer, unet):  # -> StableDiffusionPipeline
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from .tiny import SCHEDULER_CONFIG

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def train_ldm(dataset: str, epochs: int, out: str | Path, seed: int = 0, settings: Settings | None = None,
              progress: Progress = no_progress, batch_size: int = 64, vae_steps: int | None = None,
              limit: int | None = None,
              threads: int = 2, lr: float = 1e-3) -> dict:
    """Train the three parts on `dataset` and save the pipeline folder at `out`; returns its metrics. `vae_steps`
    None: 1500 autoencoder batches, fewer for a small `limit` (25 passes over the images, at least 20)."""
    import tempfile

    import torch

    from .models import quiet_loading, silence_optional_dependency_warnings

    silence_optional_dependency_warnings()
    if epochs < 1 or (vae_steps is not None and vae_steps < 1) or batch_size < 2:
        raise InputError("epochs and vae_steps must be at least 1 and batch_size at least 2")
    settings = settings or load_settings()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.time()
    try:
        x, kinds, labels, styles = load_training_set(dataset, "train", settings, limit)
        test_x, _, _, _ = load_training_set(dataset, "test", settings, 2000 if limit is None else limit)
        if vae_steps is None:
            vae_steps = min(1500, max(20, 25 * len(x) // 64))
        vae = train_autoencoder(x, vae_steps, seed, lambda s, t, m="", p=None: progress(s, t, m))
        vae_seconds = time.time() - started
        with torch.no_grad():
            test_images = _to_float(test_x)
            recon = torch.cat([vae.decode(vae.encode(test_images[i:i + 500]).latent_dist.mean).sample
                               for i in range(0, len(test_images), 500)]).clamp(-1, 1)
        means = encode_all(vae, x)
        scaling = 1.0 / float(means.std())
        vae.register_to_config(scaling_factor=round(scaling, 5))
        latents = means * vae.config.scaling_factor
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = build_tokenizer(Path(tmp))

        def save(unet, text_encoder) -> None:  # after each epoch, so that an interrupted run leaves a usable model
            with quiet_loading():
                assemble(vae, text_encoder, tokenizer, unet).save_pretrained(Path(out), safe_serialization=True)

        prompts = preview_prompts(kinds)

        def samples(unet, text_encoder):  # -> PIL image: what the model draws after each epoch
            return epoch_samples(vae, text_encoder, tokenizer, unet, prompts)

        unet, text_encoder = train_diffusion(latents, kinds, labels, styles, tokenizer, epochs, seed, progress,
                                             batch=batch_size, lr=lr, on_epoch=save,
                                             preview=samples if wants_preview(progress) else None)
    finally:
        torch.set_num_threads(old_threads)
    metrics = {"recipe": "studio_sd.train_ldm", "dataset": dataset, "epochs": epochs, "seed": seed,
               "batch_size": batch_size, "vae_steps": vae_steps, "threads": threads, "train_images": len(x),
               "autoencoder_test_psnr": round(psnr(test_images, recon), 3), "scaling_factor": round(scaling, 5),
               "parameters": {name: sum(p.numel() for p in part.parameters())
                              for name, part in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder))},
               "autoencoder_seconds": round(vae_seconds, 1), "seconds": round(time.time() - started, 1)}
    (Path(out) / "training.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics
