"""The queue over RabbitMQ (STUDIO_BROKER_URL=amqp://...): priorities, failures and cancels with a real worker."""

from __future__ import annotations

import time

import pytest

from studio.queue.testing import QueueHarness

pytestmark = [pytest.mark.integration, pytest.mark.slow]
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def test_rabbitmq_broker_serves_priorities_failures_and_cancels(tmp_path) -> None:
    h = QueueHarness(tmp_path, broker_url=AMQP_URL)
    try:
        with h.active():
            worker = h.start_worker()
            client = h.client()
            blocker = client.submit({"op": "sample", "backend": "toy", "n": 8, "options": {"delay_ms": 100}})
            while client.status(blocker)["state"] != "RUNNING":
                time.sleep(0.02)
            low = [client.submit({"op": "sample", "backend": "toy", "n": 1, "seed": i,
                                  "options": {"delay_ms": i + 1}}, priority=0) for i in range(3)]
            high = client.submit({"op": "sample", "backend": "toy", "n": 1, "options": {"fail": "bad plugin"}},
                                 priority=9)
            cancelled = client.submit({"op": "sample", "backend": "toy", "n": 1, "seed": 50}, priority=0)
            client.cancel(cancelled)
            assert client.wait(high, timeout=60)["error"] == "RuntimeError: bad plugin"
            for job_id in [blocker, *low]:
                assert client.wait(job_id, timeout=60)["state"] == "SUCCEEDED"
            started = {j: client.status(j)["started"] for j in [*low, high]}
            assert started[high] < min(started[j] for j in low)  # RabbitMQ serves 9 first (x-max-priority)
            assert client.status(cancelled)["started"] is None
            assert worker.poll() is None
    finally:
        h.close()
