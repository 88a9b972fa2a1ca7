"""Fast checks of the worker's fault logic (no processes): exit status, the stall watchdog's decisions, limits."""

from __future__ import annotations

import time

import pytest

from studio.config import load_settings
from studio.queue.app import celery_config, remote_control_enabled
from studio.queue.faults import EXIT_STALLED, Liveness, exit_status, stall_seconds
from studio.queue.jobproc import hard_limit, job_process_enabled


class _Hub:
    """Records what the watchdog schedules in the event loop."""

    def __init__(self) -> None:
        self.calls: list = []

    def call_soon(self, fn, *args) -> None:  # noqa: ANN001
        self.calls.append(fn)


class _Consumer:
    def __init__(self) -> None:
        self.hub = _Hub()


def test_exit_status_is_never_zero_after_an_unrecoverable_error() -> None:
    live = Liveness()
    assert exit_status(None, live) == 0 and exit_status(0, live) == 0
    assert exit_status(1, live) == 1  # Celery's "Unrecoverable error"
    assert exit_status("boom", live) == 1
    live.exit_code = EXIT_STALLED
    assert exit_status(0, live) == EXIT_STALLED


def test_watchdog_restarts_an_idle_silent_consumer_only_when_jobs_wait() -> None:
    live = Liveness(stall_s=5)
    live.attach(_Consumer())
    now = time.time()
    assert not live.check(busy=False, oldest_waiting=now - 60, now=now)  # it received something just now
    live.last_received -= 10
    assert not live.check(busy=True, oldest_waiting=now - 60, now=now)  # running a job
    assert not live.check(busy=False, oldest_waiting=None, now=now)  # nothing waits
    assert not live.check(busy=False, oldest_waiting=now - 1, now=now)  # nothing waits long enough
    assert live.check(busy=False, oldest_waiting=now - 60, now=now)
    assert len(live.consumer.hub.calls) == 1 and live.stalled_since == now
    assert live.check(busy=False, oldest_waiting=now - 60, now=now)  # still stalled; the next restart backs off
    assert len(live.consumer.hub.calls) == 1
    try:
        live.consumer.hub.calls[0]()
    except ConnectionError as exc:  # what makes Celery reconnect
        assert "restarting the consumer" in str(exc)
    else:
        raise AssertionError("the scheduled callback must raise a connection error")
    live.received()
    assert live.stalled_since is None


def test_limits_and_switches() -> None:
    assert hard_limit(4) > 4 and hard_limit(1800) == 1820
    def settings_with(**env: str):  # noqa: ANN202
        return load_settings({"STUDIO_HOME": "/tmp/unused", **{f"STUDIO_{k}": v for k, v in env.items()}})

    settings = settings_with()
    assert job_process_enabled(settings) and not job_process_enabled(settings_with(JOB_PROCESS="0"))
    assert stall_seconds(settings) == 60 and stall_seconds(settings_with(STALL_S="2")) == 2
    assert not remote_control_enabled(settings) and remote_control_enabled(settings_with(REMOTE_CONTROL="1"))
    assert celery_config(settings, "redis://127.0.0.1:6379/0")["worker_enable_remote_control"] is False


def test_a_failed_jobs_message_is_one_short_line_whatever_input_it_names() -> None:
    from studio.errors import NotFound
    from studio.queue.jobs import one_line
    from studio.queue.testing import ToyBackend

    with pytest.raises(NotFound) as info:
        ToyBackend.load("x" * 5000, None)
    message = one_line(info.value)
    assert len(message) < 300 and "\n" not in message and "5000 characters" in message
    assert len(one_line(RuntimeError("boom\n" + "y" * 10_000))) < 300


