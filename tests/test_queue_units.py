"""Fast tests of the queue's parts without worker processes: routing, config, job store, artifact store,
runtime cache, client validation, micro-batch execution, the embedded broker."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.config import load_settings
from studio.errors import Cancelled, InputError, NotFound, StudioError
from studio.queue import routing
from studio.queue.jobstore import JobStore, NewJob


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory):
    """The toy backends registered in this process (through a real entry point)."""
    from studio.queue.testing import install_toy_plugin
    from studio.registry import load_registry

    folder = install_toy_plugin(tmp_path_factory.mktemp("toy-plugin"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_PLUGINS", "toy")
        mp.syspath_prepend(str(folder))
        load_registry(refresh=True)
        yield load_registry()
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    load_registry(refresh=True)


@pytest.fixture
def settings_(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STUDIO_BROKER_URL", raising=False)
    return load_settings()


def _store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite")


def _new(job_id: str, n: int = 1, seed: int = 0, priority: int = 5, key: str | None = None,
         max_attempts: int = 3) -> NewJob:
    spec = {"op": "sample", "backend": "toy", "n": n, "seed": seed}
    return NewJob(id=job_id, spec=spec, priority=priority, queue="t.any.toy", max_attempts=max_attempts,
                  time_limit_s=60.0, batch_key=key)


# ----- routing and configuration -----

def test_routing_keeps_gpu_only_backends_off_cpu_workers() -> None:
    backends = {"vae": frozenset({"cpu", "cuda"}), "sd": frozenset({"cuda"}), "cpuonly": frozenset({"cpu"})}
    assert routing.queue_name("s", "sd", backends["sd"]) == "s.gpu.sd"
    assert routing.worker_queues("s", "cpu", backends) == ["s.cpu.cpuonly", "s.any.vae"]
    assert routing.worker_queues("s", "cuda:1", backends) == ["s.cpu.cpuonly", "s.gpu.sd", "s.any.vae"]
    assert routing.full_queue_names("s", ["any.vae", "s.gpu.sd", " "]) == ["s.any.vae", "s.gpu.sd"]


def test_priority_maps_to_each_broker_and_is_checked() -> None:
    assert [routing.broker_priority(p, "redis") for p in (0, 5, 9)] == [9, 4, 0]  # Redis serves 0 first
    assert [routing.broker_priority(p, "amqp") for p in (0, 5, 9)] == [0, 5, 9]
    for bad in (-1, 10, 2.5, True, "5"):
        with pytest.raises(InputError, match="priority"):
            routing.check_priority(bad)


def test_batch_key_ignores_seed_and_count_only() -> None:
    base = {"op": "sample", "backend": "vae", "n": 1, "seed": 0, "temperature": 1.0, "options": {}}
    key = routing.batch_key(base, 64)
    assert key and key == routing.batch_key({**base, "seed": 9, "n": 3}, 64)
    assert key != routing.batch_key({**base, "temperature": 0.5}, 64)
    assert key != routing.batch_key({**base, "options": {"steps": 2}}, 64)
    assert routing.batch_key({**base, "n": 64}, 64) is None
    assert routing.batch_key({**base, "op": "evaluate"}, 64) is None
    assert routing.batch_key(base, 1) is None


def test_celery_config_is_json_only_late_ack_prefetch_one(settings_) -> None:
    from studio.queue.app import celery_config

    conf = celery_config(settings_, "redis://127.0.0.1:6379/3")
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == ["json"] and conf["result_accept_content"] == ["json"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["worker_prefetch_multiplier"] == 1
    assert conf["task_soft_time_limit"] == settings_.job_time_limit_s < conf["task_time_limit"]
    opts = conf["broker_transport_options"]
    assert opts["priority_steps"] == list(range(10))
    assert opts["visibility_timeout"] == settings_.visibility_timeout_s
    assert opts["global_keyprefix"] == f"{settings_.queue_prefix}:"
    amqp = celery_config(settings_, "amqp://guest:guest@127.0.0.1:5672//")
    assert amqp["task_queue_max_priority"] == 9 and "broker_transport_options" not in amqp
    with pytest.raises(InputError, match="not a Redis or RabbitMQ URL"):
        celery_config(settings_, "sqlite:///x.db")


def test_new_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))
    monkeypatch.setenv("STUDIO_LEASE_S", "7")
    monkeypatch.setenv("STUDIO_QUEUE_PREFIX", "abc")
    monkeypatch.setenv("STUDIO_BATCH_MAX_IMAGES", "8")
    s = load_settings()
    assert (s.lease_s, s.queue_prefix, s.batch_max_images, s.visibility_timeout_s) == (7, "abc", 8, 300)


# ----- the job store -----

def test_claim_lease_and_finish_only_by_the_holder(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create(_new("aaaa0001"))
    job, why = store.claim("aaaa0001", "w1/x", "w1", lease_s=30)
    assert job["state"] == "RUNNING" and job["attempts"] == 1 and why == ""
    assert store.claim("aaaa0001", "w2/y", "w2", lease_s=30) == (None, "running elsewhere under a live lease")
    assert not store.finish("aaaa0001", "w2/y", "SUCCEEDED")
    assert store.renew("w1/x", 30) == {"aaaa0001": False}
    assert store.finish("aaaa0001", "w1/x", "SUCCEEDED", metrics={"n": 1},
                        artifacts=[{"name": "a.png", "kind": "image", "key": "jobs/aaaa0001/t1/a.png", "size": 3}])
    done = JobStore(tmp_path / "jobs.sqlite").get("aaaa")  # a fresh connection: durable; a prefix resolves
    assert done["state"] == "SUCCEEDED" and done["progress"] == 1.0 and done["metrics"] == {"n": 1}
    assert done["artifacts"] == [{"name": "a.png", "kind": "image", "key": "jobs/aaaa0001/t1/a.png", "size": 3}]
    assert store.claim("aaaa0001", "w3/z", "w3", 30) == (None, "already SUCCEEDED")


def test_expired_lease_is_reissued_then_bounded(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create(_new("bbbb0001", max_attempts=2))
    store.claim("bbbb0001", "w1/x", "w1", lease_s=0.01)
    time.sleep(0.02)
    requeued = store.reap()
    assert [r.id for r in requeued] == ["bbbb0001"]
    job = store.get("bbbb0001")
    assert job["state"] == "QUEUED" and "was lost" in job["message"]
    assert store.claim("bbbb0001", "w2/y", "w2", lease_s=0.01)[0]["attempts"] == 2
    assert not store.finish("bbbb0001", "w1/x", "SUCCEEDED")  # the lost worker cannot finish it any more
    time.sleep(0.02)
    assert store.reap() == []
    job = store.get("bbbb0001")
    assert job["state"] == "FAILED" and "gave up" in job["error"]
    assert [e["kind"] for e in job["events"]].count("retry") == 1


def test_cancel_queued_and_running(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create(_new("cccc0001"))
    store.create(_new("cccc0002"))
    assert store.request_cancel("cccc0001")["state"] == "CANCELLED"
    assert store.claim("cccc0001", "w/x", "w", 30) == (None, "already CANCELLED")
    store.claim("cccc0002", "w/y", "w", 30)
    job = store.request_cancel("cccc0002")
    assert job["state"] == "RUNNING" and job["cancel_requested"]
    assert store.held("w/y") == {"cccc0002": True}


def test_claim_batch_takes_compatible_queued_jobs_up_to_the_image_budget(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for i, n in enumerate([2, 3, 4, 1, 9]):
        store.create(_new(f"dddd000{i}", n=n, seed=i, key="k", priority=5 if i != 3 else 9))
    store.create(_new("dddd0099", n=1, key="other"))
    leader, _ = store.claim("dddd0000", "w/x", "w", 30)
    assert leader["id"] == "dddd0003"  # a message runs the highest-priority job waiting in its queue
    taken = store.claim_batch(leader, "w/x", "w", 30, max_images=8)
    assert [j["id"] for j in taken] == ["dddd0000", "dddd0001"]  # oldest first; 1 + 2 + 3 = 6; 4 won't fit
    assert all(j["state"] == "RUNNING" and j["batch_leader"] == "dddd0003" for j in taken)
    assert store.get("dddd0002")["state"] == "QUEUED" and store.get("dddd0099")["state"] == "QUEUED"


def test_history_lists_newest_first_and_filters(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for i in range(3):
        store.create(_new(f"eeee000{i}"))
    store.request_cancel("eeee0001")
    assert [j["id"] for j in store.list()] == ["eeee0002", "eeee0001", "eeee0000"]
    assert [j["id"] for j in store.list("cancelled")] == ["eeee0001"]
    with pytest.raises(InputError, match="unknown state"):
        store.list("DONE")
    with pytest.raises(InputError, match="not a job id"):
        store.get("../etc")
    with pytest.raises(NotFound):
        store.get("ffff")
    store.create(_new("eeee1000"))
    with pytest.raises(InputError, match="ambiguous"):
        store.get("eeee")


def test_artifact_store_commits_one_attempt_and_collects_orphans(tmp_path: Path) -> None:
    """Each attempt uploads under its own prefix; only the one the lease-checked transaction commits is the result;
    an attempt that lost its lease (or died mid-upload) is an orphan that collect_orphans removes once old enough."""
    from studio.executor import JobResult
    from studio.queue.store import ArtifactStore
    from studio.storage import LocalStorage

    jobs = _store(tmp_path)
    store = ArtifactStore(LocalStorage(tmp_path / "store"), tmp_path / "cache")
    result = JobResult()
    result.add_json("m.json", {"a": 1})
    jobs.create(_new("abcd1234"))
    job, _ = jobs.claim("abcd1234", "w1/x", "w1", 30)
    lost_prefix, _ = store.stage("abcd1234", result)  # an attempt whose lease is lost before it commits
    jobs.reap(now=time.time() + 60)
    job, _ = jobs.claim("abcd1234", "w2/y", "w2", 30)
    assert not jobs.finish("abcd1234", "w1/x", "SUCCEEDED")  # the first attempt cannot commit any more
    prefix, listed = store.stage("abcd1234", result)
    assert prefix != lost_prefix and listed[0]["key"] == f"{prefix}/m.json"
    assert jobs.finish("abcd1234", "w2/y", "SUCCEEDED", artifacts=listed, staging=prefix)
    job = jobs.get("abcd1234")
    assert [a["key"] for a in job["artifacts"]] == [f"{prefix}/m.json"]
    assert store.read(job, "m.json").strip().startswith(b"{")
    assert store.path(job, "m.json").read_text().strip().startswith("{")  # a local copy in the cache
    assert store.collect_orphans(jobs, older_than_s=3600) == 0  # too young: its worker may still be uploading
    assert store.collect_orphans(jobs, older_than_s=-1) == 1  # the lost attempt's file; the committed one stays
    assert [k for k, _ in store.storage.list("jobs/")] == [f"{prefix}/m.json"]
    for bad in ("../x", "", "a/b"):
        with pytest.raises(InputError):
            store.read(job, bad)
    with pytest.raises(NotFound, match="no artifact"):
        store.read(job, "missing.png")
    store.storage.delete(f"{prefix}/m.json")
    with pytest.raises(NotFound, match="missing from storage"):
        store.read(job, "m.json")


# ----- runtime -----

def test_model_cache_evicts_least_recently_used_under_budget(toy, settings_, monkeypatch) -> None:
    import dataclasses

    from studio.queue.runtime import WorkerRuntime, model_bytes
    from studio.queue.testing import ToyBackend

    class Big(ToyBackend):
        def memory_bytes(self) -> int:
            return 600 * 2**20

    loads = []
    monkeypatch.setattr(ToyBackend, "load", classmethod(
        lambda cls, model, settings, device="cpu", dtype="float32": loads.append(model) or Big(
            ToyBackend.available_models(settings)[0], device, dtype)))
    rt = WorkerRuntime(dataclasses.replace(settings_, model_cache_mb=1000))
    a = rt.get_backend("toy", "a")
    assert rt.get_backend("toy", "a") is a and loads == ["a"]  # warm
    rt.get_backend("toy", "b")  # 1200 MB > 1000: a is evicted
    assert [m for m in loads] == ["a", "b"] and rt.evictions == 1
    rt.get_backend("toy", "a")
    assert loads == ["a", "b", "a"] and len(rt.loaded()) == 1
    assert model_bytes(ToyBackend(ToyBackend.available_models(settings_)[0])) == 8 * 64 * 4  # its weight tensor


def test_gpu_only_backend_is_refused_on_a_cpu_runtime(toy, settings_) -> None:
    from studio.queue.runtime import WorkerRuntime

    rt = WorkerRuntime(settings_)
    assert rt.device_for(frozenset({"cpu", "cuda"}), "x") == ("cpu", "float32")
    with pytest.raises(InputError, match="runs only on cuda"):
        rt.device_for(frozenset({"cuda"}), "toygpu")


# ----- executing -----

def test_execute_batch_matches_separate_runs_pixel_for_pixel(toy, settings_) -> None:
    import io

    from PIL import Image

    from studio.executor import Runtime, execute, execute_batch

    specs = [{"op": "sample", "backend": "toy", "n": n, "seed": s, "temperature": 0.8} for n, s in [(1, 5), (3, 0)]]
    runtime = Runtime(settings_)
    batched = execute_batch(specs, runtime)
    for spec, res in zip(specs, batched, strict=True):
        alone = execute(spec, runtime)
        assert [a.name for a in alone.artifacts] == [a.name for a in res.artifacts]
        for x, y in zip(alone.artifacts, res.artifacts, strict=True):
            pixels = [np.asarray(Image.open(io.BytesIO(a.data))) for a in (x, y)]
            assert np.array_equal(*pixels), x.name
        assert res.metrics["seeds"] == alone.metrics["seeds"]
    with pytest.raises(InputError, match="differ in nothing but seed"):
        execute_batch([specs[0], {**specs[1], "temperature": 1.0}], runtime)


def test_progress_callback_stops_on_cancel_time_limit_and_lost_lease(tmp_path: Path, settings_) -> None:
    import dataclasses

    from studio.queue.jobs import Execution, LeaseLost, TimeLimitExceeded, WorkerContext, preview_b64
    from studio.queue.store import ArtifactStore

    store = _store(tmp_path)
    ctx = WorkerContext(app=None, settings=dataclasses.replace(settings_, lease_s=30), store=store,  # type: ignore
                        artifacts=ArtifactStore.from_settings(settings_), runtime=None, broker="redis")  # type: ignore
    store.create(_new("ffff0001"))
    job, _ = store.claim("ffff0001", "w/x", "w", 30)
    ex = Execution(ctx, "w/x", [job])
    ex.progress(1, 4, "decoding")
    assert store.get("ffff0001")["step"] == 0  # a job's first 0.15 s write no progress rows (short jobs: none)
    ex._started -= 1
    ex.progress(1, 4, "decoding")
    assert store.get("ffff0001")["step"] == 1
    store.request_cancel("ffff0001")
    time.sleep(0.06)
    with pytest.raises(Cancelled):
        ex.progress(2, 4, "decoding")
    ex.deadline = time.monotonic() - 1
    with pytest.raises(TimeLimitExceeded, match="time limit"):
        ex.check()
    ex.deadline = time.monotonic() + 60
    store.finish("ffff0001", "w/x", "CANCELLED")
    time.sleep(0.06)
    with pytest.raises(LeaseLost):
        ex.check()
    import torch

    assert preview_b64(torch.zeros(2, 1, 8, 8)) and preview_b64(None) is None


# ----- the client without a broker -----

def test_client_rejects_bad_input_and_creates_nothing(toy, settings_) -> None:
    from studio.queue.broker import BrokerUnavailable
    from studio.queue.client import StudioClient

    client = StudioClient(settings_)
    for spec, match in [({"op": "sample", "backend": "nope"}, "unknown backend"),
                        ({"op": "sample", "backend": "toy", "n": 0}, "n: Input should be greater"),
                        ({"op": "sample", "backend": "toy", "n": 1000}, "limit is"),
                        ({"op": "fly", "backend": "toy"}, "unknown op"),
                        ("sample", "JSON object")]:
        with pytest.raises(StudioError, match=match):
            client.submit(spec)  # type: ignore[arg-type]
    with pytest.raises(BrokerUnavailable, match="no broker is running"):
        client.submit({"op": "sample", "backend": "toy", "n": 1})
    assert client.jobs() == []
    assert client.workers() == []


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(["op", "backend", "n", "seed", "options", "start", "end", "steps", "dims",
                                        "source", "keyframes", "vector", "bits", "limit", "temperature"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-3, 100), st.floats(), st.text(max_size=6),
                                 st.sampled_from(["sample", "walk", "toy", "edit"]),
                                 st.lists(st.integers(0, 3), max_size=2),
                                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))))
def test_fuzzed_specs_are_rejected_with_a_clean_error(toy, spec: dict) -> None:
    from studio.queue.client import StudioClient

    try:
        StudioClient(load_settings()).validate(spec)
    except StudioError as exc:
        assert str(exc) and "\n" not in str(exc)


def test_embedded_broker_persists_across_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    from studio.queue.broker import embedded_running, resolve_broker_url, start_embedded

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / ("h" * 90)))  # a long home: the socket moves to /tmp
    monkeypatch.delenv("STUDIO_BROKER_URL", raising=False)
    s = load_settings()
    first = start_embedded(s)
    try:
        assert first.owned and len(str(first.socket)) <= 100 and resolve_broker_url(s) == first.url
        assert not start_embedded(s).owned  # a second start finds it running
        redis.Redis(unix_socket_path=str(first.socket)).rpush("q", "job")
    finally:
        first.stop()
    assert not embedded_running(s)
    second = start_embedded(s)
    try:
        assert redis.Redis(unix_socket_path=str(second.socket)).lrange("q", 0, -1) == [b"job"]
    finally:
        second.stop()


def test_the_job_store_connection_keeps_its_durability_settings(tmp_path: Path) -> None:
    from studio.db import SCHEMA_VERSION

    store = _store(tmp_path)
    with store.db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: safe with WAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    assert store.schema_version() == SCHEMA_VERSION


def test_job_errors_messages_and_events_stay_one_line_under_300_characters(tmp_path: Path) -> None:
    """Review #11: release and reap append to an error the worker already clipped to 290 characters."""
    store = _store(tmp_path)
    from studio.errors import clip

    worker_error = clip("RuntimeError: " + "x" * 400, 290)  # as the worker clips it
    store.create(_new("dddd0001", max_attempts=1))
    store.claim("dddd0001", "w1/x", "w1", lease_s=30)
    assert store.release("dddd0001", "w1/x", worker_error) is None  # gave up: FAILED, with more text appended
    store.create(_new("dddd0002"))
    store.claim("dddd0002", "w1/x", "w1", lease_s=30)
    assert store.finish("dddd0002", "w1/x", "FAILED", error="line one\nline two " + "y" * 1000)
    for job_id in ("dddd0001", "dddd0002"):
        job = store.get(job_id)
        assert job["state"] == "FAILED" and job["error"].startswith(("RuntimeError: xxx", "line one line two"))
        for text in (job["error"], job["message"], *(e["message"] for e in job["events"])):
            assert len(text) < 300 and "\n" not in text, text
    assert "characters)" in store.get("dddd0002")["error"]  # the full length is still named


