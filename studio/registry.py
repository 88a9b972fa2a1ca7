"""Plugin discovery through the `latent_studio.backends` entry-point group.

A plugin package declares, in its pyproject.toml::

    [project.entry-points."latent_studio.backends"]
    myplugin = "my_package:register"

and `register(register_backend)` calls `register_backend(MyBackend)` once per backend class. The
built-in backends register the same way. `STUDIO_PLUGINS=a,b` restricts loading to those entry points.
A plugin that fails to import or register is recorded with its error and never stops the others, even when
it raises SystemExit (calls sys.exit) or another BaseException; only KeyboardInterrupt passes through.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from studio.contract import CAPABILITIES, Backend
from studio.errors import NotFound

GROUP = "latent_studio.backends"


@dataclass
class PluginError:
    plugin: str
    error: str
    detail: str = ""


@dataclass
class Registry:
    backends: dict[str, type[Backend]] = field(default_factory=dict)
    errors: list[PluginError] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # backend name -> entry point name

    def register_backend(self, cls: type[Backend], source: str = "<direct>") -> None:
        problems = []
        for attr in ("name", "version"):
            if not isinstance(getattr(cls, attr, None), str):
                problems.append(f"missing class attribute {attr!r}")
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            problems.append("is not a studio.contract.Backend subclass")
        elif set(cls.capabilities) - CAPABILITIES:
            problems.append(f"declares unknown capabilities {sorted(set(cls.capabilities) - CAPABILITIES)}")
        if problems:
            raise TypeError(f"{getattr(cls, '__name__', cls)!r} " + "; ".join(problems))
        if cls.name in self.backends and self.backends[cls.name] is not cls:
            raise TypeError(f"backend name {cls.name!r} is already registered by {self.sources[cls.name]!r}")
        self.backends[cls.name] = cls
        self.sources[cls.name] = source

    def get(self, name: str) -> type[Backend]:
        if name in self.backends:
            return self.backends[name]
        for err in self.errors:
            if err.plugin == name:
                raise NotFound(f"backend {name!r} failed to load: {err.error}")
        known = ", ".join(sorted(self.backends)) or "none"
        raise NotFound(f"unknown backend {name!r} (installed: {known})")


def _allowed() -> set[str] | None:
    raw = os.environ.get("STUDIO_PLUGINS", "").strip()
    return {p.strip() for p in raw.split(",") if p.strip()} if raw else None


def _describe_failure(exc: BaseException) -> str:
    """One line for a plugin's failure; SystemExit gets its own words (its str() is just the exit code)."""
    if isinstance(exc, SystemExit):
        return f"the plugin called sys.exit({exc.code!r}) while loading"
    text = " ".join(str(exc).split())[:240]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_entry_point(registry: Registry, ep: EntryPoint) -> None:
    try:
        hook = ep.load()
        hook(lambda cls: registry.register_backend(cls, source=ep.name))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken plugin (even one calling sys.exit) must not stop the others
        registry.errors.append(PluginError(ep.name, _describe_failure(exc), traceback.format_exc()))


_cache: Registry | None = None


def load_registry(refresh: bool = False) -> Registry:
    """Discover and register every allowed plugin (cached per process)."""
    global _cache
    if _cache is not None and not refresh:
        return _cache
    registry = Registry()
    allowed = _allowed()
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if allowed is None or ep.name in allowed:
            _load_entry_point(registry, ep)
    _cache = registry
    return registry


def get_backend_class(name: str) -> type[Backend]:
    return load_registry().get(name)