def test_watchdog_counts_jobs_that_pool_children_run_as_busy(tmp_path) -> None:  # noqa: ANN001
    """Prefork children and pool threads never set the parent's ctx.current: the watchdog must see their RUNNING jobs
    in the job store (worker == this worker) and not call a busy worker stalled."""
    from types import SimpleNamespace

    from studio.queue.jobstore import JobStore, NewJob
    from studio.queue.worker import Maintenance

    store = JobStore(tmp_path / "jobs.sqlite")
    for i in range(2):
        store.create(NewJob(id=f"abcd000{i}", spec={"op": "sample", "backend": "toy", "n": 1, "seed": i},
                            priority=5, queue="t.any.toy", max_attempts=1, time_limit_s=60.0))
    running, _ = store.claim("abcd0000", "w1/child", "w1", 60)  # what a prefork child of worker w1 does
    assert running is not None and running["worker"] == "w1"
    ctx = SimpleNamespace(current=[], store=store)  # the parent process: ctx.current stays empty
    live = Liveness(stall_s=0.01)
    live.attach(_Consumer())
    time.sleep(0.05)  # silent for longer than stall_s, and the other job has waited longer than stall_s
    assert Maintenance(ctx, "w1", {"queues": ["t.any.toy"]}, live).watch() == {"stalled": False,
                                                                                "stalled_since": None}
    assert not live.consumer.hub.calls  # no consumer restart while a child runs a job
    other = Maintenance(ctx, "w2", {"queues": ["t.any.toy"]}, live).watch()  # an idle worker: still watched
    assert other["stalled"] and len(live.consumer.hub.calls) == 1


def test_a_failed_jobs_message_shows_no_python_reprs() -> None:
    from studio.queue.jobs import one_line

    class Thing:
        pass

    message = one_line(RuntimeError(f"cannot use {Thing()!r} with {object()!r} or {len!r}"))
    assert "0x" not in message and " at " not in message
    assert message == "RuntimeError: cannot use <object> with <object> or <built-in function len>"
    cut = one_line(ValueError("x" * 250 + f" {Thing()!r} " * 200))  # scrubbed before it is cut: no half repr
    assert "0x" not in cut and "object at" not in cut and "Thing" not in cut


def _owned_job(job_id: str, owner: str | None, seed: int, key: str | None = "same-key"):  # noqa: ANN202
    from studio.queue.jobstore import NewJob

    return NewJob(id=job_id, spec={"op": "sample", "backend": "toy", "n": 1, "seed": seed}, priority=5,
                  queue="t.any.toy", max_attempts=1, time_limit_s=60.0, batch_key=key, owner=owner)


def test_a_micro_batch_never_mixes_owners(tmp_path) -> None:  # noqa: ANN001
    """The batch key includes the owner, and claim_batch takes only the leader's owner's jobs even when two owners'
    jobs share a key (e.g. queued before the key had the owner): no user learns another user's job id."""
    from studio.queue.jobstore import JobStore
    from studio.queue.routing import batch_key

    spec = {"op": "sample", "backend": "toy", "n": 1, "seed": 0}
    assert batch_key(spec, 64, owner="alice") == batch_key({**spec, "seed": 5}, 64, owner="alice")
    assert batch_key(spec, 64, owner="alice") != batch_key(spec, 64, owner="bob")
    assert batch_key(spec, 64, owner="alice") != batch_key(spec, 64)  # None: the single-user default
    assert batch_key(spec, 64) == batch_key(spec, 64, owner=None)
    store = JobStore(tmp_path / "jobs.sqlite")
    for i, owner in enumerate(["alice", "bob", "alice", None, "bob"]):
        store.create(_owned_job(f"bbbb000{i}", owner, i))
    leader, _ = store.claim("bbbb0000", "w/a", "w", 30)
    assert leader["owner"] == "alice"
    taken = store.claim_batch(leader, "w/a", "w", 30, max_images=8)
    assert [j["id"] for j in taken] == ["bbbb0002"]
    for job_id in ("bbbb0001", "bbbb0003", "bbbb0004"):
        job = store.get(job_id)
        assert job["state"] == "QUEUED" and job["batch_leader"] is None
    bobs, _ = store.claim("bbbb0001", "w/b", "w", 30)
    assert [j["id"] for j in store.claim_batch(bobs, "w/b", "w", 30, max_images=8)] == ["bbbb0004"]
    assert store.claim_batch(store.claim("bbbb0003", "w/n", "w", 30)[0], "w/n", "w", 30, max_images=8) == []


def test_deleting_a_job_after_a_failed_submit_spares_one_that_started(tmp_path) -> None:  # noqa: ANN001
    from studio.queue.jobstore import JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    store.create(_owned_job("cccc0000", None, 0, key=None))
    store.create(_owned_job("cccc0001", None, 1, key=None))
    assert store.claim("cccc0001", "w/x", "w", 30)[0]["id"] == "cccc0001"  # a spare message started it
    assert store.delete("cccc0001") is False
    job = store.get("cccc0001")
    assert job["state"] == "RUNNING" and any(e["kind"] == "started" for e in job["events"])
    assert store.delete("cccc0000") is True
    with pytest.raises(Exception, match="no job"):
        store.get("cccc0000")
