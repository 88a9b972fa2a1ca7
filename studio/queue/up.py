"""`studio up`: the whole studio on one machine — the embedded Redis (unless STUDIO_BROKER_URL is set; started
again if it dies), one worker process (restarted if it dies), and the front end (the UI when `studio.ui` is
installed)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from studio.config import Settings
from studio.errors import StudioError
from studio.queue.broker import EmbeddedBroker, embedded_running, ensure_broker, redacted, start_embedded

STOP_GRACE_S = 20.0
BROKER_CHECK_S = 1.0
START_JOIN_S = 15.0
WORKER_FIRST_S = 30.0  # `up` loads the UI once its worker is serving (or after this long)


class WorkerSupervisor(threading.Thread):
    """Runs `python -m studio.queue` and starts it again when it exits unexpectedly (with a backoff)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(name="studio-worker-supervisor", daemon=True)
        self.argv = argv
        self.env = env
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.restarts = 0

    def spawn(self) -> subprocess.Popen:
        self.process = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL)
        return self.process

    def run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            proc = self.process or self.spawn()
            started = time.monotonic()
            code = proc.wait()
            if self.stopping.is_set():
                return
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            sys.stderr.write(f"studio up: the worker exited with status {code}; restarting in {backoff:.0f} s\n")
            self.process = None
            self.restarts += 1
            if self.stopping.wait(backoff):
                return

    def stop(self) -> None:
        self.stopping.set()
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # warm shutdown: the running job finishes (or is redelivered)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class BrokerSupervisor(threading.Thread):
    """Starts the embedded Redis again when it dies (its append-only file keeps the queued messages); the workers
    reconnect by themselves. `handle` is what `stop()` shuts down at the end: the broker this `up` started last."""

    def __init__(self, settings: Settings, handle: EmbeddedBroker) -> None:
        super().__init__(name="studio-broker-supervisor", daemon=True)
        self.settings = settings
        self.handle = handle
        self.stopping = threading.Event()
        self.restarts = 0

    def dead(self, failed_pings: int) -> bool:
        proc = self.handle.process
        if self.handle.owned and proc is not None:
            return proc.poll() is not None  # ours: trust the process, not a slow ping
        return failed_pings >= 2

    def run(self) -> None:
        failed = 0
        while not self.stopping.wait(BROKER_CHECK_S):
            own = self.handle.owned and self.handle.process is not None
            failed = 0 if own or embedded_running(self.settings) else failed + 1
            if not self.dead(failed):
                continue
            sys.stderr.write("studio up: the embedded broker died; starting it again\n")
            try:
                self.handle = start_embedded(self.settings)
                self.restarts += 1
                failed = 0
            except StudioError as exc:
                sys.stderr.write(f"studio up: could not restart the embedded broker: {exc}\n")

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(START_JOIN_S)
        self.handle.stop()


def _wait_for_worker(client: object, supervisor: WorkerSupervisor, timeout: float) -> None:
    """Until the worker advertises itself (or exits, or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = supervisor.process
        if proc is None or proc.poll() is not None:
            return
        if any(w.get("pid") == proc.pid for w in client.workers()):  # type: ignore[attr-defined]
            return
        time.sleep(0.05)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_up(settings: Settings, host: str | None = None, port: int | None = None,
           launch: Callable[..., None] | None = None, concurrency: int = 1, worker: bool = True) -> None:
    """Start broker and worker, then `launch(settings, host, port, client)` (the front end, given by the caller: the
    queue never imports one) when given; block until interrupted; then stop what was started here."""
    from studio.queue.client import StudioClient

    url, embedded = ensure_broker(settings)
    settings = dataclasses.replace(settings, broker_url=url)
    env = {**os.environ, "STUDIO_BROKER_URL": url, "STUDIO_HOME": str(settings.home)}
    supervisor = WorkerSupervisor([sys.executable, "-m", "studio.queue", "--concurrency", str(concurrency)], env)
    client = StudioClient(settings)
    broker = BrokerSupervisor(settings, embedded) if embedded is not None else None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if broker is not None:
            broker.start()
        where = f"embedded Redis at {settings.home / 'broker'}" if embedded is not None else redacted(url)
        if worker:
            proc = supervisor.spawn()
            supervisor.start()
            workers = f"worker pid {proc.pid}"
        else:
            workers = "no worker here"
        from studio.db import database_url
        from studio.db import redacted as redacted_db
        from studio.storage import storage_for

        print(f"studio up: broker {where}; {workers}; records {redacted_db(database_url(settings))}; storage "
              f"{storage_for(settings).url}", flush=True)
        if worker and launch is not None:  # on a small machine the UI's imports would slow the worker: it goes second
            _wait_for_worker(client, supervisor, WORKER_FIRST_S)
        if launch is not None:
            launch(settings, host or settings.ui_host, port or settings.ui_port, client)
        elif not worker:
            raise StudioError("nothing to serve: --no-ui and --no-worker (or no UI installed) leave only the broker")
        else:
            print("studio up: no UI here; submit with `studio submit sample -b vae -n 16`, follow with "
                  "`studio status ID` or `studio jobs` or StudioClient. Ctrl-C stops.", flush=True)
            while supervisor.is_alive():
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        supervisor.stop()
        client.close()
        if broker is not None:
            broker.stop()
        print("studio up: stopped", flush=True)


__all__ = ["BrokerSupervisor", "WorkerSupervisor", "run_up"]
