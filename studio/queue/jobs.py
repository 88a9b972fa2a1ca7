"""The job task's body: claim the job (and compatible queued ones), run it through the executor, record the end.

A message carries only a job id. The job store decides whether it runs: a message for a job that is
finished, cancelled, or running under another worker's live lease is acknowledged and does nothing. So
duplicates (a Redis redelivery, a reissue after a lost worker, a micro-batched job's own message) are
harmless, and a job ends with exactly one result.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.errors import Cancelled, StudioError, clip
from studio.queue.broker import broker_kind
from studio.queue.jobstore import CANCELLED, FAILED, SUCCEEDED, Ending, JobStore
from studio.queue.routing import TASK_NAME, broker_priority, task_id
from studio.queue.store import ArtifactStore

if TYPE_CHECKING:
    from celery import Celery

    from studio.config import Settings
    from studio.queue.runtime import WorkerRuntime

log = logging.getLogger("studio.worker")
PROGRESS_WRITE_S = 0.2  # progress rows are written at most this often (and at each phase's first and last step)
CANCEL_CHECK_S = 0.05  # how stale a cancel flag may be at a progress step
PROGRESS_QUIET_S = 0.15  # a job's first progress row is written after this long (short jobs write none)
MAX_ERROR_CHARS = 290  # a FAILED job's message is one line under 300 characters, whatever input it names
UPLOAD_THREADS = 8  # a micro-batch uploads this many jobs' files at once
# a repr with a memory address, e.g. <foo.Bar object at 0x7f3a...>, <function f.<locals>.<lambda> at 0x7f...>
ADDRESS_REPR_RE = re.compile(r"<(?:[^<>\n]|<\w+>){1,200}? at 0x[0-9a-fA-F]+>")
REDIS_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport names priority lists <queue><sep><priority>
WITHDRAW_SCAN = 5000  # messages looked at per priority list when withdrawing batched jobs' messages


class LeaseLost(StudioError):
    """Another worker holds this job now (our lease expired): stop without recording anything."""


class TimeLimitExceeded(StudioError):
    """The job ran past its time limit."""


def worker_id() -> str:
    """This worker's name: STUDIO_WORKER_ID (set by `studio worker`) or host:pid."""
    return os.environ.get("STUDIO_WORKER_ID") or f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class WorkerContext:
    """Per-process state of a worker: settings, stores, the runtime, and how to publish messages."""

    app: Celery
    settings: Settings
    store: JobStore
    artifacts: ArtifactStore
    runtime: WorkerRuntime
    broker: str
    current: list[str] = field(default_factory=list)
    _redis: Any = None

    @property
    def lease_s(self) -> float:
        return float(max(1, self.settings.lease_s))

    def publish(self, job_id: str, queue: str, priority: int) -> None:
        self.app.send_task(TASK_NAME, args=[job_id], queue=queue, priority=broker_priority(priority, self.broker),
                           task_id=task_id(job_id))

    def redis(self):  # noqa: ANN201 - redis.Redis for the broker (Redis brokers only)
        if self._redis is None:
            from studio.queue.broker import redis_client

            self._redis = redis_client(self.app.conf.broker_url, timeout=2.0)
        return self._redis

    def withdraw(self, queue: str, job_ids: list[str]) -> int:
        """Remove the queued messages of jobs that a batch leader claimed, so the worker does not fetch them
        just to find nothing to do. Redis only; best effort: a message it misses is a harmless no-op."""
        if self.broker != "redis" or not job_ids:
            return 0
        wanted = set(job_ids)
        options = self.app.conf.broker_transport_options or {}
        prefix = options.get("global_keyprefix", "")
        keys = [f"{prefix}{queue}"] + [f"{prefix}{queue}{REDIS_PRIORITY_SEP}{p}"
                                       for p in options.get("priority_steps", []) if p]
        removed = 0
        try:
            client = self.redis()
            scan = client.pipeline(transaction=False)
            for key in keys:
                scan.lrange(key, 0, WITHDRAW_SCAN - 1)
            drop = client.pipeline(transaction=False)
            for key, messages in zip(keys, scan.execute(), strict=True):
                for raw in messages:
                    if not any(f'"{j}-'.encode() in raw for j in wanted):
                        continue
                    headers = json.loads(raw).get("headers") or {}
                    named = str(headers.get("id", "")).split("-", 1)[0]
                    if named in wanted:  # one message per claimed job: messages are tokens (fair-share claims),
                        wanted.discard(named)  # so a job with two (a retry's) leaves one for another job
                        drop.lrem(key, 1, raw)
            removed = sum(drop.execute())
        except Exception:
            log.debug("could not withdraw batched messages", exc_info=True)
            self._redis = None
        return removed

    def announce(self, job_ids: list[str]) -> None:
        """Tell waiting clients that these jobs ended (Redis pub/sub; clients also poll, so this may fail)."""
        if self.broker != "redis" or not job_ids:
            return
        try:
            from studio.queue.broker import ended_channel

            pipe = self.redis().pipeline(transaction=False)
            for job_id in job_ids:
                pipe.publish(ended_channel(self.settings.queue_prefix), job_id)
            pipe.execute()
        except Exception:
            log.debug("could not announce the end of %s", job_ids, exc_info=True)
            self._redis = None


