"""`studio worker`: a Celery worker process that serves the backends installed here, on this machine's device.

Besides running jobs, every worker keeps a maintenance thread: it advertises the worker (backends, queues,
device, warm models) in the job store, and reaps jobs whose lease expired because their worker died,
putting them back in the queue (bounded by max attempts) — the AI Horde style lease that makes a SIGKILLed
worker's job finish on another worker, exactly once. It is also the stall watchdog (see `faults`): an idle
worker that receives nothing while jobs of its queues wait restarts its broker consumer, and says `stalled`.

With the solo pool (the default) jobs run in a job process that the worker can kill (see `jobproc`). The worker
exits non-zero whenever it stops on an unrecoverable error, so `restart: on-failure` brings it back.

At start a worker warms what its first jobs would otherwise wait for (see `warmup`, STUDIO_PRELOAD): the process
that runs jobs preloads SD's default model in the background, and UMAP's compiled code is filled into the cache
by a low-priority child once the worker consumes. Neither holds up a job; the worker advertises its plan.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from studio.config import Settings, load_settings
from studio.errors import StudioError
from studio.queue import jobproc, warmup, webhooks
from studio.queue.broker import ensure_broker, redacted
from studio.queue.faults import (
    LIVENESS,
    QUEUED_SCAN,
    Liveness,
    exit_status,
    harden_redis_transport,
    oldest_queued,
    running_on,
    stall_seconds,
    watch_acks,
)
from studio.queue.routing import full_queue_names, worker_queues

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

    def __init__(self, ctx: object, worker: str, info: dict, liveness: Liveness | None = None) -> None:
        super().__init__(name="studio-maintenance", daemon=True)
        self.ctx = ctx
        self.worker = worker
        self.info = info
        self.liveness = liveness
        self.stop = threading.Event()

    def watch(self) -> dict:
        """The stall watchdog's verdict, as advertised: {"stalled": bool, "stalled_since": Unix time or None}."""
        live = self.liveness
        if live is None or live.consumer is None:
            return {"stalled": False, "stalled_since": None}
        busy = bool(self.ctx.current)  # type: ignore[attr-defined]  # solo pool: set in this process
        oldest = None
        if not busy and time.monotonic() - live.last_received >= live.stall_s:  # only then read the store
            # prefork children and pool threads never set this process's ctx.current: the store knows what runs here
            busy = running_on(self.ctx.store, self.worker)  # type: ignore[attr-defined]
            if not busy:
                oldest = oldest_queued(self.ctx.store, self.info.get("queues", []))  # type: ignore[attr-defined]
        stalled = live.check(busy, oldest, republish=self.republish)
        return {"stalled": stalled, "stalled_since": live.stalled_since if stalled else None}

    def republish(self, older_than: float) -> int:
        """Publish a message again for each QUEUED job of this worker's queues created before `older_than`."""
        ctx, queues = self.ctx, set(self.info.get("queues", []))
        jobs = [j for j in ctx.store.list("QUEUED", limit=QUEUED_SCAN)  # type: ignore[attr-defined]
                if j["queue"] in queues and j["created"] < older_than]
        for job in jobs:
            ctx.publish(job["id"], job["queue"], job["priority"])  # type: ignore[attr-defined]
        return len(jobs)

    def tick(self) -> None:
        ctx = self.ctx
        current = ctx.current[0] if ctx.current else None  # type: ignore[attr-defined]
        runner = jobproc.current()
        loaded = runner.loaded if runner is not None else ctx.runtime.loaded()  # type: ignore[attr-defined]
        info = {**self.info, "loaded": loaded, **self.watch()}
        ctx.store.worker_seen(self.worker, info, current)  # type: ignore[attr-defined]
        for job in ctx.store.reap():  # type: ignore[attr-defined]
            log.warning("job %s: its worker was lost; reissued", job.id)
            ctx.publish(job.id, job.queue, job.priority)  # type: ignore[attr-defined]
        webhooks.job_ended(ctx)  # jobs also end elsewhere (cancelled while queued, swept, reaped): sweep for them

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
    """Run a worker in this process until it is stopped (SIGTERM/SIGINT: warm shutdown). Raises SystemExit with a
    non-zero status when the worker stopped on an unrecoverable error (never exits 0 then)."""
    from celery.signals import task_received, worker_ready, worker_shutdown

    from studio.queue.app import make_app
    from studio.queue.jobs import context_for

    settings = settings or load_settings()
    if concurrency < 1:
        raise StudioError(f"concurrency must be at least 1, got {concurrency}")
    pool = pool or ("solo" if concurrency == 1 else "prefork")
    if pool not in ("solo", "prefork", "threads"):
        raise StudioError(f"pool must be solo, prefork or threads, got {pool!r}")
    url, embedded = ensure_broker(settings)
    wid = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:4]}"
    os.environ["STUDIO_WORKER_ID"] = wid
    if not settings.allow_downloads:  # a second guard behind the model resolvers: no hub download, ever
        os.environ["HF_HUB_OFFLINE"] = "1"
    ctx = None
    runner = None
    umap_warm: list = []  # the UMAP warm-up child, once started
    code: object = 0
    stopped: list[object] = []
    liveness = LIVENESS
    liveness.configure(stall_seconds(settings))
    harden_redis_transport()
    watch_acks()
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
        plan = warmup.plan_for(settings, info["backends"])
        info["preload"] = [f"{b}/{m}" for b, m in plan.models] + (["umap"] if plan.umap else [])
        maintenance = Maintenance(ctx, wid, info, liveness)
        warmup.hand_down(plan)  # the job process (or each prefork child) preloads the models in its background
        if pool == "solo" and jobproc.job_process_enabled(settings):
            runner = jobproc.enable(app, loglevel)
            info["job_process"] = True
        elif pool != "prefork":  # jobs run in this process
            ctx.runtime.start_warmup(plan)

        def on_ready(sender: object = None, **_: object) -> None:
            liveness.attach(sender)
            if maintenance.ident is None:  # Celery sends it once; never start the thread twice
                maintenance.start()
                if plan.umap:  # consuming already: the warm-up takes idle CPU only
                    umap_warm.append(warmup.start_umap_warmup(settings))

        def on_received(**_: object) -> None:
            liveness.received()

        def on_shutdown(sender: object = None, **_: object) -> None:
            maintenance.stop.set()
            stopped.append(sender)  # the WorkController: its exit code (Celery's start() drops it)

        worker_ready.connect(on_ready, weak=False)
        task_received.connect(on_received, weak=False)
        worker_shutdown.connect(on_shutdown, weak=False)
        node = "studio-" + wid.split(":", 1)[1].replace(":", "-")
        app.start(["--quiet", "worker", "--queues", ",".join(chosen), "--concurrency", str(concurrency),
                   "--pool", pool, "--loglevel", loglevel, "--hostname", f"{node}@%h",
                   "--without-gossip", "--without-mingle"])
        code = getattr(stopped[-1], "exitcode", 0) if stopped else 0
    finally:
        warmup.withdraw()
        for proc in umap_warm:
            warmup.stop(proc)
        if runner is not None:
            runner.stop()
        if ctx is not None:
            try:
                ctx.store.worker_gone(wid)
            except Exception:
                log.debug("could not remove the worker record", exc_info=True)
        if embedded is not None:
            embedded.stop()
    status = exit_status(code, liveness)
    if status:
        raise SystemExit(status)


__all__ = ["Maintenance", "backends_of", "installed_backends", "run_worker"]
