"""Weights for the GAN plugin: read DCGAN-tutorial checkpoints without unpickling code, convert them to
safetensors, and load safetensors files back into networks.

A checkpoint is read with `torch.load(..., weights_only=True)`, which refuses anything but tensors and
plain containers. The generator's shape (nz, ngf, channels, size) is inferred from its tensors and checked
against the architecture before anything is written.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from studio.config import Settings, load_settings, resolve_under
from studio.contract import ModelInfo
from studio.errors import InputError, NotFound
from studio.safetensors_io import load_tensors, read_metadata, save_weights, weights_model_info

from .config import GeneratorConfig

if TYPE_CHECKING:  # torch and the networks load only when weights are read or built
    import torch

    from .models import Encoder, Generator

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED_NAMES = frozenset({"mnist", "faces"})
MAX_CHECKPOINT_BYTES = 2 * 1024**3
MODEL_SUBDIR = "gan"
def model_dir(settings: Settings) -> Path:
    """Where imported and converted GAN weights go: `<first model root>/gan`."""
    return settings.model_root_paths[0] / MODEL_SUBDIR


def infer_config(state: dict[str, torch.Tensor]) -> GeneratorConfig:
    """Infer a tutorial generator's config from its transposed-convolution weights `main.<i>.weight`."""
    import torch

    convs = sorted(((int(m.group(1)), v) for k, v in state.items()
                    if (m := re.fullmatch(r"main\.(\d+)\.weight", k)) and isinstance(v, torch.Tensor) and v.dim() == 4),
                   key=lambda item: item[0])
    if len(convs) < 2:
        raise ValueError("no DCGAN generator layers (main.<i>.weight, 4-d) found")
    first, last = convs[0][1], convs[-1][1]
    if first.shape[2] != first.shape[3]:
        raise ValueError(f"first layer kernel is not square: {tuple(first.shape)}")
    start = int(first.shape[2])
    mapping = sorted(((int(m.group(1)), v) for k, v in state.items()
                      if (m := re.fullmatch(r"mapping\.(\d+)\.weight", k)) and isinstance(v, torch.Tensor)),
                     key=lambda item: item[0])
    config = GeneratorConfig(nz=int(first.shape[0]), ngf=int(last.shape[0]), nc=int(last.shape[1]),
                             size=start * 2 ** (len(convs) - 1), start=start, mapping=max(len(mapping) - 1, 0),
                             mapping_width=int(mapping[0][1].shape[0]) if len(mapping) > 1 else 0)
    config.validate()
    return config


def build_generator(state: dict[str, torch.Tensor], config: GeneratorConfig | None = None) -> Generator:
    """A generator holding `state` (tutorial key layout), checked key by key and shape by shape."""
    import torch

    from .models import Generator

    config = config or infer_config(state)
    generator = Generator(config)
    expected = generator.state_dict()
    state = dict(state)
    for key, value in expected.items():  # older checkpoints have no batch counters; they do not affect outputs
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"layers do not match a DCGAN-tutorial generator (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    for key, value in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(value.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(f"{key} has shape {shape}, expected {tuple(value.shape)}")
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise ValueError(f"{key} holds NaN or infinite values")
    generator.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return generator.eval()


