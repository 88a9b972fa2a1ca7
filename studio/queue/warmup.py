"""What a worker warms when it starts, so that its first jobs do not pay for it.

- Models: the default model of the backends named in STUDIO_PRELOAD (default `sd`: the slow one to load) that the
  worker serves, or a `backend:model` named there, are loaded in the background of the process that runs jobs
  (the job process with the solo pool; see studio.queue.runtime). A job needing a model being preloaded waits for
  that load; jobs on other models run meanwhile.
- UMAP: `umap` in STUDIO_PRELOAD (default on) compiles umap's numba code into `<STUDIO_HOME>/cache/numba` in a
  low-priority child process, once per cache (studio.ops.umap_cache), so the first projection loads it instead.

STUDIO_PRELOAD is a comma list: `sd`, `vae:mnist`, `umap`; empty or `none` warms nothing. The worker hands its plan
to its job process (or prefork children) through the environment (STUDIO_WORKER_WARMUP, naming the worker's pid,
so only its own children act on it).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from studio.config import Settings

log = logging.getLogger("studio.worker")
PRELOAD_ENV = "STUDIO_PRELOAD"
DEFAULT_PRELOAD = "sd,umap"
PLAN_ENV = "STUDIO_WORKER_WARMUP"
NICE = 19  # the UMAP warm-up runs on idle CPU only: jobs (and a busy CI) barely notice it


@dataclass(frozen=True)
class Warmup:
    """A worker's warm-up: models to preload as (backend, model), which of them are defaults, and UMAP."""

    models: tuple[tuple[str, str], ...] = ()
    defaults: dict[str, str] = field(default_factory=dict)  # backend -> its default model, when preloaded
    umap: bool = False

    def to_dict(self) -> dict:
        return {"models": [list(m) for m in self.models], "defaults": dict(self.defaults), "umap": self.umap}

    @classmethod
    def from_dict(cls, data: dict) -> Warmup:
        return cls(tuple((str(b), str(m)) for b, m in data.get("models", [])),
                   {str(k): str(v) for k, v in dict(data.get("defaults", {})).items()}, bool(data.get("umap")))


def plan_for(settings: Settings, backends: list[str], spec: str | None = None) -> Warmup:
    """The warm-up for a worker serving `backends`, from `spec` (default: STUDIO_PRELOAD, else DEFAULT_PRELOAD).
    Backends this worker does not serve are skipped; a backend with no usable model preloads nothing."""
    from studio.registry import load_registry

    spec = os.environ.get(PRELOAD_ENV, DEFAULT_PRELOAD) if spec is None else spec
    items = [i.strip() for i in spec.split(",") if i.strip() and i.strip().lower() != "none"]
    registry = load_registry().backends
    models: list[tuple[str, str]] = []
    defaults: dict[str, str] = {}
    umap = False
    for item in items:
        if item.lower() == "umap":
            umap = True
            continue
        name, _, model = item.partition(":")
        if name not in backends or name not in registry:
            log.info("%s: %r is not served by this worker; not preloaded", PRELOAD_ENV, name)
            continue
        default = None
        try:
            default = registry[name].default_model(settings)
        except Exception as exc:  # listing its models failed: its jobs will say why
            log.warning("%s: could not list the models of %r: %s", PRELOAD_ENV, name, exc)
        chosen = model or default
        if chosen and (name, chosen) not in models:
            models.append((name, chosen))
            if chosen == default:
                defaults[name] = chosen
    return Warmup(tuple(models), defaults, umap)


def hand_down(plan: Warmup) -> None:
    """Let this worker's job process (or prefork children), started after this, preload the plan's models."""
    os.environ[PLAN_ENV] = json.dumps({"worker_pid": os.getpid(), **plan.to_dict()})


def withdraw() -> None:
    os.environ.pop(PLAN_ENV, None)


def inherited_plan() -> Warmup | None:
    """The plan handed down by this process's parent worker, or None (not a worker's child, or no plan)."""
    raw = os.environ.get(PLAN_ENV)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        if int(data.get("worker_pid", -1)) != os.getppid():
            return None
        return Warmup.from_dict(data)
    except (ValueError, TypeError, AttributeError):
        return None


def start_umap_warmup(settings: Settings) -> subprocess.Popen | None:
    """Compile UMAP's numba code into the cache in a low-priority child (None: already done, or the cache cannot
    be written). The child is in the worker's process group: it ends with the worker."""
    from studio.ops.umap_cache import configure, is_warm

    folder = configure(settings)
    if folder is None or is_warm(folder):
        return None
    env = {**os.environ, "NUMBA_CACHE_DIR": str(folder), "STUDIO_HOME": str(settings.home), "OMP_NUM_THREADS": "1"}
    env.pop(PLAN_ENV, None)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "studio.ops.umap_cache"], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: os.nice(NICE))  # noqa: PLW1509 - only os.nice, no locks
    except OSError as exc:  # the worker works on without it: the first projection compiles instead
        log.warning("could not start the UMAP warm-up: %s", exc)
        return None
    log.info("warming UMAP's compiled code into %s (pid %d)", folder, proc.pid)
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    """End a UMAP warm-up child that is still running (the worker is stopping)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


__all__ = ["DEFAULT_PRELOAD", "PRELOAD_ENV", "Warmup", "hand_down", "inherited_plan", "plan_for",
           "start_umap_warmup", "stop", "withdraw"]
