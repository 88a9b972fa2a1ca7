"""Where SD checkpoints come from: diffusers folders under `<model_root>/sd/`, any folder under the
model roots, or a Hugging Face hub id (from the local cache; from the hub only when STUDIO_ALLOW_DOWNLOADS=1).

Every local folder is resolved (symlinks followed) before it is checked against the model roots, and so is each
file inside it: a symlink that leads outside the roots is refused, one that stays inside is fine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from studio.config import resolve_under, within
from studio.contract import ModelInfo
from studio.errors import InputError, NotFound, clip
from studio.hashing import file_sha256

if TYPE_CHECKING:
    from studio.config import Settings

    from .optimise import RuntimeOptions

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SHIPPED_DIR = Path(__file__).parent / "weights"  # pipeline folders shipped with the plugin (mnist-fashion)


def sd_dirs(settings: Settings) -> list[Path]:
    """The folders whose subfolders are the installed SD models: `<root>/sd` for each model root."""
    return [root / "sd" for root in settings.model_root_paths]


def weights_sha256(folder: Path, cache_dir: Path | None = None) -> str:
    """A stable hash over a pipeline folder's weight files: sha256 of their sorted relative names and
    per-file sha256s (cached by size and mtime, on disk in `cache_dir` when given)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    total = hashlib.sha256()
    for f in files:
        total.update(f"{f.relative_to(folder).as_posix()}\0{file_sha256(f, cache_dir)}\n".encode())
    return total.hexdigest()


def check_pipeline_folder(folder: Path) -> dict:
    """The folder's model_index.json, or an error saying why it is not an SD-1.x/2.x diffusers folder."""
    index_file = folder / "model_index.json"
    if not folder.is_dir():
        raise NotFound(f"model folder {str(folder)!r} does not exist")
    if not index_file.is_file():
        raise InputError(f"model folder {str(folder)!r} is not a diffusers pipeline (no model_index.json)")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{index_file} is not valid JSON ({exc})") from None
    missing = [c for c in REQUIRED_COMPONENTS if c not in index]
    if missing or "text_encoder_2" in index or "transformer" in index:
        kind = index.get("_class_name", "unknown pipeline")
        raise InputError(f"model folder {str(folder)!r} holds a {kind}, not a Stable Diffusion 1.x/2.x pipeline"
                         + (f" (missing: {', '.join(missing)})" if missing else ""))
    return index


def check_contained(folder: Path, settings: Settings) -> Path:
    """`folder` resolved, refused unless it and every file in it resolve inside the model roots."""
    roots = settings.model_root_paths
    real = within(folder, roots)
    if real is None:
        raise InputError(f"model folder {clip(folder.name)!r} leads outside the model roots (a symlink); refused")
    for path in real.rglob("*"):
        if path.is_symlink() and within(path, roots) is None:
            inner = clip(path.relative_to(real).as_posix())
            raise InputError(f"model folder {clip(folder.name)!r}: {inner!r} is a symlink outside the model roots; "
                             "refused")
    return real


def _info(folder: Path, settings: Settings, name: str | None = None) -> ModelInfo:
    folder = check_contained(folder, settings)
    index = check_pipeline_folder(folder)
    return ModelInfo(name=name or folder.name, path=str(folder), sha256=weights_sha256(folder, settings.cache_path),
                     description=f"{index.get('_class_name', 'diffusers pipeline')} (diffusers folder)")


def shipped_models(settings: Settings) -> list[ModelInfo]:
    """The pipeline folders shipped in the plugin's `weights/` (trusted: part of the installed package)."""
    found = []
    for folder in sorted(SHIPPED_DIR.iterdir()) if SHIPPED_DIR.is_dir() else []:
        if (folder / "model_index.json").is_file():
            check_pipeline_folder(folder)
            found.append(ModelInfo(name=folder.name, path=str(folder.resolve()),
                                   sha256=weights_sha256(folder, settings.cache_path),
                                   description="shipped: a text-to-image model trained here by `studio train ldm`"))
    return found


def find_models(settings: Settings) -> list[ModelInfo]:
    """The shipped pipelines, then every diffusers folder (one with model_index.json) directly under
    `<model_root>/sd/` (name = folder name; the first of a name wins)."""
    found: dict[str, ModelInfo] = {m.name: m for m in shipped_models(settings)}
    for base in sd_dirs(settings):
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            if folder.name not in found and (folder / "model_index.json").is_file():
                try:
                    found[folder.name] = _info(folder, settings, name=folder.name)
                except InputError:
                    continue  # not an SD-1.x/2.x pipeline, or a symlink out of the roots: not ours to list
    return list(found.values())


def no_model_message(settings: Settings) -> str:
    return (f"no SD model installed; run `studio sd tiny {sd_dirs(settings)[0] / 'tiny'}` "
            "or pass --model (a diffusers folder under the model roots or a hub id)")


