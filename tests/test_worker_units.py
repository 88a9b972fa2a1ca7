"""Fast checks of the worker's fault logic (no processes): exit status, the stall watchdog's decisions, limits."""

from __future__ import annotations

import time

import pytest
from studio_workers.app import celery_config, remote_control_enabled
from studio_workers.faults import EXIT_STALLED, Liveness, exit_status, stall_seconds
from studio_workers.jobproc import hard_limit, job_process_enabled

from studio.config import load_settings


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
    from studio_workers.jobs import one_line
    from studio_workers.testing import ToyBackend

    from studio.errors import NotFound

    with pytest.raises(NotFound) as info:
        ToyBackend.load("x" * 5000, None)
    message = one_line(info.value)
    assert len(message) < 300 and "\n" not in message and "5000 characters" in message
    assert len(one_line(RuntimeError("boom\n" + "y" * 10_000))) < 300
