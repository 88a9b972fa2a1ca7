"""Plugin discovery through entry-point groups; the built-ins register exactly as third-party plugins do.

A plugin package declares, in its pyproject.toml, any of::

    [project.entry-points."latent_studio.backends"]
    myplugin = "my_package:register"            # register(register_backend): register_backend(MyBackend)
    [project.entry-points."latent_studio.ops"]
    myplugin = "my_package.ops:register"        # register(register_op): register_op(MyOpSpec)
    [project.entry-points."latent_studio.commands"]
    myplugin = "my_package.cli:register_commands"   # register_commands(app): adds typer commands to `studio`

`STUDIO_PLUGINS=a,b` restricts loading to those entry-point names (the core's own ops, entry point
`builtin`, always load). A plugin built for another major version of the contract is refused with a one-line
error naming both versions. A plugin that fails to import or register is recorded with its error and never
stops the others, even when it raises SystemExit (calls sys.exit) or another BaseException; only
KeyboardInterrupt passes through. Nothing here imports torch: listing and validation need no model code.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from studio.contract import CAPABILITIES, CONTRACT_VERSION, Backend, contract_major
from studio.errors import InputError, NotFound
from studio.spec import OpSpec

GROUP = "latent_studio.backends"
OPS_GROUP = "latent_studio.ops"
COMMANDS_GROUP = "latent_studio.commands"
BUILTIN_OPS = "builtin"  # the core's own ops: always loaded, whatever STUDIO_PLUGINS says
OP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass
class PluginError:
    plugin: str
    error: str
    detail: str = ""
    group: str = GROUP


def check_contract_version(cls: type, what: str) -> None:
    """TypeError (one line) when `cls` was built for another major version of the contract."""
    declared = getattr(cls, "contract_version", CONTRACT_VERSION)
    if contract_major(declared) != contract_major(CONTRACT_VERSION):
        raise TypeError(f"{what} was built for contract version {declared}; this studio has contract version "
                        f"{CONTRACT_VERSION} (majors differ: update the plugin or the studio)")


@dataclass
class Registry:
    backends: dict[str, type[Backend]] = field(default_factory=dict)
    errors: list[PluginError] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # backend name -> entry point name
    ops: dict[str, type[OpSpec]] = field(default_factory=dict)
    op_sources: dict[str, str] = field(default_factory=dict)  # op name -> entry point name

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
        check_contract_version(cls, f"backend {cls.name!r}")
        if cls.name in self.backends and self.backends[cls.name] is not cls:
            raise TypeError(f"backend name {cls.name!r} is already registered by {self.sources[cls.name]!r}")
        self.backends[cls.name] = cls
        self.sources[cls.name] = source

    def register_op(self, cls: type[OpSpec], source: str = "<direct>") -> None:
        """Register an op: an OpSpec subclass with an `op` literal, fields, traits and a `run` handler."""
        if not (isinstance(cls, type) and issubclass(cls, OpSpec)):
            raise TypeError(f"{getattr(cls, '__name__', cls)!r} is not a studio.spec.OpSpec subclass")
        name = cls.op_name()
        if not isinstance(name, str) or not OP_NAME_RE.match(name):
            raise TypeError(f"{cls.__name__!r} needs a field `op: Literal[\"name\"] = \"name\"` with a lower-case "
                            f"name (letters, digits, '_', at most 32)")
        if cls.run is OpSpec.run:
            raise TypeError(f"op {name!r} ({cls.__name__}) does not implement run(self, job)")
        check_contract_version(cls, f"op {name!r}")
        if name in self.ops and self.ops[name] is not cls:
            raise TypeError(f"op name {name!r} is already registered by {self.op_sources[name]!r}")
        self.ops[name] = cls
        self.op_sources[name] = source

    def get_op(self, name: str) -> type[OpSpec]:
        if name in self.ops:
            return self.ops[name]
        failed = [e for e in self.errors if e.group == OPS_GROUP]
        hint = f"; plugins that failed to load: {', '.join(e.plugin for e in failed)}" if failed else ""
        raise InputError(f"op: unknown op {name[:40]!r} (use one of {', '.join(self.ops)}){hint}")

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


def _call_hook(errors: list[PluginError], ep: EntryPoint, group: str, argument: object) -> None:
    """Load entry point `ep` and call it with `argument`; a failure is recorded in `errors`, never raised."""
    try:
        hook = ep.load()
        hook(argument)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken plugin (even one calling sys.exit) must not stop the others
        errors.append(PluginError(ep.name, _describe_failure(exc), traceback.format_exc(), group))


def _entry_points(group: str) -> list[EntryPoint]:
    allowed = _allowed()
    return [ep for ep in sorted(entry_points(group=group), key=lambda e: e.name)
            if allowed is None or ep.name in allowed or (group == OPS_GROUP and ep.name == BUILTIN_OPS)]


_cache: Registry | None = None


def load_registry(refresh: bool = False) -> Registry:
    """Discover and register every allowed plugin's backends and ops (cached per process)."""
    global _cache
    if _cache is not None and not refresh:
        return _cache
    registry = Registry()
    for ep in _entry_points(GROUP):
        _call_hook(registry.errors, ep, GROUP, lambda cls, _ep=ep: registry.register_backend(cls, source=_ep.name))
    for ep in _entry_points(OPS_GROUP):
        _call_hook(registry.errors, ep, OPS_GROUP, lambda cls, _ep=ep: registry.register_op(cls, source=_ep.name))
    _cache = registry
    return registry


def load_commands(app: object) -> list[PluginError]:
    """Let every allowed plugin add its commands to the CLI `app` (a typer app); returns the failures."""
    errors: list[PluginError] = []
    for ep in _entry_points(COMMANDS_GROUP):
        _call_hook(errors, ep, COMMANDS_GROUP, app)
    return errors


def get_backend_class(name: str) -> type[Backend]:
    return load_registry().get(name)


def get_trainable_class(name: str) -> type[Backend]:
    """The backend class `studio train NAME` trains: a backend's name or one of its `train_aliases`."""
    registry = load_registry()
    for cls in registry.backends.values():
        if name in cls.train_aliases:
            return cls
    return registry.get(name)


def get_op(name: str) -> type[OpSpec]:
    """The spec class of op `name` (InputError naming the installed ops when there is none)."""
    return load_registry().get_op(name)


def op_names() -> list[str]:
    return list(load_registry().ops)
