"""Workers recover by themselves when their broker restarts mid-batch: the embedded Redis (unix socket) and an
external Redis over TCP. The broker stays down longer than redis-py's retries, so the acks of the jobs that end
meanwhile fail ("Couldn't ack"): the fault that used to leave both workers alive, idle and never fetching again."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from studio.queue.testing import QueueHarness
from studio.ui.testing import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
JOBS = 30
DOWN_S = 6.0  # longer than redis-py's ~3.6 s of retries: acks fail while it is down


class RedisServer:
    """Our own redis-server on a free TCP port (never the shared one at 6379), with append-only persistence."""

    def __init__(self, folder: Path, persistent: bool = True) -> None:
        self.folder = folder
        self.persistent = persistent
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
                                      "--dir", str(self.folder)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SHUTDOWN: it writes its append-only file and exits
            self.proc.wait(10)
        self.proc = None


def _run_batch_through_restart(h: QueueHarness, restart) -> None:  # noqa: ANN001 - a callable
    workers = [h.start_worker(), h.start_worker()]
    client = h.client()
    ids = [client.submit({"op": "sample", "backend": "toy", "n": 1, "seed": i, "options": {"delay_ms": 300}})
           for i in range(JOBS)]
    deadline = time.monotonic() + 30
    while sum(client.status(j)["state"] == "SUCCEEDED" for j in ids) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    restart()  # mid-batch: both workers are running a job
    finals = [client.wait(j, timeout=90) for j in ids]
    states = Counter(f["state"] for f in finals)
    assert states == {"SUCCEEDED": JOBS}, states
    assert all(w.poll() is None for w in workers)
    logs = "".join(h.worker_log(w) for w in workers)
    assert "Couldn't ack" in logs  # the fault really happened (and the workers got over it by themselves)
    check = client.submit({"op": "sample", "backend": "toy", "n": 1, "seed": 999})
    assert client.wait(check, timeout=30)["state"] == "SUCCEEDED"


def test_embedded_broker_restart_mid_batch_all_jobs_finish(tmp_path: Path) -> None:
    from studio.queue.broker import start_embedded

    h = QueueHarness(tmp_path, batch_max_images=1)

    def restart() -> None:
        h.embedded.stop()
        time.sleep(DOWN_S)
        h.embedded = start_embedded(h.settings)

    try:
        with h.active():
            _run_batch_through_restart(h, restart)
    finally:
        h.close()


def test_tcp_redis_restart_mid_batch_all_jobs_finish(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()

    def restart() -> None:
        server.stop()
        time.sleep(DOWN_S)
        server.start()

    h = QueueHarness(tmp_path / "h", broker_url=server.url, batch_max_images=1)
    try:
        with h.active():
            _run_batch_through_restart(h, restart)
    finally:
        h.close()
        server.stop()


def test_a_broker_that_lost_its_queue_still_gets_every_job_done(tmp_path: Path) -> None:
    """A Redis without persistence restarted mid-batch forgets every queued message: the jobs stay QUEUED in the job
    store with no message to run them. The stall watchdog restarts the consumer and, when that does not help,
    publishes their messages again (tokens for the store's claims: nothing runs twice)."""
    server = RedisServer(tmp_path / "redis", persistent=False)
    server.start()
    h = QueueHarness(tmp_path / "h", broker_url=server.url, batch_max_images=1, stall_s=2)
    try:
        with h.active():
            worker = h.start_worker()
            client = h.client()
            ids = [client.submit({"op": "sample", "backend": "toy", "n": 1, "seed": i, "options": {"delay_ms": 200}})
                   for i in range(12)]
            deadline = time.monotonic() + 30
            while sum(client.status(j)["state"] == "SUCCEEDED" for j in ids) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            server.stop()  # every queued message is gone with it
            server.start()
            finals = [client.wait(j, timeout=90) for j in ids]
            assert Counter(f["state"] for f in finals) == {"SUCCEEDED": 12}
            assert all(sum(e["kind"] == "succeeded" for e in f["events"]) == 1 for f in finals)
            assert "published" in h.worker_log(worker) and worker.poll() is None
    finally:
        h.close()
        server.stop()
