"""Where `studio train` puts its weights so that `--model NAME` finds them: `<first model root>/<backend>/<name>`.

Without `--out` the weights are written there directly. With an `--out` outside that folder they are written to
`--out` and then COPIED there (never linked: a model's real path stays under the configured roots).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from studio.config import Settings, within
from studio.errors import InputError, clip


def weights_suffix(cls: type) -> str:
    """".safetensors" for a backend whose `train` writes one file, "" for one that writes a folder (the contract's
    `train_output`, e.g. sd's diffusers pipeline)."""
    return "" if getattr(cls, "train_output", "file") == "folder" else ".safetensors"


def default_name(dataset: str, seed: int) -> str:
    """A model name from the dataset and seed: `mnist-seed0`; `folder:/data/cats` gives `cats-seed0`."""
    base = dataset.split(":", 1)[1] if dataset.startswith("folder:") else dataset
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(base.rstrip("/\\")).name or base).strip("-._") or "model"
    return f"{base[:48]}-seed{seed}"


def check_model_name(name: str) -> str:
    """A model name for `--name` (studio.modelstore.check_name: 1-64 letters, digits, '_', '.', '-')."""
    from studio.modelstore import check_name

    return check_name(name, "--name: model name")


@dataclass(frozen=True)
class TrainTarget:
    """Where the trainer writes (`write`) and where the model lives under the roots (`model`), named `name`."""

    name: str
    write: Path
    model: Path

    @property
    def needs_copy(self) -> bool:
        return self.write.resolve() != self.model.resolve()


def train_target(cls: type, settings: Settings, out: Path | None, name: str | None, dataset: str,
                 seed: int) -> TrainTarget:
    """Decide, before any training, where the weights go and what model name they get; refuse a name another
    model of the backend already has (it would win the listing, and `--model NAME` would load that one)."""
    suffix = weights_suffix(cls)
    backend_dirs = [root / cls.name for root in settings.model_root_paths]
    listed = None  # `out` when it is already a file (or folder) the backend lists
    if out is not None:
        resolved = within(out, backend_dirs)
        if resolved is not None and resolved.parent in [d.resolve() for d in backend_dirs] and \
                resolved.name.endswith(suffix):
            listed = resolved
    if name is None:
        name = _stem(Path(out).name, suffix) if out is not None else default_name(dataset, seed)
    name = check_model_name(name)
    if out is not None and listed is None:
        listed = _listed_at(cls, settings, out, name)
    model = listed if listed is not None and _stem(listed.name, suffix) == name else backend_dirs[0] / f"{name}{suffix}"
    _check_free(cls, settings, name, model)
    return TrainTarget(name=name, write=Path(out) if out is not None else model, model=model)


def _listed_at(cls: type, settings: Settings, out: Path, name: str) -> Path | None:
    """`out` resolved when the backend already lists a model `name` there (e.g. its shipped weights, retrained in
    place), else None."""
    try:
        found = next((m for m in cls.available_models(settings) if m.name == name), None)
    except Exception:
        return None
    return _real(out) if found is not None and _real(found.path) == _real(out) else None


def _stem(filename: str, suffix: str) -> str:
    return filename[: -len(suffix)] if suffix and filename.endswith(suffix) else filename


def _check_free(cls: type, settings: Settings, name: str, model: Path) -> None:
    try:
        existing = {m.name: m for m in cls.available_models(settings)}
    except Exception:  # a backend that cannot list now: the trainer still runs, the listing decides later
        return
    other = existing.get(name)
    if other is not None and _real(other.path) != _real(model):
        raise InputError(f"model name {name!r} is taken by another {cls.name} model ({clip(other.path, 80)}): "
                         "choose another with --name")


def _real(path: object) -> Path | None:
    try:
        return Path(str(path)).expanduser().resolve() if path else None
    except (OSError, RuntimeError):
        return None


def register_trained(target: TrainTarget) -> Path:
    """Copy the trained weights into the model root when they were written elsewhere; returns the model's path."""
    if not target.needs_copy:
        return target.model
    target.model.parent.mkdir(parents=True, exist_ok=True)
    if target.write.is_dir():
        if target.model.exists():
            shutil.rmtree(target.model)
        shutil.copytree(target.write, target.model, symlinks=False)
    else:
        partial = target.model.with_name(target.model.name + ".partial")
        shutil.copyfile(target.write, partial)  # then rename: a listing never sees half a file
        partial.replace(target.model)
    return target.model
