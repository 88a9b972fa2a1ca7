"""`studio worker`: a Celery worker process that serves the backends installed here, on this machine's device.

Besides running jobs, every worker keeps a maintenance thread: it advertises the worker (backends, queues,
device, warm models) in the job store, and reaps jobs whose lease expired because their worker died,
putting them back in the queue (bounded by max attempts) — the AI Horde style lease that makes a SIGKILLed
worker's job finish on another worker, exactly once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from studio.broker import ensure_broker, redacted
from studio.config import Settings, load_settings
from studio.errors import StudioError
from studio_workers.routing import full_queue_names, worker_queues

log = logging.getLogger("studio.worker")


def installed_backends() -> dict[str, frozenset[str]]:
    """{backend name: devices it runs on} for every backend registered on this machine."""
    from studio.registry import load_registry

    return {name: frozenset(cls.devices) for name, cls in load_registry().backends.items()}


def backends_of(queues: list[str], prefix: str) -> list[str]:
    """Backend names served by queues named `<prefix>.<class>.<backend>`."""
    out = []
    for q in queues:
        parts = q[len(prefix) + 1:].split(".", 1) if q.startswith(prefix + ".") else []
        if len(parts) == 2:
            out.append(parts[1])
    return sorted(set(out))


class Maintenance(threading.Thread):
    """Advertise this worker and reissue jobs of dead workers, every lease_s/3 seconds."""

    def __init__(self, ctx: object, worker: str, info: dict) -> None:
        super().__init__(name="studio-maintenance", daemon=True)
        self.ctx = ctx
        self.worker = worker
        self.info = info
        self.stop = threading.Event()

    def tick(self) -> None:
        ctx = self.ctx
        current = ctx.current[0] if ctx.current else None  # type: ignore[attr-defined]
        ctx.store.worker_seen(self.worker, {**self.info, "loaded": ctx.runtime.loaded()}, current)  # type: ignore
        for job in ctx.store.reap():  # type: ignore[attr-defined]
            log.warning("job %s: its worker was lost; reissued", job.id)
            ctx.publish(job.id, job.queue, job.priority)  # type: ignore[attr-defined]

    def run(self) -> None:
        interval = max(0.2, self.ctx.lease_s / 3)  # type: ignore[attr-defined]
        while True:
            try:
                self.tick()
            except Exception:  # never let maintenance kill the worker
                log.warning("worker maintenance failed", exc_info=True)
            if self.stop.wait(interval):
                return


def run_worker(settings: Settings | None = None, queues: list[str] | None = None, concurrency: int = 1,
               pool: str | None = None, loglevel: str = "WARNING") -> None:
    """Run a worker in this process until it is stopped (SIGTERM/SIGINT: warm shutdown)."""
    from celery.signals import worker_ready, worker_shutdown

    from studio_workers.app import make_app
    from studio_workers.jobs import context_for

    settings = settings or load_settings()
    if concurrency < 1:
        raise StudioError(f"concurrency must be at least 1, got {concurrency}")
    pool = pool or ("solo" if concurrency == 1 else "prefork")
    if pool not in ("solo", "prefork", "threads"):
        raise StudioError(f"pool must be solo, prefork or threads, got {pool!r}")
    url, embedded = ensure_broker(settings)
    wid = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:4]}"
    os.environ["STUDIO_WORKER_ID"] = wid
    ctx = None
    try:
        app = make_app(settings, url)
        ctx = context_for(app)  # loads the executor (torch) now, not at the first job
        device = ctx.runtime.worker_device
        prefix = settings.queue_prefix
        chosen = full_queue_names(prefix, queues) if queues else worker_queues(prefix, device, installed_backends())
        if not chosen:
            raise StudioError(f"no installed backend can run on {device}: nothing to serve (see `studio plugins`)")
        info = {"hostname": socket.gethostname(), "pid": os.getpid(), "device": device,
                "dtype": ctx.runtime.device()[1], "pool": pool, "concurrency": concurrency, "queues": chosen,
                "backends": backends_of(chosen, prefix), "broker": redacted(url)}
        maintenance = Maintenance(ctx, wid, info)

        def on_ready(**_: object) -> None:
            maintenance.start()

        def on_shutdown(**_: object) -> None:
            maintenance.stop.set()

        worker_ready.connect(on_ready, weak=False)
        worker_shutdown.connect(on_shutdown, weak=False)
        node = "studio-" + wid.split(":", 1)[1].replace(":", "-")
        app.worker_main(["--quiet", "worker", "--queues", ",".join(chosen), "--concurrency", str(concurrency),
                         "--pool", pool, "--loglevel", loglevel, "--hostname", f"{node}@%h",
                         "--without-gossip", "--without-mingle"])
    finally:
        if ctx is not None:
            try:
                ctx.store.worker_gone(wid)
            except Exception:
                log.debug("could not remove the worker record", exc_info=True)
        if embedded is not None:
            embedded.stop()


__all__ = ["Maintenance", "backends_of", "installed_backends", "run_worker"]
