"""What `studio plugins` (and the UI's Plugins tab) shows: backends, models with their spaces, capabilities, errors.

Listing loads no model and no torch: each model's spaces and image shape come from the backend's
`model_spaces` / `model_image_shape` (read from a weights header or config files). Only when asked
(`load_models=True`) is a model whose backend cannot say so loaded to find out.
"""

from __future__ import annotations

from studio.config import Settings, load_settings
from studio.contract import Backend, ModelInfo
from studio.modelstore import registered_listing
from studio.registry import load_registry


def _model_entry(cls: type[Backend], model: ModelInfo, settings: Settings, load_models: bool) -> dict:
    """A model's listing with its default-option `spaces` and `image_shape` (absent when unknown)."""
    entry = model.describe()
    if model.error:
        return entry
    try:
        spaces, shape = cls.model_spaces(model, settings), cls.model_image_shape(model, settings)
        if spaces is None and load_models:  # the backend cannot say without loading: load it (torch and weights)
            backend = cls.load(model.name, settings)
            options = backend.parse_options({})
            spaces, shape = backend.spaces(options), backend.image_shape(options)
    except Exception as exc:  # one model that cannot be described must not hide the others
        entry["spaces_error"] = f"{type(exc).__name__}: {exc}"
        return entry
    if spaces is not None:
        entry["spaces"] = [s.describe() for s in spaces.values()]
    if shape is not None:
        entry["image_shape"] = list(shape)
    return entry


def describe_plugins(settings: Settings | None = None, load_models: bool = False) -> dict:
    """Describe every registered backend and its models; a backend that fails to list reports its error.

    Each model carries its `spaces` and `image_shape` when the backend declares them without loading;
    `load_models=True` loads the models of backends that do not (slow: torch and weights). The backend's own
    `spaces` and `image_shape` are its default model's."""
    settings = settings or load_settings()
    registry = load_registry()
    backends = []
    for name, cls in sorted(registry.backends.items()):
        entry: dict = {"name": name, "version": cls.version, "description": cls.description,
                       "capabilities": sorted(cls.capabilities), "entry_point": registry.sources.get(name, ""),
                       "models": [], "spaces": []}
        try:
            listed = cls.available_models(settings)
            entry["models"] = [_model_entry(cls, m, settings, load_models) for m in listed]
            # registered models not fetched to this machine yet: one query, no download (fetched when loaded)
            entry["models"] += registered_listing(settings, name, {m["name"] for m in entry["models"]})
            default = next((m for m in entry["models"][:len(listed)] if not m.get("error")), None)
            if default is not None and "spaces" in default:
                entry["spaces"] = default["spaces"]
                if "image_shape" in default:
                    entry["image_shape"] = default["image_shape"]
        except Exception as exc:  # one broken backend must not hide the others
            entry["error"] = f"{type(exc).__name__}: {exc}"
        backends.append(entry)
    errors = [{"plugin": e.plugin, "error": e.error, "group": e.group} for e in registry.errors]
    ops = [{"name": name, "entry_point": registry.op_sources.get(name, ""),
            "summary": (op.__doc__ or "").strip().split("\n")[0], "batchable": op.batchable,
            "resumable": op.resumable} for name, op in registry.ops.items()]
    return {"backends": backends, "ops": ops, "errors": errors}