_contexts: dict[int, WorkerContext] = {}
_context_lock = threading.Lock()


def context_for(app: Celery) -> WorkerContext:
    """The context of this process for `app` (built on first use, e.g. in each prefork child)."""
    key = id(app)
    with _context_lock:
        ctx = _contexts.get(key)
        if ctx is None or getattr(ctx, "_pid", None) != os.getpid():
            from studio.queue.runtime import WorkerRuntime

            settings = app.studio_settings
            ctx = WorkerContext(app=app, settings=settings, store=JobStore.from_settings(settings),
                                artifacts=ArtifactStore.from_settings(settings), runtime=WorkerRuntime(settings),
                                broker=broker_kind(app.conf.broker_url))
            ctx._pid = os.getpid()  # type: ignore[attr-defined]
            _contexts[key] = ctx
        return ctx


def scrub_reprs(text: str) -> str:
    """`text` without Python object reprs that show memory addresses (`<foo.Bar object at 0x7f...>` -> `<object>`)."""
    return ADDRESS_REPR_RE.sub("<object>", text)


def one_line(exc: BaseException) -> str:
    """An exception as the one-line message a FAILED job shows (no Python reprs; at most MAX_ERROR_CHARS)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not isinstance(exc, StudioError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return clip(scrub_reprs(text), MAX_ERROR_CHARS)


def is_transient(exc: BaseException) -> bool:
    """Errors worth a bounded retry: memory pressure, lost connections, a busy or unreachable database or storage
    (other StudioErrors are the job's own fault: retrying gives the same error)."""
    from studio.db import DatabaseUnavailable
    from studio.storage import StorageUnavailable

    if isinstance(exc, (DatabaseUnavailable, StorageUnavailable)):
        return True
    if isinstance(exc, StudioError):
        return False
    if isinstance(exc, (MemoryError, ConnectionError, TimeoutError)):
        return True
    if "OutOfMemory" in type(exc).__name__ or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def preview_b64(preview: object, size: int = 128) -> str | None:
    """A small PNG (base64) from a progress preview: PIL image, NCHW/CHW tensor in [-1, 1], or PNG bytes."""
    if preview is None:
        return None
    import base64

    from studio import images as imgs

    try:
        if isinstance(preview, (bytes, bytearray)):
            return base64.b64encode(bytes(preview)).decode("ascii")
        if isinstance(preview, str):
            return preview
        if hasattr(preview, "dim"):  # a tensor
            x = preview if preview.dim() == 4 else preview.unsqueeze(0)
            frames = imgs.to_pil(x[:16])
            im = imgs.grid(frames) if len(frames) > 1 else frames[0]
        else:
            im = preview.copy()
        im.thumbnail((size, size))
        return imgs.b64_png(im)
    except Exception:  # a broken preview never stops a job
        log.debug("could not encode a preview", exc_info=True)
        return None


class Execution:
    """One claimed job (or micro-batch) while it runs: lease renewal, progress, ETA, cancel and time limit."""

    def __init__(self, ctx: WorkerContext, owner: str, jobs: list[dict]) -> None:
        self.ctx = ctx
        self.owner = owner
        self.ids = [j["id"] for j in jobs]
        self.held: dict[str, bool] = {i: False for i in self.ids}  # job id -> cancel requested
        self.time_limit_s = time_limit_of(ctx, jobs)
        self.deadline = time.monotonic() + self.time_limit_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_write = 0.0
        self._last_check = time.monotonic()
        self._phase: tuple[str, int] | None = None
        self._started = self._phase_start = time.monotonic()

    def __enter__(self) -> Execution:
        self._thread = threading.Thread(target=self._renew_loop, name="studio-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _renew_loop(self) -> None:
        interval = max(0.2, self.ctx.lease_s / 3)
        while not self._stop.wait(interval):
            try:
                self.held = self.ctx.store.renew(self.owner, self.ctx.lease_s)
            except Exception:  # keep trying; the lease only expires if this keeps failing
                log.warning("could not renew the lease of %s", ",".join(self.ids), exc_info=True)

    def check(self) -> None:
        """Raise if the job must stop here: time limit, lease lost, or cancelled."""
        now = time.monotonic()
        if now > self.deadline:
            raise TimeLimitExceeded(f"time limit of {self.time_limit_s:.0f} s exceeded")
        if now - self._last_check >= CANCEL_CHECK_S:
            self._last_check = now
            self.held = self.ctx.store.held(self.owner)
        if not self.held:
            raise LeaseLost("the job's lease was lost")
        if all(self.held.values()):
            raise Cancelled("cancelled while running")

    def progress(self, step: int, total: int, message: str = "", preview: object = None) -> None:
        """The executor's progress callback: records progress, ETA and previews; raises to stop the job."""
        self.check()
        now = time.monotonic()
        phase = (message, total)
        if phase != self._phase:
            self._phase, self._phase_start = phase, now
        if preview is None:
            if now - self._started < PROGRESS_QUIET_S:
                return
            first_or_last = step <= 1 or step >= total
            if not first_or_last and now - self._last_write < PROGRESS_WRITE_S:
                return
        self._last_write = now
        eta = (now - self._phase_start) / step * (total - step) if step > 0 and total >= step else None
        self.ctx.store.set_progress(self.owner, step, total, message or "running", eta, preview_b64(preview))


def _resumable(spec: dict) -> bool:
    """Whether the spec's op keeps work in a work folder across attempts (its declared `resumable` trait)."""
    from studio.registry import load_registry

    op = load_registry().ops.get(str(spec.get("op")))
    return bool(op is not None and op.resumable)


def _workdir_path(ctx: WorkerContext, job_id: str) -> Path:
    return ctx.settings.cache_path / "work" / job_id


def _workdir(ctx: WorkerContext, job_id: str) -> Path:
    """Scratch space in this worker's cache that a job can resume from (walk frames) when its next attempt runs on
    the same machine; kept across attempts, removed on success."""
    path = _workdir_path(ctx, job_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_job(app: Celery, job_id: Any, on_claimed: Callable[[str, list[str], float], None] | None = None) -> dict:
    """Run the job `job_id` if it is ours to run; every outcome is recorded in the job store.

    `on_claimed(owner, job ids, time limit in s)` is called once the job (and its micro-batch) is claimed: the
    worker process that supervises a job process learns what it runs, and under which lease owner.
    """
    if not isinstance(job_id, str):
        log.error("ignored a message whose job id is %r, not a string", type(job_id).__name__)
        return {"job": None, "skipped": "bad job id"}
    ctx = context_for(app)
    wid = worker_id()
    owner = f"{wid}/{uuid.uuid4().hex[:10]}"
    job, why = ctx.store.claim(job_id, owner, wid, ctx.lease_s)
    if job is None:
        log.info("job %s: nothing to do (%s)", job_id, why)
        return {"job": job_id, "skipped": why}
    batch = [job]
    if job.get("batch_key"):
        followers = ctx.store.claim_batch(job, owner, wid, ctx.lease_s, ctx.settings.batch_max_images)
        batch += followers
        ctx.withdraw(job["queue"], [f["id"] for f in followers])
    ctx.current[:] = [j["id"] for j in batch]
    if on_claimed is not None:
        on_claimed(owner, [j["id"] for j in batch], time_limit_of(ctx, batch))
    try:
        return _run_claimed(ctx, owner, batch)
    finally:
        ctx.current[:] = []
        ctx.announce([j["id"] for j in batch])


def _run_claimed(ctx: WorkerContext, owner: str, batch: list[dict]) -> dict:
    from studio.executor import execute, execute_batch

    started = time.perf_counter()
    ids = [j["id"] for j in batch]
    try:
        with Execution(ctx, owner, batch) as ex:
            if len(batch) == 1:
                spec = batch[0]["spec"]
                workdir = _workdir(ctx, ids[0]) if _resumable(spec) else None
                results: list = [execute(spec, ctx.runtime, ex.progress, workdir, owner=batch[0].get("owner"))]
            else:
                try:
                    results = execute_batch([j["spec"] for j in batch], ctx.runtime, ex.progress)
                except Exception as exc:  # one guilty item must not fail the others: run them one by one
                    if isinstance(exc, (LeaseLost, Cancelled)) or is_transient(exc):
                        raise
                    log.warning("batch %s failed (%s); running its %d jobs one by one", ids[0], one_line(exc),
                                len(batch))
                    results = _one_by_one(ctx, ex, batch, execute)
            held = ctx.store.held(owner)
            # uploads and the commit run while the lease is still renewed: a slow upload cannot lose it
            outcome = _record_results(ctx, owner, batch, results, held)
    except LeaseLost:
        log.warning("job %s: lease lost to another worker; result dropped", ",".join(ids))
        return {"job": ids[0], "state": "lease lost"}
    except Cancelled:
        _end_all(ctx, owner, ids, CANCELLED, None, "cancelled while running")
        return {"job": ids[0], "state": CANCELLED}
    except BaseException as exc:  # every failure is recorded; the worker keeps serving
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return _failed(ctx, owner, batch, exc)
    log.info("job %s (%s, %d in batch) done in %.3f s", ids[0], batch[0]["op"], len(batch),
             time.perf_counter() - started)
    return {"job": ids[0], "state": outcome[ids[0]], "batch": outcome}


def _record_results(ctx: WorkerContext, owner: str, batch: list[dict], results: list, held: dict[str, bool]) -> dict:
    """Upload each result's files under its attempt prefix, then commit every ending with its manifest in one
    lease-checked transaction (a result whose lease was lost meanwhile is removed again: the job has exactly one
    result; an upload that dies half-way leaves an orphan prefix that no record names)."""
    endings, staged = [], {}
    done = [(job, result) for job, result in zip(batch, results, strict=True)
            if job["id"] in held and not held[job["id"]] and not isinstance(result, BaseException)]
    uploads = _upload_all(ctx, done)
    for job, result in zip(batch, results, strict=True):
        if job["id"] not in held:
            continue
        if held[job["id"]]:
            endings.append(Ending(job["id"], CANCELLED, message="cancelled while running"))
            continue
        if isinstance(result, BaseException):  # this job failed on its own (a batch run one by one)
            message = one_line(result)
            endings.append(Ending(job["id"], FAILED, error=message, message=message))
            continue
        prefix, listed = uploads[job["id"]]
        staged[job["id"]] = prefix
        endings.append(Ending(job["id"], SUCCEEDED, metrics=result.metrics, artifacts=listed, staging=prefix,
                              message="done"))
    accepted = ctx.store.finish_many(owner, endings)
    outcome = {}
    for job, result in zip(batch, results, strict=True):
        job_id = job["id"]
        if job_id not in accepted:
            outcome[job_id] = "lease lost"
            if job_id in staged:
                try:
                    ctx.artifacts.discard(staged[job_id])
                except StudioError:  # storage down: collect_orphans removes it later
                    log.warning("job %s: could not remove an uncommitted upload", job_id, exc_info=True)
        elif job_id in staged:
            if _resumable(job["spec"]):
                shutil.rmtree(_workdir_path(ctx, job_id), ignore_errors=True)
            outcome[job_id] = SUCCEEDED
        elif isinstance(result, BaseException):
            outcome[job_id] = FAILED
        else:
            outcome[job_id] = CANCELLED
    return outcome


def _upload_all(ctx: WorkerContext, done: list[tuple[dict, Any]]) -> dict[str, tuple[str, list[dict]]]:
    """Upload the results of a micro-batch, several jobs at once (storage round trips, not the CPU, bound them);
    {job id: (attempt prefix, manifest)}. The first failure is raised once every upload has ended."""
    if len(done) <= 1:
        return {job["id"]: ctx.artifacts.stage(job["id"], result) for job, result in done}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(done)), thread_name_prefix="upload") as pool:
        futures = {job["id"]: pool.submit(ctx.artifacts.stage, job["id"], result) for job, result in done}
    return {job_id: future.result() for job_id, future in futures.items()}


def _one_by_one(ctx: WorkerContext, ex: Execution, batch: list[dict], execute: Callable) -> list:
    """Run each job of a failed micro-batch alone: a result, or the exception that job raised. Lost leases, a
    cancel of every job, the time limit and transient errors still stop the whole batch."""
    results: list = []
    for job in batch:
        ex.check()
        if ex.held.get(job["id"]) is not False:  # cancelled, or no longer ours: recorded from `held` later
            results.append(None)
            continue
        try:
            results.append(execute(job["spec"], ctx.runtime, ex.progress, owner=job.get("owner")))
        except (LeaseLost, Cancelled, TimeLimitExceeded):
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
            log.info("job %s failed on its own: %s", job["id"], one_line(exc))
            results.append(exc)
    return results


def time_limit_of(ctx: WorkerContext, batch: list[dict]) -> float:
    """The time limit of a claimed job or micro-batch (the smallest of its jobs')."""
    return min(float(j.get("time_limit_s") or ctx.settings.job_time_limit_s) for j in batch)


def _failed(ctx: WorkerContext, owner: str, batch: list[dict], exc: BaseException) -> dict:
    from celery.exceptions import SoftTimeLimitExceeded

    ids = [j["id"] for j in batch]
    if isinstance(exc, SoftTimeLimitExceeded):
        exc = TimeLimitExceeded(f"time limit of {ctx.settings.job_time_limit_s} s exceeded")
    message = one_line(exc)
    if is_transient(exc):
        if "memory" in message.lower():
            ctx.runtime.evict_all()
        for job_id in ids:
            requeued = ctx.store.release(job_id, owner, message)
            if requeued is not None:
                ctx.publish(requeued.id, requeued.queue, requeued.priority)
        log.warning("job %s: %s (retrying)", ",".join(ids), message)
        return {"job": ids[0], "state": "retrying", "error": message}
    if not isinstance(exc, StudioError):
        log.error("job %s failed", ",".join(ids), exc_info=exc)
    _end_all(ctx, owner, ids, FAILED, message, message)
    return {"job": ids[0], "state": FAILED, "error": message}


def _end_all(ctx: WorkerContext, owner: str, ids: list[str], state: str, error: str | None, message: str) -> None:
    ctx.store.finish_many(owner, [Ending(job_id, state, error=error, message=message) for job_id in ids])


__all__ = ["Execution", "LeaseLost", "TimeLimitExceeded", "WorkerContext", "context_for", "is_transient",
           "one_line", "preview_b64", "run_job", "scrub_reprs", "worker_id"]
