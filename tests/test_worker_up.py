"""`studio up` brings back what dies under it: the embedded broker (SIGKILLed) and the worker (SIGKILLed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from studio.errors import StudioError
from studio.queue.testing import QueueHarness

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _submit_and_wait(client, seed: int, timeout: float = 60.0) -> dict:  # noqa: ANN001 - StudioClient
    deadline = time.monotonic() + timeout
    while True:
        try:
            job = client.submit({"op": "sample", "backend": "toy", "n": 1, "seed": seed})
            break
        except StudioError:  # the broker is not back yet
            if time.monotonic() > deadline:
                raise
            client.close()
            time.sleep(0.2)
    return client.wait(job, timeout=max(5.0, deadline - time.monotonic()))


def _wait_for(predicate, timeout: float = 30.0) -> None:  # noqa: ANN001 - a callable
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_up_restarts_a_dead_embedded_broker_and_a_dead_worker(tmp_path) -> None:
    from studio.queue.broker import broker_dir, embedded_running

    h = QueueHarness(tmp_path)
    up = None
    try:
        with h.active():
            h.embedded.stop()
            h.embedded = None
            log = tmp_path / "up.log"
            with open(log, "w") as fh:
                up = subprocess.Popen([sys.executable, "-m", "studio", "up", "--no-ui"], env={**os.environ, **h.env},
                                      stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            client = h.client()
            assert _submit_and_wait(client, seed=1)["state"] == "SUCCEEDED"

            pid_file = broker_dir(h.settings) / "redis.pid"
            broker_pid = int(pid_file.read_text())
            os.kill(broker_pid, signal.SIGKILL)  # the embedded broker dies
            _wait_for(lambda: pid_file.exists() and int(pid_file.read_text() or 0) not in (0, broker_pid)
                      and embedded_running(h.settings))
            assert _submit_and_wait(client, seed=2)["state"] == "SUCCEEDED"

            worker_pid = client.workers()[0]["pid"]
            os.kill(worker_pid, signal.SIGKILL)  # the worker dies
            _wait_for(lambda: any(w["pid"] != worker_pid for w in client.workers()), timeout=60)
            assert _submit_and_wait(client, seed=3)["state"] == "SUCCEEDED"

            up.send_signal(signal.SIGTERM)
            assert up.wait(30) == 0
            out = log.read_text()
            assert "the embedded broker died; starting it again" in out and "the worker exited" in out
            assert not embedded_running(h.settings)
    finally:
        if up is not None and up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        h.close()
