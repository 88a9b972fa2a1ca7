"""Faults with real worker processes: a SIGKILLed worker, redelivery of a running job, fuzzed job specs."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.errors import StudioError
from studio.queue.testing import QueueHarness

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS_URL = "redis://127.0.0.1:6379/12"


def _wait_running(client, job_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.status(job_id)
        if job["state"] == "RUNNING" and job["step"] >= 1:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never ran: {client.status(job_id)}")


@pytest.fixture(scope="module", params=["embedded", "server"])
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Both stacks: {SQLite + local folder} and {PostgreSQL + S3}."""
    # A short visibility timeout: Redis hands a running job's message to the other worker mid-job.
    h = QueueHarness(tmp_path_factory.mktemp("queue-faults"), broker_url=REDIS_URL, visibility_timeout_s=2,
                     stack=request.param)
    try:
        with h.active():
            h.first = h.start_worker()
            h.second = h.start_worker()
            yield h
    finally:
        h.close()


def test_redelivered_message_of_a_running_job_does_not_run_it_twice(harness: QueueHarness) -> None:
    client = harness.client()
    before = len(harness.trace_lines())
    job_id = client.submit({"op": "sample", "backend": "toy", "n": 30, "options": {"delay_ms": 150}})  # 4.5 s
    done = client.wait(job_id, timeout=60)
    assert done["state"] == "SUCCEEDED" and done["attempts"] == 1, done
    assert len(harness.trace_lines()) - before == 1  # decoded once, though its message was redelivered
    assert harness.first.poll() is None and harness.second.poll() is None


def test_sigkilled_worker_job_finishes_on_another_worker_exactly_once(harness: QueueHarness) -> None:
    client = harness.client()
    before = len(harness.trace_lines())
    job_id = client.submit({"op": "sample", "backend": "toy", "n": 20, "options": {"delay_ms": 100}})
    running = _wait_running(client, job_id)
    victim = next(p for p in (harness.first, harness.second) if str(p.pid) in running["worker"])
    survivor = harness.second if victim is harness.first else harness.first
    harness.kill_worker(victim)  # SIGKILL to its whole process group, mid-job
    done = client.wait(job_id, timeout=60)
    assert done["state"] == "SUCCEEDED", done
    assert done["attempts"] == 2 and str(survivor.pid) in done["worker"]
    assert any(e["kind"] == "retry" and "was lost" in e["message"] for e in done["events"])
    runs = harness.trace_lines()[before:]
    assert [line.split()[0] for line in runs] == [str(victim.pid), str(survivor.pid)]
    from studio.storage import storage_for

    committed = sorted(a["key"] for a in client.result(job_id)["artifacts"])
    assert len(committed) == 21
    stored = sorted(k for k, _ in storage_for(harness.settings).list(f"jobs/{job_id}/"))
    assert stored == committed  # one attempt's files, and no stray upload of the killed attempt
    assert survivor.poll() is None


_names = st.sampled_from(["toy", "toygpu", "nope", "", "TOY"])
_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 80), st.floats(allow_nan=True), st.text(max_size=8),
                    st.lists(st.integers(-2, 5), max_size=3))
_option = st.fixed_dictionaries({}, optional={"delay_ms": st.integers(-1, 5), "fail": st.text(max_size=12),
                                              "bogus": _values})
_source = st.one_of(st.fixed_dictionaries({"seed": st.integers(-1, 2**64)}),
                    st.fixed_dictionaries({"image": st.fixed_dictionaries({}, optional={"png_b64": st.text(max_size=8),
                                                                                       "dataset": _values})}))
_spec = st.one_of(
    st.fixed_dictionaries({"op": st.just("sample"), "backend": _names},
                          optional={"n": _values, "seed": _values, "temperature": _values, "truncation": _values,
                                    "options": _option, "extra": _values}),
    st.fixed_dictionaries({"op": st.just("interpolate"), "backend": _names, "start": _source, "end": _source},
                          optional={"steps": _values, "method": st.sampled_from(["slerp", "lerp", "cubic"])}),
    st.fixed_dictionaries({"op": st.just("traverse"), "backend": _names, "source": _source},
                          optional={"dims": st.lists(st.integers(-3, 12), max_size=4), "low": _values,
                                    "high": _values, "steps": _values}),
    st.fixed_dictionaries({"op": st.sampled_from(["analogy", "walk", "edit", "roundtrip", "nonsense"]),
                           "backend": _names},
                          optional={"a": _source, "b": _source, "c": _source,
                                    "keyframes": st.lists(_source, max_size=3), "vector": st.text(max_size=6),
                                    "bits": _values}),
)


def test_fuzzed_specs_are_rejected_cleanly_and_never_kill_the_worker(harness: QueueHarness) -> None:
    client = harness.client()
    survivor = harness.second if harness.second.poll() is None else harness.first
    accepted: list[str] = []

    @settings(max_examples=120, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_spec, st.integers(0, 9))
    def submit_one(spec: dict, priority: int) -> None:
        try:
            accepted.append(client.submit(spec, priority=priority))
        except StudioError as exc:  # every rejection is one clean line, nothing half-created
            assert str(exc) and "\n" not in str(exc)

    known = len(client.jobs(limit=10000))
    submit_one()
    assert len(client.jobs(limit=10000)) == known + len(accepted)
    assert accepted, "the strategy should produce some valid specs"
    runnable = []
    for job_id in accepted:
        job = client.status(job_id)
        if job["backend"] == "toygpu":
            client.cancel(job_id)  # no GPU worker here: it would wait forever, by design
        else:
            runnable.append(job_id)
    for job_id in runnable:
        final = client.wait(job_id, timeout=120)
        assert final["state"] in ("SUCCEEDED", "FAILED"), final
        if final["state"] == "FAILED":
            assert final["error"] and "\n" not in final["error"]
    assert survivor.poll() is None
    check = client.submit({"op": "sample", "backend": "toy", "n": 1})
    assert client.wait(check, timeout=30)["state"] == "SUCCEEDED"