def resolve_model(model: str | None, settings: Settings) -> tuple[Path | str, ModelInfo | None]:
    """Where `model` comes from: (local folder, its ModelInfo) or (hub id, None).

    Accepts None (the first installed model), an installed model's name, a folder under the model roots
    (absolute, or relative to a root), or a hub id `org/name`. A folder outside the roots is refused.
    """
    if model is None or not str(model).strip():
        models = find_models(settings)
        if not models:
            raise NotFound(no_model_message(settings))
        return Path(models[0].path), models[0]
    model = str(model).strip()
    if "/" not in model and os.sep not in model:
        for info in shipped_models(settings):
            if info.name == model:
                return Path(info.path), info
        for base in sd_dirs(settings):
            if (base / model / "model_index.json").is_file():
                info = _info(base / model, settings, name=model)
                return Path(info.path), info
    given = Path(model).expanduser()
    roots = settings.model_root_paths
    looks_like_path = (given.is_absolute() or model.startswith((".", "~")) or given.exists()
                       or any((root / given).exists() for root in roots) or not HUB_ID.match(model))
    if looks_like_path:
        folder = resolve_under(given.resolve() if given.exists() else given, roots, "model")
        if not folder.exists():
            installed = ", ".join(m.name for m in find_models(settings)) or "none"
            raise NotFound(f"model {model!r} is not an installed SD model (installed: {installed}), "
                           "not a folder under the model roots, and not a hub id (org/name)")
        info = _info(folder, settings, name=model)
        return Path(info.path), info
    if not settings.allow_downloads and not hub_cached(model):
        raise NotFound(downloads_off_message(model, settings))
    return model, None


def downloads_off_message(hub_id: str, settings: Settings) -> str:
    roots = clip(os.pathsep.join(str(r) for r in settings.model_root_paths), 100)
    return (f"model {clip(hub_id)!r} is not in the local Hugging Face cache and downloads are off (offline; "
            f"STUDIO_ALLOW_DOWNLOADS=1 allows them); download it first or pass a folder under {roots}")


def hub_cached(hub_id: str) -> bool:
    """True when the hub model's model_index.json is in the local Hugging Face cache (no network call)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub_id, "model_index.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id or cache: treat as not cached
        return False


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE, read at call time)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE) and "HF_HUB_OFFLINE" not in os.environ
    except ImportError:  # pragma: no cover - diffusers depends on huggingface_hub
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def silence_optional_dependency_warnings() -> None:
    """transformers warns at import that torchvision is missing (the studio never needs it): keep stderr clean."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Switch off diffusers' and transformers' tqdm bars while loading or saving (the studio reports its own
    progress); restores their previous state."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before[0]:
            diffusers_logging.enable_progress_bar()
        if before[1]:
            transformers_logging.enable_progress_bar()


def _dtype_keyword() -> str:
    """`dtype` on diffusers versions that deprecate `torch_dtype`, else `torch_dtype`."""
    try:
        from diffusers.utils import deprecation_utils

        return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    except ImportError:
        return "torch_dtype"


def load_pipeline(source: Path | str, runtime: RuntimeOptions, settings: Settings, safety_checker: str = "auto"):
    """Load a StableDiffusionPipeline in the runtime's dtype (on the CPU; `apply_runtime` moves it).

    `safety_checker`: "auto" loads it when the checkpoint has one, "0" never loads it.
    """
    silence_optional_dependency_warnings()
    from diffusers import StableDiffusionPipeline

    from .optimise import torch_dtype

    kwargs: dict = {_dtype_keyword(): torch_dtype(runtime.dtype)}
    if safety_checker.strip().lower() in {"0", "false", "no", "off"}:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with quiet_loading():
        return _load(StableDiffusionPipeline, source, settings, kwargs)


def _load(pipeline_class, source: Path | str, settings: Settings, kwargs: dict):
    if isinstance(source, Path):
        try:
            return pipeline_class.from_pretrained(source, local_files_only=True, **kwargs)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise InputError(f"could not load the SD pipeline in {str(source)!r}: {_first_line(exc)}") from None
    roots = os.pathsep.join(str(r) for r in settings.model_root_paths)
    try:
        return pipeline_class.from_pretrained(source, local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not usable from the cache"
        cache_error = exc
    if not settings.allow_downloads:
        raise NotFound(downloads_off_message(source, settings)) from None
    if hub_offline():
        raise NotFound(f"model {clip(source)!r} is not in the local Hugging Face cache and the hub cannot be reached "
                       f"(offline); download it first or pass a local folder under {roots}") from None
    try:
        return pipeline_class.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - network, auth and format errors all end the same way
        raise NotFound(f"model {source!r} is not in the local Hugging Face cache and could not be fetched from the "
                       f"hub ({_first_line(exc)}); download it first or pass a local folder under {roots}"
                       ) from cache_error


def hub_model_info(hub_id: str, settings: Settings) -> ModelInfo:
    """A ModelInfo for a hub model that is now in the local cache (sha256 over its cached weight files)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(hub_id, local_files_only=True))
        sha = weights_sha256(folder, settings.cache_path)
    except Exception:  # noqa: BLE001 - the hash is informative; never fail a loaded model over it
        folder, sha = Path(hub_id), "unknown"
    return ModelInfo(name=hub_id, path=str(folder), sha256=sha, description="Hugging Face hub model")