def read_tutorial_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The generator state dict of a DCGAN-tutorial checkpoint (a dict with `netG_state_dict`, or bare)."""
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise NotFound(f"checkpoint {str(path)!r} does not exist or is not a file")
    if p.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise InputError(f"checkpoint {str(path)!r} is larger than {MAX_CHECKPOINT_BYTES} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols it reads fine
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses code; any failure means "not a safe tensor checkpoint"
        lines = [ln.strip() for ln in str(exc).replace("WeightsUnpickler error:", "\n").splitlines() if ln.strip()]
        if lines and lines[0].startswith("Weights only load failed"):
            details = [ln for ln in lines[1:] if "GLOBAL" in ln or "Unsupported" in ln]
            reason = "it holds objects other than tensors; refused without running them" + (
                f": {details[0][:120]}" if details else "")
        else:
            reason = f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__
        raise InputError(f"checkpoint {str(path)!r} cannot be read as a tensors-only torch checkpoint "
                         f"({reason})") from None
    if isinstance(obj, dict) and "netG_state_dict" in obj:
        obj = obj["netG_state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"checkpoint {str(path)!r} holds no generator state dict (netG_state_dict or bare)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def convert_checkpoint(source: str | Path, dest: Path, label: str) -> Path:
    """Read a tutorial checkpoint, validate it and write it to `dest` as safetensors with its config."""
    from .train import weights_metadata

    state = read_tutorial_checkpoint(source)
    try:
        generator = build_generator(state)
    except ValueError as exc:
        raise InputError(f"checkpoint {str(source)!r} is not a DCGAN-tutorial generator: {exc}") from None
    meta = weights_metadata(generator.config, None, source=label)
    return save_weights(dest, {k: v.detach().contiguous() for k, v in generator.state_dict().items()}, meta)


def import_dcgan_tutorial(path: str | Path, name: str, settings: Settings | None = None) -> ModelInfo:
    """Import a DCGAN-tutorial checkpoint as model `name` of backend `gan`; return its ModelInfo.

    Writes `<first model root>/gan/<name>.safetensors` (an existing import of that name is replaced).
    """
    settings = settings or load_settings()
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InputError(f"model name {name!r} is invalid: use 1-64 letters, digits, '_', '.', '-' "
                         "starting with a letter or digit")
    if name.lower() in RESERVED_NAMES:
        raise InputError(f"model name {name!r} is taken by a built-in gan model; choose another")
    dest = resolve_under(model_dir(settings) / f"{name}.safetensors", settings.model_root_paths, "model path")
    convert_checkpoint(path, dest, f"dcgan-tutorial:{Path(path).name}")
    return model_info(name, dest, f"imported DCGAN-tutorial checkpoint {Path(path).name}")


def model_info(name: str, path: Path, description: str) -> ModelInfo:
    """ModelInfo of a GAN weights file, with its sha256 and generator config; a file that is not valid
    safetensors is listed with the reason as its `error` (loading it is refused, other models keep serving)."""

    def describe(meta: dict[str, str]) -> tuple[dict, str]:
        try:
            extra: dict = {k: int(meta[k]) for k in ("nz", "ngf", "nc", "size") if k in meta}
        except ValueError as exc:
            return {}, f"weights file {Path(path).name!r} has an unreadable header ({type(exc).__name__})"
        extra["encoder"] = "encoder_width" in meta
        return extra, ""

    return weights_model_info(name, path, description, describe)


def load_weights(path: str | Path) -> tuple[Generator, Encoder | None, dict[str, str]]:
    """Load a GAN safetensors file: the generator, the inversion encoder if it holds one, and the metadata."""
    from .models import Encoder
    from .train import ENCODER_PREFIX

    try:
        meta = read_metadata(path)
        tensors = load_tensors(path)
    except OSError as exc:
        raise InputError(f"GAN weights {Path(path).name!r} cannot be read: {type(exc).__name__}") from None
    gen_state = {k: v for k, v in tensors.items() if not k.startswith(ENCODER_PREFIX)}
    try:
        config = GeneratorConfig.from_metadata(meta) if "nz" in meta else infer_config(gen_state)
        generator = build_generator(gen_state, config)
        encoder = None
        if "encoder_width" in meta:
            encoder = Encoder(config, int(meta["encoder_width"]))
            encoder.load_state_dict({k.removeprefix(ENCODER_PREFIX): v for k, v in tensors.items()
                                     if k.startswith(ENCODER_PREFIX)})
            encoder.eval()
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"GAN weights {str(path)!r} do not match the DCGAN layout: "
                         f"{str(exc).splitlines()[0][:160]}") from None
    return generator, encoder, meta
