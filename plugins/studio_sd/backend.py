"""The Stable Diffusion backend: any SD-1.x/2.x diffusers pipeline behind the studio's latent contract.

Spaces (shapes for an image of H x W pixels, latent channels C=4, VAE scale factor f=8):
- `noise` (C, H/f, W/f), Gaussian, role SEED: the initial noise of the sampler. Seeds, slerp walks and
  noise-space directions live here. Noise is drawn on the CPU per seed.
- `codec` (C, H/f, W/f), role CODEC: the VAE latent, scaled by the VAE's `scaling_factor` (std about 1).
  encode() returns it (the posterior mean); decode() of a codec-only point runs the VAE decoder;
  codec + noise is img2img with `strength`; adding `mask` (n, 1, H, W) in [0, 1] (1 = redraw, 0 = keep) inpaints.
- Live previews: generation and img2img report, for the first image of a batch, the sampler's predicted clean
  image as the progress preview every few steps (at most about 10% of the denoising time; studio_sd.previews).
- `condition` (tokens, hidden), role CONDITION: the text encoder's embedding of the prompt (positive
  only; the negative prompt's embedding is recomputed from the options at decode time).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, field_validator

from studio.contract import (
    CODEC,
    CONDITION,
    DECODE,
    ENCODE,
    IMG2IMG,
    SAMPLE,
    SEED,
    TEXT,
    TRAIN,
    Backend,
    LatentSpace,
    ModelInfo,
    Point,
    Progress,
    TextOptions,
    choose_model,
    no_progress,
)
from studio.errors import InputError, StudioError

from .models import find_models, hub_model_info, load_pipeline, resolve_model
from .optimise import RuntimeOptions, apply_runtime, choose_runtime, torch_dtype
from .previews import LivePreviews
from .schedulers import make_scheduler
from .shapes import pipeline_shapes

if TYPE_CHECKING:
    import torch

    from studio.config import Settings

NOISE, CODEC_SPACE, CONDITION_SPACE = "noise", "codec", "condition"
MASK = "mask"  # img2img's optional inpainting mask: (n, 1, H, W) in [0, 1] at the image size, 1 = redraw
EMBED_CACHE_SIZE = 32


def weights_problem(folder: Path) -> str:
    """Why a pipeline folder's safetensors files cannot load (the first corrupt one, by component), or ""."""
    from studio.safetensors_io import read_header

    for path in sorted(folder.rglob("*.safetensors")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        try:
            read_header(path)
        except StudioError as exc:
            return f"{rel.parent.as_posix()}: {exc}" if rel.parent.parts else str(exc)
        except OSError as exc:
            return f"{rel.as_posix()} cannot be read ({type(exc).__name__})"
    return ""


class SDOptions(TextOptions):
    """Options of an SD job: the text options (width/height None: the checkpoint's native size, 512 for SD-1.5),
    a narrowed scheduler, and img2img's strength."""

    scheduler: Literal["ddim", "euler", "dpmpp"] = "ddim"
    strength: float = Field(0.6, ge=0.0, le=1.0, description="img2img: how much of the schedule is re-noised")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8 (got {value})")
        return value


def _spaces(latent: tuple[int, ...], condition: tuple[int, ...]) -> dict[str, LatentSpace]:
    return {
        NOISE: LatentSpace(NOISE, latent, "gaussian", frozenset({SEED})),
        CODEC_SPACE: LatentSpace(CODEC_SPACE, latent, "none", frozenset({CODEC}), coding_mean=0.0, coding_std=1.0),
        CONDITION_SPACE: LatentSpace(CONDITION_SPACE, condition, "none", frozenset({CONDITION})),
    }


class SDBackend(Backend):
    """A loaded SD pipeline. Build with `SDBackend.load(...)` or `SDBackend.from_pipeline(pipe)`."""

    name = "sd"
    version = "0.1.0"
    description = "Stable Diffusion 1.x/2.x (diffusers): noise, codec (VAE) and condition (prompt) spaces"
    capabilities = frozenset({SAMPLE, ENCODE, DECODE, TEXT, IMG2IMG, TRAIN})
    train_aliases = ("ldm",)  # `studio train ldm`: a latent diffusion model trained from scratch
    train_output = "folder"  # a diffusers pipeline folder
    Options = SDOptions

    def __init__(self, model: ModelInfo, pipe, runtime: RuntimeOptions) -> None:
        super().__init__(model, runtime.device, runtime.dtype)
        self.pipe = pipe
        self.runtime = runtime
        self._scheduler_config = dict(pipe.scheduler.config)
        self._lock = threading.RLock()
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()

    # ----- discovery and loading -----
    @classmethod
    def available_models(cls, settings: Settings) -> list[ModelInfo]:
        """The installed diffusers folders; one with a corrupt weights file is listed with the reason as its error."""
        models = []
        for info in find_models(settings):
            problem = weights_problem(Path(info.path))
            models.append(dataclasses.replace(info, error=problem) if problem else info)
        return models

    @classmethod
    def model_spaces(cls, model: ModelInfo, settings: Settings) -> dict[str, LatentSpace] | None:
        """The native-size spaces of an installed folder, from its unet, vae, text encoder and tokenizer configs."""
        shapes = pipeline_shapes(model.path) if model.path and not model.error else None
        return _spaces(shapes.latent, shapes.condition) if shapes else None

    @classmethod
    def model_image_shape(cls, model: ModelInfo, settings: Settings) -> tuple[int, int, int] | None:
        shapes = pipeline_shapes(model.path) if model.path and not model.error else None
        return shapes.image if shapes else None

    @classmethod
    def load(cls, model: str | None, settings: Settings, device: str = "cpu", dtype: str = "float32") -> SDBackend:
        runtime = choose_runtime(device, dtype)
        if model is None or not str(model).strip():
            models = cls.available_models(settings)
            if models:  # the first usable one (none at all: resolve_model says how to install one)
                model = choose_model(cls.name, models, None).name
        source, info = resolve_model(model, settings)
        if isinstance(source, Path):
            problem = weights_problem(source)
            if problem:
                raise InputError(f"model {str(model)!r} of backend {cls.name!r} is broken: {problem}")
        pipe = load_pipeline(source, runtime, settings, os.environ.get("STUDIO_SD_SAFETY_CHECKER", "auto"))
        if info is None:
            info = hub_model_info(str(source), settings)
        return cls(info, apply_runtime(pipe, runtime), runtime)

    @classmethod
    def train(cls, dataset: str, epochs: int, out: str, seed: int, settings: Settings,
              progress: Progress = no_progress, **kwargs: object) -> dict:
        """Train a text-to-image pipeline from scratch (studio_sd.train_ldm) into the folder `out`; kwargs:
        batch_size, vae_steps, limit, threads, lr."""
        import inspect

        from .train_ldm import train_ldm

        allowed = set(inspect.signature(train_ldm).parameters) - {"dataset", "epochs", "out", "seed", "settings",
                                                                   "progress"}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise InputError(f"unknown training options for sd: {', '.join(unknown)} "
                             f"(it takes {', '.join(sorted(allowed))})")
        return train_ldm(dataset, epochs, out, seed, settings, progress,
                         **{k: v for k, v in kwargs.items() if v is not None})

    @classmethod
    def from_pipeline(cls, pipe, name: str = "in-memory", runtime: RuntimeOptions | None = None) -> SDBackend:
        """Wrap an already built StableDiffusionPipeline (benchmarks, tests, notebooks)."""
        runtime = runtime or choose_runtime("cpu", "float32", env={})
        return cls(ModelInfo(name=name, path="", sha256="unknown"), apply_runtime(pipe, runtime), runtime)

    def describe(self) -> dict:
        return {**super().describe(), "runtime": self.runtime.describe()}

    # ----- spaces -----
    def _options(self, options: BaseModel | dict | None) -> SDOptions:
        if options is None:
            return SDOptions()
        if isinstance(options, SDOptions):
            return options
        if isinstance(options, BaseModel):
            options = options.model_dump()
        return self.parse_options(options)  # type: ignore[return-value]

    @property
    def scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    def size(self, options: BaseModel | dict | None = None) -> tuple[int, int]:
        """(height, width) in pixels for these options."""
        o = self._options(options)
        native = int(self.pipe.unet.config.sample_size) * self.scale_factor
        return (o.height or native, o.width or native)

    def spaces(self, options: BaseModel | dict | None = None) -> dict[str, LatentSpace]:
        h, w = self.size(options)
        latent = (int(self.pipe.unet.config.in_channels), h // self.scale_factor, w // self.scale_factor)
        condition = (int(self.pipe.tokenizer.model_max_length), int(self.pipe.text_encoder.config.hidden_size))
        return _spaces(latent, condition)

    def image_shape(self, options: BaseModel | dict | None = None) -> tuple[int, int, int]:
        h, w = self.size(options)
        return (3, h, w)

    # ----- text -----
    def _cached(self, text: str) -> torch.Tensor | None:
        hit = self._embeddings.get(text)
        if hit is not None:
            self._embeddings.move_to_end(text)
        return hit

    def _remember(self, text: str, embedding: torch.Tensor) -> torch.Tensor:
        self._embeddings[text] = embedding
        while len(self._embeddings) > EMBED_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return embedding

    def _embed(self, text: str, negative: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text encoder's embeddings (1, tokens, hidden) of a prompt and, when given, a negative prompt,
        on the pipeline's device; both in one encode_prompt call when neither is cached (as diffusers does)."""
        import torch

        with self._lock:
            positive = self._cached(text)
            negative_embedding = self._cached(negative) if negative is not None else None
            if positive is not None and (negative is None or negative_embedding is not None):
                return positive, negative_embedding
            with torch.no_grad():
                if positive is None and negative is not None and negative_embedding is None:
                    pos, neg = self.pipe.encode_prompt(text, self.pipe.device, 1, True, negative)
                    return self._remember(text, pos), self._remember(negative, neg)
                if positive is None:
                    positive = self._remember(text, self.pipe.encode_prompt(text, self.pipe.device, 1, False)[0])
                if negative is not None and negative_embedding is None:
                    negative_embedding = self._remember(
                        negative, self.pipe.encode_prompt(negative, self.pipe.device, 1, False)[0])
            return positive, negative_embedding

    def condition(self, n: int, options: BaseModel | dict | None = None) -> Point:
        o = self._options(options)
        return {CONDITION_SPACE: self._embed(o.prompt)[0].float().cpu().repeat(n, 1, 1)}

    # ----- checks -----
    def _check_point(self, point: Point, o: SDOptions) -> int:
        import torch

        spaces = self.spaces(o)
        unknown = sorted(set(point) - set(spaces) - {MASK})
        if unknown:
            raise InputError(f"point has unknown spaces {unknown}; the sd backend has {sorted(spaces)}")
        if NOISE not in point and CODEC_SPACE not in point:
            raise InputError("an sd point needs 'noise' (generate), 'codec' (decode) or both (img2img)")
        sizes = set()
        if MASK in point:
            sizes.add(self._check_mask(point, o))
        for name, tensor in point.items():
            if name == MASK:
                continue
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape[1:]) != spaces[name].shape:
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                expected = ", ".join(map(str, spaces[name].shape))
                raise InputError(f"point[{name!r}] has shape {shape}; expected (n, {expected}) "
                                 f"for {self.size(o)[1]}x{self.size(o)[0]} images")
            if not torch.isfinite(tensor).all():
                raise InputError(f"point[{name!r}] holds NaN or infinite values")
            if name != CONDITION_SPACE or tensor.shape[0] != 1:
                sizes.add(int(tensor.shape[0]))
        if len(sizes) > 1:
            raise InputError(f"the spaces of a point have different batch sizes {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    def _check_mask(self, point: Point, o: SDOptions) -> int:
        """The batch size of a valid inpainting mask: (n, 1, H, W) at the image size, finite, in [0, 1], and only
        with an img2img point (noise and codec)."""
        import torch

        mask = point[MASK]
        if NOISE not in point or CODEC_SPACE not in point:
            raise InputError("a mask needs an img2img point (both 'noise' and 'codec')")
        h, w = self.size(o)
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or tuple(mask.shape[1:]) != (1, h, w):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise InputError(f"point['mask'] has shape {shape}; expected (n, 1, {h}, {w}) (1 = redraw, 0 = keep)")
        if not torch.isfinite(mask).all() or float(mask.min()) < 0 or float(mask.max()) > 1:
            raise InputError("point['mask'] must hold values in [0, 1] (1 = redraw, 0 = keep)")
        return int(mask.shape[0])

    # ----- decode -----
    def _guided(self, o: SDOptions) -> bool:
        return o.guidance > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None

    def _prompt_embeddings(self, point: Point, n: int, o: SDOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
        negative_text = o.negative_prompt if self._guided(o) else None
        if CONDITION_SPACE in point:
            positive = point[CONDITION_SPACE].to(self.pipe.device, torch_dtype(self.runtime.dtype))
            negative = self._embed(negative_text)[0] if negative_text is not None else None
        else:
            positive, negative = self._embed(o.prompt, negative_text)
        positive = positive.expand(n, -1, -1) if positive.shape[0] == 1 else positive
        return positive, (negative.expand(n, -1, -1) if negative is not None else None)

    def _to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-decode scaled latents (and run the checkpoint's safety checker, if any) to NCHW in [-1, 1]."""
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        images = vae.decode(latents / vae.config.scaling_factor + shift, return_dict=False)[0]
        images, flagged = self.pipe.run_safety_checker(images, self.pipe.device, latents.dtype)
        if flagged is not None:
            for i, bad in enumerate(flagged):
                if bad:
                    images[i] = -1.0  # blacked out, as the pipeline does
        return images.float().clamp(-1, 1).cpu()

    def decode(self, point: Point, options: BaseModel | dict | None = None,
               progress: Progress = no_progress) -> torch.Tensor:
        import torch

        o = self._options(options)
        n = self._check_point(point, o)
        with self._lock, torch.no_grad():
            if NOISE in point and CODEC_SPACE in point:
                return self._img2img(point, n, o, progress)
            if NOISE in point:
                return self._generate(point, n, o, progress)
            return self._to_images(point[CODEC_SPACE].to(self.pipe.device, torch_dtype(self.runtime.dtype)))

    def _preview_image(self, latents: torch.Tensor) -> torch.Tensor:
        """A live preview: scaled latents (one item) through the VAE and the safety checker, like the final images."""
        return self._to_images(latents.to(self.pipe.vae.dtype))

    def _generate(self, point: Point, n: int, o: SDOptions, progress: Progress) -> torch.Tensor:
        import torch

        positive, negative = self._prompt_embeddings(point, n, o)
        previews = LivePreviews(o.steps, progress, self._preview_image)
        self.pipe.scheduler = previews.watch(make_scheduler(o.scheduler, self._scheduler_config))
        h, w = self.size(o)

        def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            previews.step(step + 1, callback_kwargs["latents"], total=pipe.num_timesteps)
            return callback_kwargs

        try:
            out = self.pipe(prompt_embeds=positive, negative_prompt_embeds=negative,
                            latents=point[NOISE].to(self.pipe.device, positive.dtype), num_inference_steps=o.steps,
                            guidance_scale=o.guidance, height=h, width=w,
                            generator=torch.Generator("cpu").manual_seed(0), output_type="pt",
                            callback_on_step_end=on_step_end, return_dict=True)
        finally:
            previews.release()
        return (out.images.float().cpu() * 2.0 - 1.0).clamp(-1, 1)

    def _latent_mask(self, point: Point, like: torch.Tensor) -> torch.Tensor | None:
        """The point's pixel mask (n, 1, H, W; 1 = redraw) at the latents' size, on their device; None without one."""
        import torch.nn.functional as F

        mask = point.get(MASK)
        if mask is None:
            return None
        return F.interpolate(mask.to(like.device, like.dtype), size=tuple(like.shape[-2:]), mode="area")

    def _img2img(self, point: Point, n: int, o: SDOptions, progress: Progress) -> torch.Tensor:
        """Re-noise the codec latent to the strength's timestep with the point's noise, then denoise the rest
        of the schedule (the diffusers img2img recipe, with the noise given instead of drawn).

        With a `mask` in the point (inpainting), after each step the kept region (mask 0) is put back to the codec
        latent noised to the next timestep, and to the codec latent itself after the last step (RePaint / the
        diffusers inpaint recipe for 4-channel UNets): latents = m * latents + (1 - m) * noised original."""
        import torch

        device, dtype = self.pipe.device, torch_dtype(self.runtime.dtype)
        start = point[CODEC_SPACE].to(device, dtype)
        scheduler = make_scheduler(o.scheduler, self._scheduler_config)
        scheduler.set_timesteps(o.steps, device=device)
        t_start = o.steps - min(int(o.steps * o.strength), o.steps)
        timesteps = scheduler.timesteps[t_start * scheduler.order:]
        if len(timesteps) == 0:  # strength too small for one step: nothing to denoise
            return self._to_images(start)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        noise = point[NOISE].to(device, dtype)
        latents = scheduler.add_noise(start, noise, timesteps[:1].repeat(n))
        mask = self._latent_mask(point, latents)
        positive, negative = self._prompt_embeddings(point, n, o)
        embeddings = torch.cat([negative, positive]) if negative is not None else positive
        previews = LivePreviews(len(timesteps), progress, self._preview_image)
        previews.watch(scheduler)
        for i, t in enumerate(timesteps):
            model_input = torch.cat([latents] * 2) if negative is not None else latents
            model_input = scheduler.scale_model_input(model_input, t)
            eps = self.pipe.unet(model_input, t, encoder_hidden_states=embeddings, return_dict=False)[0]
            if negative is not None:
                uncond, cond = eps.chunk(2)
                eps = uncond + o.guidance * (cond - uncond)
            latents = scheduler.step(eps, t, latents, return_dict=False)[0]
            if mask is not None:
                kept = start if i + 1 == len(timesteps) else \
                    scheduler.add_noise(start, noise, timesteps[i + 1:i + 2].repeat(n))
                latents = mask * latents + (1 - mask) * kept
                if previews.x0 is not None:
                    previews.x0 = mask * previews.x0 + (1 - mask) * start
            previews.step(i + 1, latents)
        return self._to_images(latents)

    # ----- encode -----
    def encode(self, images: torch.Tensor, options: BaseModel | dict | None = None, seed: int = 0,
               progress: Progress = no_progress) -> Point:
        import torch

        o = self._options(options)
        c, h, w = self.image_shape(o)
        if images.dim() != 4 or images.shape[1] not in (1, 3) or tuple(images.shape[2:]) != (h, w):
            raise InputError(f"images have shape {tuple(images.shape)}; expected (n, 3, {h}, {w}) for these options "
                             "(set width/height to the images' size, multiples of 8)")
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        vae = self.pipe.vae
        with self._lock, torch.no_grad():
            x = images.to(self.pipe.device, torch_dtype(self.runtime.dtype))
            mean = vae.encode(x).latent_dist.mean
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            return {CODEC_SPACE: ((mean - shift) * vae.config.scaling_factor).float().cpu()}