def test_a_retry_keeps_its_attempt_count_visible_whatever_the_reason(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create(_new("ffff0001"))
    store.claim("ffff0001", "w/x", "w", 30)
    assert store.release("ffff0001", "w/x", "MemoryError: " + "x" * 5000) is not None
    job = store.get("ffff0001")
    assert len(job["message"]) < 300 and job["message"].endswith("next)") and "attempt 2 of" in job["message"]


# ----- transactions retried after a lost reply (review of issue #10) -----

@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def records(request, tmp_path: Path) -> JobStore:
    """A job store on the embedded SQLite file, or on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return _store(tmp_path)
    return JobStore(request.getfixturevalue("postgres").url)


def test_a_finish_run_again_after_its_commit_still_counts_as_accepted(records: JobStore) -> None:
    """A commit whose reply is lost is run again whole by `retrying`: the second run must not call the job's result
    lost (its caller would delete the artifacts the first run committed)."""
    from studio.queue.jobstore import Ending

    records.create(_new("f1f1f1f1"))
    records.claim("f1f1f1f1", "w/x", "w", 30)
    artifacts = [{"name": "a.png", "kind": "image", "key": "jobs/f1f1f1f1/t1/a.png", "size": 3}]
    ending = Ending("f1f1f1f1", "SUCCEEDED", artifacts=artifacts, staging="jobs/f1f1f1f1/t1")
    assert records.finish_many("w/x", [ending]) == {"f1f1f1f1"}
    assert records.finish_many("w/x", [ending]) == {"f1f1f1f1"}  # the same ending again: accepted, not "lost"
    other = Ending("f1f1f1f1", "SUCCEEDED", artifacts=artifacts, staging="jobs/f1f1f1f1/t2")
    assert records.finish_many("w/x", [other]) == set()  # another attempt's result is still refused
    assert [a["key"] for a in records.get("f1f1f1f1")["artifacts"]] == ["jobs/f1f1f1f1/t1/a.png"]


def test_create_and_release_run_again_after_their_commit_are_no_ops(records: JobStore) -> None:
    records.create(_new("c2c2c2c2"))
    records.create(_new("c2c2c2c2"))  # the same job again (a retried create): nothing new, no error
    assert len(records.list()) == 1 and [e["kind"] for e in records.get("c2c2c2c2")["events"]] == ["queued"]
    with pytest.raises(InputError, match="already taken"):
        records.create(_new("c2c2c2c2", seed=9))
    records.claim("c2c2c2c2", "w/x", "w", 30)
    first = records.release("c2c2c2c2", "w/x", "out of memory")
    assert first is not None
    assert records.release("c2c2c2c2", "w/x", "out of memory") == first  # its message is published, not lost


@pytest.mark.integration
def test_a_message_whose_betters_are_being_claimed_runs_its_own_job(postgres) -> None:
    """PostgreSQL: a claim passes over rows other claims hold (SKIP LOCKED). When every job ahead of a message's own
    job is held, the message runs its own job rather than leave it QUEUED with no message."""
    from sqlalchemy import create_engine, text

    store = JobStore(postgres.url)
    store.create(_new("aaaa0009", priority=9))
    store.create(_new("bbbb0005", priority=5))
    other = create_engine(postgres.url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with other.begin() as conn:  # another worker is in the middle of claiming the priority-9 job
            conn.execute(text("SELECT id FROM jobs WHERE id = 'aaaa0009' FOR UPDATE"))
            job, why = store.claim("bbbb0005", "w2/y", "w2", 30)
            assert job is not None and job["id"] == "bbbb0005", why
    finally:
        other.dispose()
    assert store.state("aaaa0009") == "QUEUED"


@pytest.mark.parametrize("url", ["postgresql://u:pw@host:54x/db", "postgresql://user:p@ss:w0rd@host:5432/db",
                                 "user:s3cret@host/db", "mysql://u:s3cret@h/d"])
def test_a_bad_database_url_is_one_line_without_its_password(url: str) -> None:
    from studio.db import Database

    with pytest.raises(InputError) as err:
        Database(url)
    text = str(err.value)
    assert "\n" not in text and len(text) < 300
    assert not any(secret in text for secret in ("pw", "p@ss", "w0rd", "s3cret")), text


def test_only_sqlite_busy_errors_are_retried() -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from studio.db import _lost_connection

    assert _lost_connection(OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked")))
    assert not _lost_connection(OperationalError("SELECT", {}, sqlite3.OperationalError("no such column: x")))
    assert not _lost_connection(OperationalError("UPDATE", {}, sqlite3.OperationalError("attempt to write a "
                                                                                        "readonly database")))


@pytest.mark.integration
def test_a_machine_whose_clock_runs_ahead_takes_no_live_lease(postgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers on several machines share leases: they are measured on the database's clock, so a worker whose clock
    is two minutes ahead neither reaps nor claims a job another worker still holds."""
    store = JobStore(postgres.url)
    store.create(_new("cccc0001"))
    job, _ = store.claim("cccc0001", "w1/x", "w1", 30)
    assert job["state"] == "RUNNING"
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120)  # this "machine" is two minutes ahead
    assert store.reap() == []
    assert store.claim("cccc0001", "w2/y", "w2", 30) == (None, "running elsewhere under a live lease")
    monkeypatch.setattr(time, "time", real)
    assert store.get("cccc0001")["worker"] == "w1" and store.renew("w1/x", 30) == {"cccc0001": False}
