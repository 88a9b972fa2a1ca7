"""Worker faults with real worker processes and a real Redis: malformed envelopes, remote-control broadcasts, one
guilty job in a micro-batch, a backend that hangs or ends its process, and a stalled consumer."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from studio.queue.testing import QueueHarness

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS_URL = "redis://127.0.0.1:6379/12"
TIME_LIMIT_S = 4
ARGS = base64.b64encode(b'[["abc"], {}, {}]').decode()
INJECT = """
from celery.signals import worker_ready


@worker_ready.connect
def _inject(sender=None, **_):
    def boom():
        raise RuntimeError("injected unrecoverable error")

    sender.hub.call_soon(boom)
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    with QueueHarness.running(tmp_path_factory.mktemp("worker-faults"), broker_url=REDIS_URL,
                              job_time_limit_s=TIME_LIMIT_S, max_retries=1) as h:
        yield h


def _sample(seed: int = 0, n: int = 1, **options: object) -> dict:
    return {"op": "sample", "backend": "toy", "n": n, "seed": seed, "options": options}


def _serves(harness: QueueHarness, seed: int) -> None:
    client = harness.client()
    job = client.submit(_sample(seed=seed, delay_ms=seed % 7 + 1))
    assert client.wait(job, timeout=60)["state"] == "SUCCEEDED"
    assert harness.worker.poll() is None


def _envelope(body: str, **headers: object) -> str:
    tag = str(uuid.uuid4())
    return json.dumps({"body": body, "content-encoding": "utf-8", "content-type": "application/json",
                       "headers": {"lang": "py", "task": "studio.run_job", "id": tag, **headers},
                       "properties": {"delivery_tag": tag, "body_encoding": "base64", "priority": 0,
                                      "delivery_info": {"exchange": "", "routing_key": "x"}}})


def test_malformed_envelopes_are_rejected_and_logged_and_the_worker_goes_on(harness: QueueHarness) -> None:
    import redis

    key = f"{harness.prefix}:{harness.prefix}.any.toy"
    bad = [b"not json", b"[1, 2, 3]", b'"a string"', b"\xff\xfe not utf-8",
           _envelope("%%% not base64 %%%").encode(),
           json.dumps({"body": "e30=", "headers": {}}).encode(),  # no properties
           _envelope(base64.b64encode(b"not json either").decode()).encode(),  # Celery's own decode error
           json.dumps({"body": 5, "properties": {"delivery_tag": "t"}}).encode(),
           # a well-formed envelope whose Celery headers break the task handler
           _envelope(ARGS, timelimit="x").encode(), _envelope(ARGS, timelimit=[1]).encode(),
           _envelope(ARGS, task=["x"]).encode()]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for item in bad:
            client.lpush(key, item)
    finally:
        client.close()
    _serves(harness, seed=101)
    log = harness.worker_log(harness.worker)
    assert log.count("rejected a malformed message") == 10, log[-3000:]
    assert "Unrecoverable error" not in log


def test_remote_control_shutdown_broadcast_is_ignored(harness: QueueHarness) -> None:
    from studio.queue.app import make_app
    from studio.queue.broker import resolve_broker_url

    app = make_app(harness.settings, resolve_broker_url(harness.settings))
    try:
        app.control.broadcast("shutdown")  # a plain JSON message on the broadcast exchange
        app.control.shutdown()
    finally:
        app.close()
    time.sleep(2)
    _serves(harness, seed=102)


def test_one_guilty_seed_fails_only_its_own_job_in_a_micro_batch(harness: QueueHarness) -> None:
    client = harness.client()
    blocker = client.submit(_sample(seed=500, n=10, delay_ms=150))  # keeps the worker busy while the batch queues
    deadline = time.monotonic() + 30
    while client.status(blocker)["state"] != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.02)
    jobs = {seed: client.submit(_sample(seed=seed, n=3, fail_seed=12)) for seed in (0, 10, 20, 30)}  # 10: 10..12
    assert client.wait(blocker, timeout=60)["state"] == "SUCCEEDED"
    finals = {seed: client.wait(job, timeout=60) for seed, job in jobs.items()}
    assert any(f["batch_leader"] for f in finals.values()), "the four jobs should have run as one micro-batch"
    assert finals[10]["state"] == "FAILED" and finals[10]["error"] == "RuntimeError: toy refuses seed 12"
    for seed in (0, 20, 30):
        assert finals[seed]["state"] == "SUCCEEDED", finals[seed]
        assert finals[seed]["metrics"]["seeds"] == [seed, seed + 1, seed + 2]
    _serves(harness, seed=103)


def test_hanging_backend_is_killed_at_its_hard_limit_and_the_worker_serves_again(harness: QueueHarness) -> None:
    client = harness.client()
    job = client.submit(_sample(seed=7, hang=True))
    final = client.wait(job, timeout=60)
    assert final["state"] == "FAILED", final
    assert final["error"].startswith(f"time limit of {TIME_LIMIT_S} s exceeded"), final["error"]
    assert "\n" not in final["error"] and final["attempts"] == 1
    _serves(harness, seed=104)


def test_backend_that_exits_its_process_fails_after_bounded_retries(harness: QueueHarness) -> None:
    client = harness.client()
    job = client.submit(_sample(seed=8, exit=3))
    final = client.wait(job, timeout=90)
    assert final["state"] == "FAILED", final
    assert final["attempts"] == final["max_attempts"] == 2
    assert "the job process died (exit status 3)" in final["error"] and "gave up" in final["error"]
    assert sum(e["kind"] == "retry" for e in final["events"]) == 1
    _serves(harness, seed=105)


def test_stalled_worker_is_shown_and_restarts_its_consumer(harness: QueueHarness) -> None:
    """A QUEUED job whose message the broker lost: the idle worker receives nothing while it waits."""
    from studio.queue.jobstore import JobStore, NewJob

    with QueueHarness.running(harness.root / "stall", broker_url=REDIS_URL, stall_s=2) as h:
        worker = h.worker
        store = JobStore.from_settings(h.settings)
        spec = h.client().validate(_sample(seed=9))
        orphan = uuid.uuid4().hex[:12]
        store.create(NewJob(id=orphan, spec=spec, priority=5, queue=f"{h.prefix}.any.toy", max_attempts=2,
                            time_limit_s=60))  # recorded, never published
        deadline = time.monotonic() + 30
        out = ""
        while "STALLED" not in out and time.monotonic() < deadline:
            time.sleep(0.5)
            out = subprocess.run([sys.executable, "-m", "studio", "workers"], capture_output=True, text=True,
                                 env={**os.environ, **h.env}, timeout=60).stdout
        assert "STALLED" in out, out
        assert "restarting the broker consumer" in h.worker_log(worker)
        client = h.client()
        client.cancel(orphan)
        job = client.submit(_sample(seed=10))  # the restarted consumer still serves
        assert client.wait(job, timeout=30)["state"] == "SUCCEEDED"
        assert worker.poll() is None


def test_worker_never_exits_0_on_an_unrecoverable_error(harness: QueueHarness, tmp_path) -> None:
    """Celery stops on an error raised in its event loop ("Unrecoverable error"): the status must say so (it used
    to be 0, so `restart: on-failure` never brought the worker back)."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(INJECT)
    path = os.pathsep.join([str(inject), harness.env["PYTHONPATH"]])
    proc = subprocess.run([sys.executable, "-m", "studio.queue", "--loglevel", "INFO"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **harness.env, "PYTHONPATH": path})
    assert "injected unrecoverable error" in proc.stdout + proc.stderr
    assert proc.returncode != 0
