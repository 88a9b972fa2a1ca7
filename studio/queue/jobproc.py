"""Jobs run in a job process: a child of the worker that the worker can kill.

A backend that never returns and never reports progress (so the time limit checked at progress steps never
fires), or that ends its own process (`os._exit`, a crash in native code), must not take the worker with it.
With the solo pool (the default), the task body hands each job id to one long-lived child process, spawned (not
forked: CUDA-safe), which keeps the model cache warm and runs `run_job` exactly as the worker would, leases and
progress included. The child reports what it claimed and how the job ended. The worker:

- kills the child at the job's hard limit (its time limit plus a grace, `hard_limit`) and records the claimed
  jobs FAILED with a one-line message;
- when the child dies mid-job, puts its jobs back in the queue, bounded by their attempts: the job that kills its
  process ends FAILED after its retries, with a message saying so;
- starts a fresh child for the next job (a child that cannot even start twice in a row stops the worker with a
  non-zero status, so its supervisor sees it).

Per job this costs two small pipe messages. STUDIO_JOB_PROCESS=0 runs jobs in the worker process itself (then
only the cooperative time limit holds). The prefork pool keeps Celery's own hard time limit instead.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from studio.queue.jobstore import FAILED, QUEUED, Ending

if TYPE_CHECKING:
    from celery import Celery

    from studio.config import Settings
    from studio.queue.jobs import WorkerContext

log = logging.getLogger("studio.worker")
POLL_S = 0.5
MAX_FAILED_STARTS = 2


def hard_limit(time_limit_s: float) -> float:
    """Seconds after which a job that never came back is killed: its time limit plus a grace."""
    return time_limit_s + min(20.0, 2.0 + 0.05 * time_limit_s)


def job_process_enabled(settings: Settings) -> bool:
    """Whether jobs run in a killable job process (STUDIO_JOB_PROCESS, default 1; 0 runs them in the worker)."""
    return bool(settings.job_process)


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent_pid:  # the worker is gone: so is the job (its lease expires and it is reissued)
            os._exit(0)


def _child_main(conn: Any, settings: Any, broker_url: str, parent_pid: int, loglevel: str) -> None:
    """The job process: warm up, then run job ids sent by the worker until told to stop (or the worker dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are for the worker; it stops us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="studio-parent-watch", daemon=True).start()
    logging.basicConfig(level=getattr(logging, loglevel.upper(), logging.WARNING),
                        format="[%(asctime)s: %(levelname)s/JobProcess-%(process)d] %(message)s")
    from studio.queue.app import make_app
    from studio.queue.jobs import context_for, one_line, run_job

    app = make_app(settings, broker_url)
    ctx = context_for(app)
    _ = ctx.runtime.worker_device  # import torch and set its threads now, not at the first job
    conn.send(("ready", ctx.runtime.loaded()))

    def claimed(owner: str, ids: list[str], limit: float) -> None:
        conn.send(("claimed", owner, ids, limit))

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if not msg or msg[0] != "run":
            return
        try:
            result = run_job(app, msg[1], on_claimed=claimed)
        except Exception as exc:  # the store or broker failed around the job: the worker decides what follows
            log.error("job %s could not run", msg[1], exc_info=True)
            result = {"job": msg[1], "state": "error", "error": one_line(exc)}
        conn.send(("done", result, ctx.runtime.loaded()))


