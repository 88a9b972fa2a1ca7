"""The runtime path of an SD pipeline: device, dtype and speed options, chosen from config.

`choose_runtime` is pure (unit-tested without a GPU); `apply_runtime` applies its choice to a loaded
pipeline. Studio settings give the device and dtype (`STUDIO_DEVICE`, `STUDIO_DTYPE`); these variables
tune the rest (values 0, 1 or auto; auto means on for CUDA, off for CPU unless said otherwise):

- `STUDIO_SD_ATTENTION`: sdpa (torch scaled_dot_product_attention via AttnProcessor2_0, the diffusers
  default on torch 2) or classic (the explicit softmax(QK^T)V processor).
- `STUDIO_SD_CHANNELS_LAST`: UNet and VAE in channels_last memory format (auto: on for CUDA).
- `STUDIO_SD_VAE_SLICING`: decode a batch one image at a time (auto: on for CUDA).
- `STUDIO_SD_VAE_TILING`: decode images larger than the VAE's tile (512 px for SD-1.5) in overlapping
  tiles, so large images fit in memory (auto: on for CUDA; it changes nothing below the tile size).
- `STUDIO_SD_COMPILE`: torch.compile the UNet (default 0; first call compiles for minutes; every new
  size or batch recompiles). `STUDIO_SD_COMPILE_MODE`: default | reduce-overhead | max-autotune |
  max-autotune-no-cudagraphs (default: default).

On CPU the pipeline always runs in float32 and is never compiled; a request otherwise is noted.
On CUDA, dtype auto means float16 (bfloat16 when asked and supported).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from studio.errors import InputError

DTYPES = ("float32", "float16", "bfloat16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ATTENTION = ("sdpa", "classic")
_TRUE, _FALSE, _AUTO = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}, {"", "auto"}


@dataclass(frozen=True)
class RuntimeOptions:
    """How a pipeline runs: where, in which precision, with which speed options."""

    device: str = "cpu"
    dtype: str = "float32"
    attention: str = "sdpa"
    channels_last: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    compile_unet: bool = False
    compile_mode: str = "default"
    notes: tuple[str, ...] = ()

    def describe(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _flag(env: Mapping[str, str], name: str, auto: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _AUTO:
        return auto
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InputError(f"{name}={raw!r} is not valid; use 0, 1 or auto")


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in allowed:
        raise InputError(f"{name}={raw!r} is not valid; use one of: {', '.join(allowed)}")
    return raw


def resolve_device(device: str = "auto", cuda_available: bool | None = None) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; refuses CUDA when there is none."""
    device = (device or "auto").strip().lower()
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not cuda_available:
            raise InputError(f"device {device!r} was asked for but no CUDA GPU is available; use cpu or auto")
        return device
    raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def choose_runtime(device: str = "auto", dtype: str = "auto", env: Mapping[str, str] | None = None,
                   cuda_available: bool | None = None, bf16_supported: bool | None = None) -> RuntimeOptions:
    """The runtime options for a device/dtype request and the STUDIO_SD_* variables in `env`."""
    env = os.environ if env is None else env
    dev = resolve_device(device, cuda_available)
    dtype = (dtype or "auto").strip().lower()
    if dtype != "auto" and dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    gpu = dev.startswith("cuda")
    notes: list[str] = []
    attention = _choice(env, "STUDIO_SD_ATTENTION", ATTENTION, "sdpa")
    compile_mode = _choice(env, "STUDIO_SD_COMPILE_MODE", COMPILE_MODES, "default")
    compile_unet = _flag(env, "STUDIO_SD_COMPILE", False)
    if not gpu:
        if dtype not in ("auto", "float32"):
            notes.append(f"dtype {dtype} is not used on {dev}; running float32")
        if compile_unet:
            notes.append(f"STUDIO_SD_COMPILE is ignored on {dev}")
        return RuntimeOptions(dev, "float32", attention, _flag(env, "STUDIO_SD_CHANNELS_LAST", False),
                              _flag(env, "STUDIO_SD_VAE_SLICING", False), _flag(env, "STUDIO_SD_VAE_TILING", False),
                              False, compile_mode, tuple(notes))
    chosen = "float16" if dtype == "auto" else dtype
    if chosen == "bfloat16":
        if bf16_supported is None:
            import torch

            bf16_supported = torch.cuda.is_bf16_supported()
        if not bf16_supported:
            notes.append("bfloat16 is not supported by this GPU; running float16")
            chosen = "float16"
    return RuntimeOptions(dev, chosen, attention, _flag(env, "STUDIO_SD_CHANNELS_LAST", True),
                          _flag(env, "STUDIO_SD_VAE_SLICING", True), _flag(env, "STUDIO_SD_VAE_TILING", True),
                          compile_unet, compile_mode, tuple(notes))


def torch_dtype(name: str):  # -> torch.dtype
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def apply_runtime(pipe, runtime: RuntimeOptions):  # (StableDiffusionPipeline) -> same pipeline
    """Move `pipe` to the runtime's device and dtype and switch on its speed options (in place)."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    dtype = torch_dtype(runtime.dtype)
    if any(getattr(m, "dtype", dtype) != dtype for m in pipe.components.values() if isinstance(m, torch.nn.Module)):
        pipe.to(dtype=dtype)  # loaders pass the dtype already; only in-memory pipelines get here
    pipe.to(runtime.device)
    processor = AttnProcessor2_0 if runtime.attention == "sdpa" else AttnProcessor
    for model in (pipe.unet, pipe.vae):
        if not all(isinstance(p, processor) for p in model.attn_processors.values()):
            model.set_attn_processor(processor())
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    pipe.unet.to(memory_format=memory_format)
    pipe.vae.to(memory_format=memory_format)
    pipe.vae.enable_slicing() if runtime.vae_slicing else pipe.vae.disable_slicing()
    pipe.vae.enable_tiling() if runtime.vae_tiling else pipe.vae.disable_tiling()
    if runtime.compile_unet and runtime.device.startswith("cuda"):
        pipe.unet.compile(mode=runtime.compile_mode, fullgraph=True)  # in place; compiles on the first call
    pipe.set_progress_bar_config(disable=True)
    return pipe
