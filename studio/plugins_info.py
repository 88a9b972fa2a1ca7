"""What `studio plugins` (and the UI's Plugins tab) shows: backends, spaces, models, capabilities, errors."""

from __future__ import annotations

from studio.config import Settings, load_settings
from studio.modelstore import registered_listing
from studio.registry import load_registry


def describe_plugins(settings: Settings | None = None, load_models: bool = True) -> dict:
    """Describe every registered backend; a backend that fails to list or load reports its error."""
    settings = settings or load_settings()
    registry = load_registry()
    backends = []
    for name, cls in sorted(registry.backends.items()):
        entry = {"name": name, "version": cls.version, "description": cls.description,
                 "capabilities": sorted(cls.capabilities), "entry_point": registry.sources.get(name, ""),
                 "models": [], "spaces": []}
        try:
            entry["models"] = [m.describe() for m in cls.available_models(settings)]
            # registered models not fetched to this machine yet: one query, no download (fetched when loaded)
            entry["models"] += registered_listing(settings, name, {m["name"] for m in entry["models"]})
            if load_models and entry["models"]:
                backend = cls.load(None, settings)
                entry["spaces"] = [s.describe() for s in backend.spaces(backend.parse_options({})).values()]
                entry["image_shape"] = list(backend.image_shape(backend.parse_options({})))
        except Exception as exc:  # one broken backend must not hide the others
            entry["error"] = f"{type(exc).__name__}: {exc}"
        backends.append(entry)
    errors = [{"plugin": e.plugin, "error": e.error} for e in registry.errors]
    return {"backends": backends, "errors": errors}