class JobProcess:
    """The worker's job process: started ahead of the first job, replaced when it dies or is killed."""

    def __init__(self, app: Celery, loglevel: str = "WARNING") -> None:
        self.app = app
        self.loglevel = loglevel
        self.proc: Any = None
        self.conn: Any = None
        self.ready = False
        self.loaded: list[dict] = []  # the child's warm models, for the worker's advertisement
        self.failed_starts = 0
        self.lock = threading.Lock()

    def start(self) -> None:
        mp = multiprocessing.get_context("spawn")
        parent, child = mp.Pipe()
        self.proc = mp.Process(target=_child_main, name="studio-job-process", daemon=True,
                               args=(child, self.app.studio_settings, self.app.conf.broker_url, os.getpid(),
                                     self.loglevel))
        self.proc.start()
        child.close()
        self.conn, self.ready = parent, False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def kill(self) -> int | None:
        """Kill the child (if alive) and forget it; its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return proc.exitcode

    def stop(self) -> None:
        """Ask the child to exit (between jobs), then make sure it did."""
        if self.alive():
            try:
                self.conn.send(("stop",))
                self.proc.join(5)
            except (OSError, ValueError):
                pass
        self.kill()

    def run(self, job_id: str, ctx: WorkerContext) -> dict:
        """Run one job id in the child; every outcome, including a hang or a crash, ends up in the job store."""
        if not self.alive():
            self.kill()
            self.start()
        try:
            self.conn.send(("run", job_id))
        except OSError:
            return self._died(job_id, ctx, None)
        claimed: tuple[str, list[str], float] | None = None
        deadline: float | None = None
        while True:
            wait = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
            try:
                msg = self.conn.recv() if self.conn.poll(wait) else None
            except (EOFError, OSError):
                return self._died(job_id, ctx, claimed)
            if msg is not None:
                if msg[0] == "ready":
                    self.ready, self.failed_starts, self.loaded = True, 0, msg[1]
                elif msg[0] == "claimed":
                    claimed = (msg[1], msg[2], float(msg[3]))
                    ctx.current[:] = msg[2]
                    deadline = time.monotonic() + hard_limit(claimed[2])
                elif msg[0] == "done":
                    self.loaded = msg[2]
                    ctx.current[:] = []
                    return msg[1]
                continue
            if not self.alive():
                return self._died(job_id, ctx, claimed)
            if deadline is not None and claimed is not None and time.monotonic() > deadline:
                return self._overran(job_id, ctx, claimed)

    def _overran(self, job_id: str, ctx: WorkerContext, claimed: tuple[str, list[str], float]) -> dict:
        owner, ids, limit = claimed
        self.kill()
        ctx.current[:] = []
        why = (f"time limit of {limit:.0f} s exceeded: the job never stopped at a progress step, so its process "
               "was killed")
        ended = ctx.store.finish_many(owner, [Ending(i, FAILED, error=why, message=why) for i in ids])
        log.error("job %s: %s", ",".join(ids), why)
        ctx.announce(sorted(ended))
        return {"job": job_id, "state": FAILED, "error": why}

    def _died(self, job_id: str, ctx: WorkerContext, claimed: tuple[str, list[str], float] | None) -> dict:
        from studio.queue.faults import EXIT_FAILURE, LIVENESS

        was_ready = self.ready
        code = self.kill()
        ctx.current[:] = []
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        why = f"the job process died ({how})"
        if claimed is not None:
            owner, ids, _ = claimed
            for i in ids:  # bounded: release() fails the job once its attempts are used up
                requeued = ctx.store.release(i, owner, why)
                if requeued is not None:
                    ctx.publish(requeued.id, requeued.queue, requeued.priority)
            log.error("job %s: %s; the worker goes on with a new job process", ",".join(ids), why)
            return {"job": job_id, "state": "job process died", "error": why}
        # Nothing was claimed: the job is still QUEUED (or claimed unheard: its lease expires and it is reissued).
        try:
            if ctx.store.state(job_id) == QUEUED:
                job = ctx.store.get(job_id, events=False, preview=False)
                ctx.publish(job_id, job["queue"], job["priority"])
        except Exception:
            log.warning("job %s: could not requeue it", job_id, exc_info=True)
        if not was_ready:
            self.failed_starts += 1
            if self.failed_starts >= MAX_FAILED_STARTS:
                LIVENESS.request_exit(EXIT_FAILURE, f"the job process cannot start ({how})")
        log.error("%s before it ran job %s", why, job_id)
        return {"job": job_id, "state": "job process died", "error": why}


_runner: JobProcess | None = None
_runner_pid: int | None = None


def enable(app: Celery, loglevel: str = "WARNING") -> JobProcess:
    """Run this process's jobs in a job process (started now, so it warms up while the worker connects)."""
    global _runner, _runner_pid
    _runner, _runner_pid = JobProcess(app, loglevel), os.getpid()
    _runner.start()
    return _runner


def current() -> JobProcess | None:
    """The job process of this worker process (None in a prefork child or with job processes off)."""
    return _runner if _runner_pid == os.getpid() else None


def dispatch(app: Celery, job_id: Any) -> dict:
    """The task body: run the job in the job process when there is one, else here."""
    from studio.queue.jobs import context_for, run_job
    from studio.queue.webhooks import job_ended

    runner = current()
    try:
        if runner is None or not isinstance(job_id, str):
            return run_job(app, job_id)
        with runner.lock:
            return runner.run(job_id, context_for(app))
    finally:
        job_ended(context_for(app))  # its delivery thread sends the webhooks of jobs that ended (never blocks)


__all__ = ["JobProcess", "current", "dispatch", "enable", "hard_limit", "job_process_enabled"]
