"""The worker's runtime: device and dtype choice, an LRU cache of loaded models under a memory budget, and the
warm-up a worker does at start (its preloaded models: see studio.queue.warmup)."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from studio.config import Settings
from studio.errors import InputError
from studio.executor import Runtime
from studio.queue.warmup import Warmup, inherited_plan

if TYPE_CHECKING:
    from studio.contract import Backend

log = logging.getLogger("studio.worker")


def worker_device(settings: Settings) -> str:
    """STUDIO_DEVICE, where `auto` means cuda when a GPU is present, else cpu."""
    if settings.device != "auto":
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_bytes(backend: Backend) -> int:
    """Bytes of parameters and buffers a loaded backend holds (its own `memory_bytes()` when it has one)."""
    own = getattr(backend, "memory_bytes", None)
    if callable(own):
        return int(own())
    import torch

    seen: set[int] = set()
    total = 0

    def visit(obj: object, depth: int) -> None:
        nonlocal total
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
        elif isinstance(obj, torch.Tensor):
            total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v, depth + 1)
        elif hasattr(obj, "components") and isinstance(obj.components, dict):  # diffusers pipelines
            visit(obj.components, depth + 1)

    for value in vars(backend).values():
        visit(value, 0)
    return total


class WorkerRuntime(Runtime):
    """Loads each (backend, model) once and keeps it warm; evicts the least recently used over the budget.

    The budget is STUDIO_MODEL_CACHE_MB. The model in use is never evicted, even when it alone exceeds it.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.budget_bytes = max(0, settings.model_cache_mb) * 2**20
        self._cache: OrderedDict[tuple[str, str | None, str | None], tuple[Backend, int]] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[tuple[str, str | None, str | None], threading.Event] = {}
        self._defaults: dict[str, str] = {}  # backend -> the default model preloaded for it (jobs naming none)
        self._device: str | None = None
        self.loads = 0
        self.evictions = 0
        self.warmup: dict = {"plan": None, "done": False, "preloaded": [], "errors": []}
        self._warmup_thread: threading.Thread | None = None
        plan = inherited_plan()  # a job process (or prefork child) of a worker that preloads: do it here
        if plan is not None:
            self.start_warmup(plan)

    @property
    def worker_device(self) -> str:
        if self._device is None:
            self._device = worker_device(self.settings)
            if self.settings.torch_threads > 0:
                import torch

                torch.set_num_threads(self.settings.torch_threads)
        return self._device

    def device(self) -> tuple[str, str]:
        dtype = self.settings.dtype if self.settings.dtype != "auto" else "float32"
        return self.worker_device, dtype

    def device_for(self, devices: frozenset[str], name: str) -> tuple[str, str]:
        """This worker's device if the backend runs there, else the CPU if it can, else an error."""
        device, dtype = self.device()
        kind = device.split(":")[0]
        if kind in devices:
            return device, dtype
        if "cpu" in devices:
            return "cpu", dtype
        raise InputError(f"backend {name!r} runs only on {', '.join(sorted(devices))}; this worker has {device}")

    def get_backend(self, name: str, model: str | None, why: str = "a job") -> Backend:
        """The loaded backend for (name, model), loading it on a miss. A job that names no model gets the default
        model preloaded for the backend. One load per model at a time: a second caller waits for it, while loads
        of other models go ahead (a preload never holds up a job on another backend)."""
        if model is None and name in self._defaults:
            model = self._defaults[name]
        key = self.cache_key(name, model)
        while True:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    return hit[0]
                pending = self._loading.get(key)
                if pending is None:
                    self._loading[key] = threading.Event()
                    break
            pending.wait()  # loaded by another thread (or it failed: then this caller tries, and sees the error)
        try:
            from studio.registry import get_backend_class

            started = time.perf_counter()
            cls = get_backend_class(name)
            device, dtype = self.device_for(frozenset(cls.devices), name)
            backend = self.load_backend(cls, model, device, dtype)  # fetches a registered model first
            size = model_bytes(backend)
            log.info("loaded %s/%s on %s in %.2f s (for %s)", name, backend.model.name, device,
                     time.perf_counter() - started, why)
            with self._lock:
                self.loads += 1
                self._make_room(size)
                self._cache[key] = (backend, size)
            return backend
        finally:
            with self._lock:
                self._loading.pop(key).set()

    def start_warmup(self, plan: Warmup) -> threading.Thread | None:
        """Load the plan's models in a background thread (this process takes jobs meanwhile; a job that needs a
        model being preloaded waits for that load instead of starting its own). `warmup` tells how it went."""
        if not plan.models or self._warmup_thread is not None:
            self.warmup.update(plan=plan.to_dict(), done=True)
            return None
        self.warmup["plan"] = plan.to_dict()
        self._defaults.update(plan.defaults)  # jobs naming no model wait for the preload of the default one
        thread = threading.Thread(target=self._preload, args=(plan,), name="studio-preload", daemon=True)
        self._warmup_thread = thread
        thread.start()
        return thread

    def _preload(self, plan: Warmup) -> None:
        for name, model in plan.models:
            started = time.perf_counter()
            try:
                backend = self.get_backend(name, model, why="preload")
            except Exception as exc:  # a model that cannot load fails its jobs with the reason, not the worker
                log.warning("could not preload %s/%s: %s", name, model, exc)
                self.warmup["errors"].append({"backend": name, "model": model, "error": str(exc)[:300]})
                continue
            self.warmup["preloaded"].append({"backend": name, "model": backend.model.name,
                                             "seconds": round(time.perf_counter() - started, 3)})
        self.warmup["done"] = True

    def wait_warmup(self, timeout: float | None = None) -> bool:
        """Block until the preload has ended (True), or `timeout` seconds passed (False)."""
        thread = self._warmup_thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _make_room(self, incoming: int) -> None:
        freed = False
        while self._cache and self.cached_bytes() + incoming > self.budget_bytes:
            self._cache.popitem(last=False)
            self.evictions += 1
            freed = True
        if freed:
            self._release_memory()

    def cached_bytes(self) -> int:
        return sum(size for _, size in self._cache.values())

    def evict_all(self) -> None:
        """Drop every cached model (after an out-of-memory error, say)."""
        with self._lock:
            self._cache.clear()
            self._release_memory()

    @staticmethod
    def _release_memory() -> None:
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def loaded(self) -> list[dict]:
        """What is warm now: backend, model, device and size, least recently used first (no lock: a model
        being loaded must not hold up the worker's advertisement)."""
        entries = list(self._cache.values())
        return [{"backend": b.name, "model": b.model.name, "device": b.device, "dtype": b.dtype,
                 "mb": round(size / 2**20, 2)} for b, size in entries]


__all__ = ["WorkerRuntime", "model_bytes", "worker_device"]
