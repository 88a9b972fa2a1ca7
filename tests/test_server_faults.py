"""Faults of the servers beyond one machine: PostgreSQL connections dropped mid-batch (`pg_terminate_backend`) and
the S3 server restarted mid-batch. Every job still ends SUCCEEDED, or FAILED with a clear one-line message; nothing is
lost (every job reaches a final state) and nothing is duplicated (each SUCCEEDED job has one attempt's artifacts).
"""

from __future__ import annotations

import threading
import time

import pytest

from studio.queue.testing import QueueHarness

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS_URL = "redis://127.0.0.1:6379/13"
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


@pytest.fixture
def harness(tmp_path):
    h = QueueHarness(tmp_path, broker_url=REDIS_URL, stack="server", lease_s=3, batch_max_images=1)
    try:
        with h.active():
            h.start_worker()
            h.start_worker()
            yield h
    finally:
        h.close()


def _specs(n: int) -> list[dict]:
    return [{"op": "sample", "backend": "toy", "n": 2, "seed": 500 + i, "options": {"delay_ms": 40}} for i in range(n)]


def _wait_all(client, ids: list[str], timeout: float = 180) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [client.status(j) for j in ids]
        if all(j["state"] in FINAL for j in jobs):
            return jobs
        time.sleep(0.2)
    stuck = [(j["id"], j["state"], j["message"]) for j in jobs if j["state"] not in FINAL]
    raise AssertionError(f"jobs never ended: {stuck}")


def _check_outcome(client, jobs: list[dict], storage) -> list[dict]:
    """Every job final; failures one clear line; each success has exactly one attempt's artifacts (readable)."""
    for job in jobs:
        assert job["state"] in ("SUCCEEDED", "FAILED"), (job["id"], job["state"], job["message"])
        if job["state"] == "FAILED":
            assert job["error"] and "\n" not in job["error"] and len(job["error"]) < 300, job["error"]
            continue
        keys = [a["key"] for a in job["artifacts"]]
        assert len(keys) == 3 and len({k.rsplit("/", 1)[0] for k in keys}) == 1, keys  # 2 images + grid, 1 attempt
    return [j for j in jobs if j["state"] == "SUCCEEDED"]


def test_dropped_postgres_connections_mid_batch_lose_and_duplicate_nothing(harness: QueueHarness) -> None:
    from studio.storage import storage_for

    client = harness.client()
    ids = [client.submit(s) for s in _specs(30)]
    terminated = []
    stop = threading.Event()

    def drop_connections() -> None:
        while not stop.is_set():
            time.sleep(0.4)
            terminated.append(harness.postgres.terminate_connections())

    dropper = threading.Thread(target=drop_connections, daemon=True)
    dropper.start()
    try:
        jobs = _wait_all(client, ids)
    finally:
        stop.set()
        dropper.join()
    assert sum(terminated) >= 5  # connections of workers and of this client really went away mid-batch
    succeeded = _check_outcome(client, jobs, storage_for(harness.settings))
    assert len(succeeded) == len(ids), [(j["id"], j["error"]) for j in jobs if j["state"] != "SUCCEEDED"]
    for job in succeeded:  # the bytes are there
        assert client.artifact_bytes(job["id"], job["artifacts"][0]["name"])[:8] == b"\x89PNG\r\n\x1a\n"
    client.close()


def test_s3_server_restarted_mid_batch_ends_every_job_cleanly(harness: QueueHarness) -> None:
    from studio.storage import parse_s3_url, storage_for

    client = harness.client()
    ids = [client.submit(s) for s in _specs(24)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(client.status(j)["state"] == "SUCCEEDED" for j in ids) < 3:
        time.sleep(0.05)
    harness.s3.stop()  # moto keeps nothing: its objects and bucket are gone with it
    restarted = time.time()
    time.sleep(2.0)
    harness.s3.start()
    bucket, _ = parse_s3_url(harness.settings.storage_url)
    harness.s3.create_bucket(bucket)  # an operator recreates the empty bucket on the new server
    jobs = _wait_all(client, ids)
    succeeded = _check_outcome(client, jobs, storage_for(harness.settings))
    after = [j for j in succeeded if j["finished"] > restarted + 2.0]
    assert after, "no job finished after the restart"
    for job in after:  # what was uploaded to the new server is there, under the committed attempt
        for artifact in job["artifacts"]:
            assert client.artifact_bytes(job["id"], artifact["name"])
    retried = [j for j in jobs if any(e["kind"] == "retry" for e in client.status(j["id"])["events"])]
    unreachable = [j for j in jobs if j["state"] == "FAILED"]
    for job in unreachable:
        assert "storage" in job["error"], job["error"]
    assert len(succeeded) + len(unreachable) == len(ids)
    assert retried or unreachable  # uploads during the outage failed cleanly and were retried (or gave up)
    for job in retried:
        messages = [e["message"] for e in client.status(job["id"])["events"] if e["kind"] == "retry"]
        assert all("\n" not in m for m in messages) and any("storage" in m for m in messages), messages
    client.close()
