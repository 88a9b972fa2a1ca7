"""What the pickers offer: installed backends, their models and capabilities, and stored attribute vectors.

Read from the plugin registry without loading any weights (`describe_plugins(load_models=False)`, plus each
backend's Options JSON schema, which the page turns into form controls), and from the vector store's metadata files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from studio.config import Settings
from studio.errors import InputError, clip

DATASETS = ["mnist", "fashion", "digits", "animals"]
ATTRIBUTES = [f"class:{i}" for i in range(10)] + ["class:3-vs-8", "class:1-vs-7", "thickness", "slant"]
PREFERRED = ("vae", "gan", "sd")


@dataclass
class BackendEntry:
    name: str
    version: str
    description: str = ""
    capabilities: list[str] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)
    entry_point: str = ""
    error: str | None = None
    options_schema: dict = field(default_factory=dict)

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


class Catalog:
    """Backends and models, refreshed on demand (plugins can be installed while the studio runs)."""

    def __init__(self, settings: Settings, describe: Callable[..., dict] | None = None) -> None:
        self.settings = settings
        self._describe = describe
        self._lock = threading.Lock()
        self._info: dict | None = None
        self._roots: tuple = ()  # the model roots' signature (roots_signature) when the listing was made

    def refresh(self, rescan: bool = False) -> dict:
        """Describe the backends again; `rescan` also re-reads the installed entry points."""
        roots = roots_signature(self.settings)  # taken first: a model added while describing shows next time
        if self._describe is not None:
            info = self._describe(self.settings, load_models=False)
        else:
            from studio.plugins_info import describe_plugins
            from studio.registry import load_registry

            if rescan:
                load_registry(refresh=True)
            info = with_schemas(describe_plugins(self.settings, load_models=False))
        with self._lock:
            self._info, self._roots = info, roots
        return info

    def refresh_if_changed(self) -> dict:
        """The listing, described again when a model-root folder changed since it was made (a model added or
        removed while the studio runs): a few stat calls when nothing changed. A failed describe keeps the old
        listing."""
        if self._info is None or roots_signature(self.settings) != self._roots:
            try:
                return self.refresh()
            except Exception:  # the listing we have still answers
                if self._info is None:
                    raise
        return self._info

    @property
    def info(self) -> dict:
        if self._info is None:
            return self.refresh()
        return self._info

    def backends(self) -> list[BackendEntry]:
        return [BackendEntry(name=b["name"], version=b.get("version", ""), description=b.get("description", ""),
                             capabilities=list(b.get("capabilities", [])), models=list(b.get("models", [])),
                             entry_point=b.get("entry_point", ""), error=b.get("error"),
                             options_schema=dict(b.get("options_schema") or {}))
                for b in self.info.get("backends", [])]

    def plugin_errors(self) -> list[dict]:
        return list(self.info.get("errors", []))

    def names(self) -> list[str]:
        return [b.name for b in self.backends()]

    def get(self, name: str | None) -> BackendEntry | None:
        return next((b for b in self.backends() if b.name == name), None)

    def default_backend(self) -> str | None:
        entries = self.backends()
        with_models = [b.name for b in entries if b.models]
        for name in PREFERRED:
            if name in with_models:
                return name
        if with_models:
            return with_models[0]
        return entries[0].name if entries else None

    def models(self, backend: str | None) -> list[str]:
        entry = self.get(backend)
        return [m["name"] for m in entry.models] if entry else []

    def default_model(self, backend: str | None) -> str | None:
        """The model a job on `backend` gets when it names none: the first not listed as broken."""
        entry = self.get(backend)
        if entry is None:
            return None
        usable = [m["name"] for m in entry.models if not m.get("error")] or [m["name"] for m in entry.models]
        return usable[0] if usable else None

    def resolve_model(self, backend: str, model: str | None) -> str | None:
        """The model a job on `backend` runs: `model` when it is one of the backend's; the backend's default when
        `model` is empty or another backend's default (a client that names a backend and no model sends the page's
        default); a path or hub id (holding a slash) as it is, for the worker to resolve. InputError, one line
        naming the available models, for any other name; as given when the catalog lists no model for the
        backend (the worker decides)."""
        if model is not None and not isinstance(model, str):
            raise InputError(f"model: expected a model name, got {type(model).__name__}")
        model = (model or "").strip()
        if not model:
            return self.default_model(backend)
        if model in self.models(backend) or "/" in model or "\\" in model:
            return model
        if any(model == self.default_model(other) for other in self.names() if other != backend):
            return self.default_model(backend)
        names = self._refreshed_models(backend)
        if model in names or not names:
            return model
        raise InputError(f"unknown model {clip(model)!r} for backend {clip(backend)!r} "
                         f"(available: {', '.join(names)})")

    def _refreshed_models(self, backend: str) -> list[str]:
        """The backend's models after describing again (a model may have been added since the page was built)."""
        try:
            self.refresh()
        except Exception:  # the listing we have still answers
            pass
        return self.models(backend)

    def sha256(self, backend: str | None, model: str | None) -> str | None:
        entry = self.get(backend)
        if entry is None or not entry.models:
            return None
        chosen = next((m for m in entry.models if m["name"] == model), entry.models[0])
        return chosen.get("sha256")

    def options_schema(self, backend: str | None) -> dict:
        """The JSON schema of `backend`'s Options ({} when unknown)."""
        entry = self.get(backend)
        return entry.options_schema if entry else {}

    def vectors(self, backend: str | None, model: str | None) -> list[dict]:
        """Stored vectors that belong to these weights and that the event's studio user sees (newest metadata
        wins on duplicate names). Fails closed: none when the event has no trusted user and users exist."""
        from studio.errors import StudioError
        from studio.ui.jobs import current_user
        from studio.users import viewer_for
        from studio.vectorstore import list_vectors

        if not backend:
            return []
        sha = self.sha256(backend, model)
        try:
            user = current_user(self.settings)
        except StudioError:
            return []
        try:
            rows = list_vectors(self.settings, backend, viewer=viewer_for(self.settings, user))
        except Exception:  # an unreadable store must not break the page
            return []
        return [r for r in rows if sha is None or r.get("sha256", "")[:16] == sha[:16].lower()]


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def _folders(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir())
    except OSError:
        return []


def roots_signature(settings: Settings, depth: int = 2) -> tuple:
    """The modification times of the model roots and the folders `depth` levels inside them (`<root>/<backend>/`
    and a folder model such as `<root>/sd/<name>/`): any model file added, removed or renamed there changes it."""
    out: list = []
    level = list(settings.model_root_paths)
    for _ in range(depth + 1):
        out.extend((str(p), _mtime(p)) for p in level)
        level = [child for p in level for child in _folders(p)]
    return tuple(out)


def with_schemas(info: dict) -> dict:
    """`info` (describe_plugins) with each backend's Options JSON schema (`options_schema`) from the registry."""
    from studio.registry import load_registry

    backends = load_registry().backends
    for entry in info.get("backends", []):
        cls = backends.get(entry.get("name"))
        try:
            entry["options_schema"] = cls.Options.model_json_schema() if cls is not None else {}
        except Exception:  # a schema pydantic cannot write: the JSON box still takes the options
            entry["options_schema"] = {}
    return info
