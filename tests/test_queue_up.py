"""`studio up`: the queue survives a broker restart, `up` serves the queued job, and stops what it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from studio.queue.testing import QueueHarness

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_up_restarts_the_embedded_broker_with_its_queue_and_serves_it(tmp_path) -> None:
    from studio.queue.broker import embedded_running

    h = QueueHarness(tmp_path)
    up = None
    try:
        with h.active():
            client = h.client()
            job_id = client.submit({"op": "sample", "backend": "toy", "n": 2, "seed": 3})  # no worker yet
            assert client.status(job_id)["state"] == "QUEUED"
            h.embedded.stop()  # the broker goes down with the job in it...
            h.embedded = None
            assert not embedded_running(h.settings)
            up = subprocess.Popen([sys.executable, "-m", "studio", "up", "--no-ui"], env={**os.environ, **h.env},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
            banner = up.stdout.readline()
            assert banner.startswith("studio up: broker embedded Redis"), banner
            done = client.wait(job_id, timeout=60)  # ...and `studio up` brings it back and serves it
            assert done["state"] == "SUCCEEDED" and done["attempts"] == 1
            assert client.workers() and client.jobs()[0]["id"] == job_id
            worker_pid = client.workers()[0]["pid"]
            t0 = time.monotonic()
            up.send_signal(signal.SIGTERM)
            assert up.wait(30) == 0
            assert "studio up: stopped" in up.stdout.read()
            assert time.monotonic() - t0 < 30
            assert not embedded_running(h.settings)
            with pytest.raises(ProcessLookupError):
                os.kill(worker_pid, 0)
    finally:
        if up is not None and up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        h.close()
