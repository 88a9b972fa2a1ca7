"""Users and access: the user store (scrypt, hashed tokens, login throttling), owners of jobs and vectors, "not
found" for another user's job, the per-user quota, fair claims, the migration of an old job database, the CLI,
and (integration) the user store on PostgreSQL shared by two machines, and the UI over HTTP with two users."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from studio.config import load_settings
from studio.db import Database
from studio.db import tokens as T_TOKENS
from studio.db import users as T_USERS
from studio.errors import InputError, NotFound
from studio.queue.jobstore import SCHEMA_VERSION, JobStore, NewJob, QuotaExceeded
from studio.ui.testing import free_port
from studio.users import (
    FREE_FAILURES_ADDRESS,
    FREE_FAILURES_USER,
    UserStore,
    hash_password,
    user_from_env,
    verify_password,
    viewer_for,
)

REDIS_URL = "redis://127.0.0.1:6379/11"


class Clock:
    """A clock the test moves by hand (throttling without sleeping)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings({"STUDIO_HOME": str(tmp_path / "home")})


@pytest.fixture
def users(settings) -> UserStore:
    store = UserStore.from_settings(settings)
    store.add("alice", "alice-password")
    store.add("mallory", "mallory-password")
    store.add("root", "root-password", admin=True)
    return store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def records(request, tmp_path: Path):
    """Where a user store lives: an embedded SQLite file, or a fresh PostgreSQL database (its URL)."""
    if request.param == "sqlite":
        return tmp_path / "records.sqlite"
    return request.getfixturevalue("postgres").url


@pytest.fixture
def trio(records) -> UserStore:
    """alice, mallory and root (an admin) in a user store on each kind of records database."""
    store = UserStore(records)
    store.add("alice", "alice-password")
    store.add("mallory", "mallory-password")
    store.add("root", "root-password", admin=True)
    return store


def _stored(store: UserStore, query):  # noqa: ANN001, ANN202 - what the records database holds, read directly
    with store.db.read() as db:
        return db.execute(query).all()


def _new(job_id: str, owner: str | None, priority: int = 5, queue: str = "t.any.toy") -> NewJob:
    return NewJob(id=job_id, spec={"op": "sample", "backend": "toy", "n": 1, "seed": 0,
                                   "image": {"png_b64": "c2VjcmV0"}},
                  priority=priority, queue=queue, max_attempts=3, time_limit_s=60.0, owner=owner)


# ----- the user store -----

def test_passwords_are_stored_as_salted_scrypt(trio: UserStore) -> None:
    users = trio
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$") and "correct horse" not in stored
    assert stored != hash_password("correct horse")  # a new salt every time
    assert verify_password("correct horse", stored) and not verify_password("correct hors", stored)
    assert not verify_password("x", "md5$abc") and not verify_password("x", "garbage")
    [(raw,)] = _stored(users, select(T_USERS.c.password).where(T_USERS.c.name == "alice"))
    assert raw.startswith("scrypt$") and "alice-password" not in raw
    assert users.check("alice", "alice-password") and not users.check("alice", "mallory-password")
    assert not users.check("nobody", "alice-password")


def test_user_names_passwords_and_duplicates_are_checked(trio: UserStore) -> None:
    users = trio
    with pytest.raises(InputError, match="user name 'Al ice' is invalid"):
        users.add("Al ice", "long-enough")
    with pytest.raises(InputError, match="shorter than 8"):
        users.add("bob", "short")
    with pytest.raises(InputError, match="already exists"):
        users.add("alice", "another-password")
    with pytest.raises(NotFound, match="no user 'zed'"):
        users.remove("zed")
    assert [(u["name"], u["admin"]) for u in users.list()] == [("alice", False), ("mallory", False), ("root", True)]


def test_tokens_are_stored_hashed_and_die_with_their_user(trio: UserStore) -> None:
    users = trio
    token = users.new_token("alice")
    assert token.startswith("st_") and len(token) > 40
    rows = _stored(users, select(T_TOKENS.c.hash, T_TOKENS.c.user))
    assert rows and all(token not in h for h, _ in rows)
    assert users.user_for_token(token) == "alice" and users.check("alice", token)
    assert not users.check("mallory", token) and users.user_for_token(token + "x") is None
    assert users.user_for_token("alice-password") is None
    assert users.get("alice")["tokens"] == 1 and users.check("alice", "alice-password")
    users.remove("alice")
    assert users.user_for_token(token) is None and not users.check("alice", "alice-password")
    assert _stored(users, select(T_TOKENS.c.hash)) == []  # its tokens went with it
    with pytest.raises(NotFound, match="no user 'alice'"):
        users.new_token("alice")


def test_failed_logins_are_throttled_per_user_with_a_growing_delay(records) -> None:
    clock = Clock()
    store = UserStore(records, clock=clock)
    store.add("alice", "alice-password")
    for _ in range(FREE_FAILURES_USER - 1):
        assert store.login("alice", "wrong-guess", "10.0.0.1").why == "wrong user name or password"
    assert not store.login("alice", "wrong-guess", "10.0.0.1").ok  # the last free failure starts a delay
    refused = store.login("alice", "alice-password", "10.0.0.1")  # even the right password, from that address
    assert not refused.ok and "too many failed logins" in refused.why and refused.retry_after_s > 0
    delays = []
    for _ in range(4):  # each further failure doubles the wait
        clock.now += store._locked_for("pair", "alice 10.0.0.1", clock.now) + 0.01
        assert not store.login("alice", "wrong-guess", "10.0.0.1").ok
        delays.append(store._locked_for("pair", "alice 10.0.0.1", clock.now))
    assert delays == sorted(delays) and delays[-1] == pytest.approx(2 * delays[-2])
    clock.now += delays[-1] + 0.01
    assert store.login("alice", "alice-password", "10.0.0.1").ok  # after the delay the right password works
    assert store.failures("pair", "alice 10.0.0.1") == 0


def test_failed_logins_are_throttled_per_address_over_any_names(records) -> None:
    store = UserStore(records, clock=Clock())
    store.add("alice", "alice-password")
    for i in range(FREE_FAILURES_ADDRESS):
        assert not store.login(f"guess{i}", "wrong-guess", "10.6.6.6").ok
    assert "too many" in store.login("alice", "alice-password", "10.6.6.6").why  # this address waits
    assert store.login("alice", "alice-password", "10.0.0.1").ok  # alice elsewhere is not locked out


def test_cli_user_comes_from_a_token_or_a_name_only_when_users_exist(settings, users: UserStore) -> None:
    empty = load_settings({"STUDIO_HOME": str(Path(settings.home).parent / "empty")})
    assert user_from_env(empty, {}) is None  # the single-user default: nobody to name
    assert not empty.store_path.exists()  # and asking made no database
    token = users.new_token("alice")
    assert user_from_env(settings, {"STUDIO_TOKEN": token}) == "alice"
    assert user_from_env(settings, {"STUDIO_USER": "mallory"}) == "mallory"
    with pytest.raises(InputError, match="set STUDIO_TOKEN"):
        user_from_env(settings, {})
    with pytest.raises(InputError, match="not a valid API token"):
        user_from_env(settings, {"STUDIO_TOKEN": "st_forged"})
    assert viewer_for(settings, "root") is None and viewer_for(settings, "alice") == "alice"


# ----- owners of jobs -----

def test_another_users_job_is_not_found_and_admins_see_all(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    store.create(_new("a11ce0000001", "alice"))
    store.create(_new("b0b000000001", "bob"))
    store.create(_new("a11ce0000002", "bob"))  # shares alice's id prefix: the prefix must not leak it
    assert [j["id"] for j in store.list(viewer="alice")] == ["a11ce0000001"]
    assert {j["id"] for j in store.list()} == {"a11ce0000001", "b0b000000001", "a11ce0000002"}
    assert store.get("a11ce", viewer="alice")["owner"] == "alice"  # unique among alice's own jobs
    with pytest.raises(InputError, match="ambiguous"):
        store.get("a11ce")
    for action in (lambda: store.get("b0b000000001", viewer="alice"),
                   lambda: store.request_cancel("b0b000000001", viewer="alice"),
                   lambda: store.resolve("b0b0", viewer="alice")):
        with pytest.raises(NotFound) as theirs:
            action()
        assert "forbidden" not in str(theirs.value).lower()
    with pytest.raises(NotFound) as missing:
        store.get("b0b000000009", viewer="alice")
    with pytest.raises(NotFound) as theirs:
        store.get("b0b000000001", viewer="alice")
    assert str(theirs.value) == str(missing.value).replace("b0b000000009", "b0b000000001")
    assert store.get("b0b000000001")["state"] == "QUEUED"  # untouched by the refused cancel


def test_the_client_scopes_status_result_cancel_retry_replay_and_files(settings, users: UserStore) -> None:
    from studio.queue.client import StudioClient

    store = JobStore.from_settings(settings)
    store.create(_new("a11ce0000001", "alice"))
    mallory = StudioClient(settings, user="mallory")
    for action in (mallory.status, mallory.result, mallory.cancel, mallory.retry, mallory.replay, mallory.wait,
                   lambda j: mallory.artifact_path(j, "grid.png"), lambda j: mallory.copy_result(j, "out")):
        with pytest.raises(NotFound, match="no job 'a11ce0000001'"):
            action("a11ce0000001")
    assert mallory.jobs() == []
    alice = mallory.for_user("alice")
    assert [j["id"] for j in alice.jobs()] == ["a11ce0000001"] and alice.status("a11ce")["owner"] == "alice"
    assert [j["id"] for j in StudioClient(settings, user="root").jobs()] == ["a11ce0000001"]  # an admin
    assert alice.cancel("a11ce0000001")["state"] == "CANCELLED"


def test_quota_refuses_at_submit_with_one_line(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    for i in range(2):
        store.create(_new(f"a11ce000000{i}", "alice"), max_queued=2)
    store.create(_new("b0b000000001", "bob"), max_queued=2)  # bob has his own allowance
    with pytest.raises(QuotaExceeded) as refused:
        store.create(_new("a11ce0000009", "alice"), max_queued=2)
    text = str(refused.value)
    assert "max_queued_per_user" in text and "\n" not in text and len(text) < 300
    assert isinstance(refused.value, InputError)
    store.request_cancel("a11ce0000000")  # a cancelled job no longer counts
    store.create(_new("a11ce0000009", "alice"), max_queued=2)
    assert store.count_queued("alice") == 2


@pytest.mark.integration
def test_client_submit_applies_the_quota_before_anything_is_queued(tmp_path: Path) -> None:
    from studio.queue.testing import QueueHarness

    harness = QueueHarness(tmp_path, broker_url=REDIS_URL, max_queued_per_user=2)
    try:
        with harness.active():
            UserStore.from_settings(harness.settings).add("alice", "alice-password")
            client = harness.client().for_user("alice")
            spec = {"op": "sample", "backend": "toy", "n": 1, "seed": 0}
            first = [client.submit(spec), client.submit(spec)]
            with pytest.raises(QuotaExceeded, match="STUDIO_MAX_QUEUED_PER_USER=2"):
                client.submit(spec)
            assert [j["id"] for j in client.jobs()] == first[::-1]
            assert all(j["owner"] == "alice" for j in client.jobs())
            client.close()
    finally:
        harness.close()


# ----- fair claims (the job store alone; tests/test_fair_share.py runs a real worker) -----

def test_claims_are_fair_between_users_within_the_highest_priority(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    for i in range(5):
        store.create(_new(f"a11ce000000{i}", "alice"))
    store.create(_new("b0b000000001", "bob"))
    first, _ = store.claim("a11ce0000000", "w/1", "w", 30)
    assert first["id"] == "a11ce0000000"
    second, _ = store.claim("a11ce0000001", "w/2", "w", 30)  # alice runs one, bob none: bob's turn
    assert second["id"] == "b0b000000001" and second["owner"] == "bob"
    store.create(_new("c0ffee000001", "carol", priority=9))
    third, _ = store.claim("a11ce0000002", "w/3", "w", 30)  # a higher priority goes first, whoever owns it
    assert third["id"] == "c0ffee000001"
    # the message of a job that already ran in another's place runs the job still waiting: none is lost
    assert store.get("a11ce0000001")["state"] == "QUEUED"
    fourth, _ = store.claim("b0b000000001", "w/4", "w", 30)
    assert fourth["id"] == "a11ce0000001"
    ran = [j["id"] for j in store.list(state="RUNNING")]
    assert len(ran) == len(set(ran)) == 4


def test_round_robin_when_nobody_is_running(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    for i in range(3):
        store.create(_new(f"a11ce000000{i}", "alice"))
    job, _ = store.claim("a11ce0000000", "w/1", "w", 30)
    assert store.finish(job["id"], "w/1", "SUCCEEDED")
    store.create(_new("b0b000000001", "bob"))
    nxt, _ = store.claim("a11ce0000001", "w/2", "w", 30)  # one worker: bob, who never ran, is next
    assert nxt["id"] == "b0b000000001"


def test_messages_of_jobs_that_cannot_run_keep_their_old_answers(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    store.create(_new("a11ce0000001", "alice"))
    store.create(_new("a11ce0000002", "alice"))
    store.request_cancel("a11ce0000001")
    assert store.claim("a11ce0000001", "w/1", "w", 30) == (None, "already CANCELLED")  # never ran: its own message
    assert store.claim("ffff00000000", "w/1", "w", 30) == (None, "unknown job")
    job, _ = store.claim("a11ce0000002", "w/1", "w", 30)
    assert store.claim("a11ce0000002", "w/2", "w", 30) == (None, "running elsewhere under a live lease")
    assert store.finish(job["id"], "w/1", "SUCCEEDED")
    assert store.claim("a11ce0000002", "w/2", "w", 30) == (None, "already SUCCEEDED")


def test_concurrent_claims_run_every_job_exactly_once_and_strand_none(tmp_path: Path) -> None:
    import queue
    import random
    import threading

    store = JobStore(tmp_path / "jobs.sqlite")
    ids = [f"{u}{i:08d}" for u in ("a1", "b2", "c3") for i in range(12)]
    for job_id in ids:
        store.create(_new(job_id, {"a1": "alice", "b2": "bob", "c3": "carol"}[job_id[:2]]))
    messages: queue.Queue[str] = queue.Queue()
    for job_id in random.Random(0).sample(ids, len(ids)) + ids[:5]:  # every message, plus 5 duplicates
        messages.put(job_id)
    ran: list[str] = []

    def worker(n: int) -> None:
        mine = JobStore(tmp_path / "jobs.sqlite")
        while True:
            try:
                message = messages.get_nowait()
            except queue.Empty:
                return
            job, _ = mine.claim(message, f"w{n}/{message}", f"w{n}", 30)
            if job is not None:
                ran.append(job["id"])
                assert mine.finish(job["id"], f"w{n}/{message}", "SUCCEEDED")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(ran) == sorted(ids)  # each job exactly once, and no job left waiting for a message
    assert store.list(state="QUEUED") == []


# ----- migration -----

OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    op TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT,
    spec TEXT NOT NULL,
    priority INTEGER NOT NULL,
    queue TEXT NOT NULL,
    batch_key TEXT,
    images INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    attempt_started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    time_limit_s REAL NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    eta_s REAL,
    preview TEXT,
    error TEXT,
    metrics TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL,
    worker TEXT,
    leader TEXT,
    parent TEXT,
    staging TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, batch_key);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id);
CREATE TABLE IF NOT EXISTS artifacts (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    started REAL NOT NULL,
    last_seen REAL NOT NULL,
    job_id TEXT
);
"""  # the job database of version 1, before owners (kept as it was)


def test_an_old_database_without_owners_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    old_schema = OLD_SCHEMA
    assert "    owner TEXT" not in old_schema
    db = sqlite3.connect(path)
    db.executescript(old_schema)
    db.execute("INSERT INTO jobs (id, state, op, backend, spec, priority, queue, created, max_attempts, "
               "time_limit_s) VALUES ('0123456789ab', 'SUCCEEDED', 'sample', 'toy', '{}', 5, 'q', 1.0, 3, 60)")
    db.commit()
    db.close()
    store = JobStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.get("0123456789ab")["owner"] is None  # kept, with no owner (the single-user default's)
    with pytest.raises(NotFound):
        store.get("0123456789ab", viewer="alice")  # ownerless history: admins only once users exist
    JobStore(path)  # opening again is a no-op
    store.create(_new("a11ce0000001", "alice"))
    assert [j["id"] for j in store.list(viewer="alice")] == ["a11ce0000001"]


# ----- vectors -----

def test_vectors_have_owners_and_can_be_shared(settings) -> None:
    import torch

    from studio.vectorstore import list_vectors, load_vector, save_vector, share_vector

    sha = "ab" * 32
    save_vector(settings, "vae", sha, "smile", torch.ones(2), {"space": "z"}, owner="alice")
    save_vector(settings, "vae", sha, "public", torch.ones(2), {"space": "z"})  # single-user default: everyone's
    assert [v["name"] for v in list_vectors(settings, viewer="mallory")] == ["public"]
    assert [v["name"] for v in list_vectors(settings, viewer="alice")] == ["public", "smile"]
    assert [v["name"] for v in list_vectors(settings)] == ["public", "smile"]  # admins
    with pytest.raises(NotFound, match="no vector 'smile'") as missing:
        load_vector(settings, "vae", sha, "smile", viewer="mallory")
    assert "smile" not in str(missing.value).split("stored:")[1]
    with pytest.raises(NotFound, match="only its owner"):
        share_vector(settings, "vae", sha, "public", ["mallory"], viewer="mallory")
    share_vector(settings, "vae", sha, "smile", ["mallory"], viewer="alice")
    _, meta = load_vector(settings, "vae", sha, "smile", viewer="mallory")
    assert meta["owner"] == "alice" and meta["shared"] == ["mallory"]


# ----- the UI's login and scoping (units) -----

def test_ui_login_uses_the_user_store_with_throttling(settings, users: UserStore) -> None:
    from studio.ui.security import CLIENT_ADDRESS, auth_from_settings, launch_auth

    check = auth_from_settings(settings)
    assert callable(check) and launch_auth(settings, "0.0.0.0") is not None  # users: serving off loopback is fine
    assert asyncio.run(check("alice", "alice-password"))
    assert asyncio.run(check("alice", users.new_token("alice")))  # an API token works as the password
    assert not asyncio.run(check("mallory", "alice-password"))

    async def attempt(name: str, password: str) -> bool:
        CLIENT_ADDRESS.set("10.1.2.3")
        return await check(name, password)

    for _ in range(FREE_FAILURES_USER):
        assert not asyncio.run(attempt("alice", "wrong-guess"))
    assert not asyncio.run(attempt("alice", "alice-password"))  # locked: the right password waits too
    assert users.failures("address", "10.1.2.3") == FREE_FAILURES_USER


def test_ui_handlers_run_as_the_signed_in_user(settings, users: UserStore) -> None:
    import inspect

    import gradio as gr

    from studio.queue.client import StudioClient
    from studio.ui.jobs import ScopedClient, scoped, ui_errors

    JobStore.from_settings(settings).create(_new("a11ce0000001", "alice"))
    client = ScopedClient(StudioClient(settings))

    @ui_errors
    def jobs(state: str) -> list:
        return [j["id"] for j in client.jobs()]

    params = list(inspect.signature(jobs).parameters)
    assert params == ["studio_request", "state"]  # Gradio fills the request in front of the inputs

    assert jobs(_request("alice"), "all") == ["a11ce0000001"]  # what Gradio passes: a gr.Request naming the user
    assert jobs(_request("mallory"), "all") == []
    with pytest.raises(gr.Error, match="restart the UI"):  # users exist but nobody signed in: fail closed
        jobs("all")
    assert scoped(object()) is not None  # a client without users support is used as it is


# ----- the CLI -----

def _cli(*args: str, env: dict, input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, timeout=120,
                          input=input_text, env={**os.environ, **env})


@pytest.mark.integration
def test_cli_users_add_list_token_remove_and_queue_commands(tmp_path: Path) -> None:
    studio_cli = _cli
    env = {"STUDIO_HOME": str(tmp_path / "home"), "STUDIO_USER": "", "STUDIO_TOKEN": ""}
    assert "no users" in studio_cli("users", "list", env=env).stdout
    assert studio_cli("jobs", env=env).returncode == 0  # the single-user default needs nobody
    added = studio_cli("users", "add", "alice", "--password-stdin", env=env, input_text="alice-password\n")
    assert added.returncode == 0 and "logins are now required" in added.stdout, added.stderr
    assert studio_cli("users", "add", "root", "--admin", "--no-password", env=env).returncode == 0
    token = studio_cli("users", "token", "alice", env=env).stdout.strip()
    assert token.startswith("st_")
    listed = studio_cli("users", "list", "--json", env=env).stdout
    assert '"name": "alice"' in listed and token not in listed
    refused = studio_cli("jobs", env=env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "STUDIO_TOKEN" in refused.stderr
    assert studio_cli("jobs", env={**env, "STUDIO_TOKEN": token}).returncode == 0
    bad = studio_cli("status", "abcd", env={**env, "STUDIO_TOKEN": "st_forged"})
    assert bad.returncode == 2 and "not a valid API token" in bad.stderr
    assert studio_cli("users", "remove", "alice", env=env).returncode == 0
    assert "not a valid API token" in studio_cli("jobs", env={**env, "STUDIO_TOKEN": token}).stderr


@pytest.mark.integration
@pytest.mark.slow
def test_cli_vectors_belong_to_their_user_until_shared(tmp_path: Path) -> None:
    env = {"STUDIO_HOME": str(tmp_path / "home"), "STUDIO_USER": "", "STUDIO_TOKEN": ""}
    for name in ("alice", "bob"):
        assert _cli("users", "add", name, "--no-password", env=env).returncode == 0
    alice, bob = {**env, "STUDIO_USER": "alice"}, {**env, "STUDIO_USER": "bob"}
    fitted = _cli("vectors", "fit", "--backend", "vae", "--name", "smile", "--with-seeds", "1,2",
                  "--without-seeds", "3,4", "--json", env=alice)
    assert fitted.returncode == 0, fitted.stderr
    assert "smile" in _cli("vectors", "list", env=alice).stdout
    assert "smile" not in _cli("vectors", "list", env=bob).stdout  # alice's until she shares it
    edit = ["run", "edit", "--backend", "vae", "--vector", "smile", "--seed", "3", "--strengths", "0,1",
            "--out", str(tmp_path / "out")]
    refused = _cli(*edit, env=bob)
    assert refused.returncode == 2 and "smile" in refused.stderr and refused.stderr.count("\n") == 1
    stolen = _cli("vectors", "share", "smile", "--backend", "vae", "--with", "bob", env=bob)
    assert stolen.returncode == 2  # only its owner shares it
    shared = _cli("vectors", "share", "smile", "--backend", "vae", "--with", "bob", env=alice)
    assert shared.returncode == 0 and "bob" in shared.stdout, shared.stderr
    assert "smile" in _cli("vectors", "list", env=bob).stdout
    assert _cli(*edit, env=bob).returncode == 0


# ----- the UI over HTTP, two users (integration) -----


@pytest.mark.integration
@pytest.mark.slow
def test_ui_over_http_scopes_jobs_to_the_signed_in_user_and_throttles_logins(tmp_path: Path) -> None:
    import httpx
    from gradio_client import Client

    from studio.queue.client import StudioClient
    from studio.ui import serve

    settings = load_settings({"STUDIO_HOME": str(tmp_path / "home"), "STUDIO_BROKER_URL": REDIS_URL,
                              "STUDIO_QUEUE_PREFIX": f"t{uuid.uuid4().hex[:8]}"})
    store = UserStore.from_settings(settings)
    store.add("alice", "alice-password")
    store.add("mallory", "mallory-password")
    token = store.new_token("alice")
    JobStore.from_settings(settings).create(_new("a11ce0000001", "alice"))
    client = StudioClient(settings)
    demo, url = serve(settings, host="127.0.0.1", port=free_port(), client=client)
    try:
        mallory = Client(url, auth=("mallory", "mallory-password"), verbose=False)
        assert mallory.predict(api_name="/jobs") == []
        with pytest.raises(Exception, match="no job 'a11ce0000001'") as hidden:
            mallory.predict("a11ce0000001", api_name="/status")
        assert "forbidden" not in str(hidden.value).lower()
        with pytest.raises(Exception, match="no job 'a11ce0000001'"):  # the Queue tab's cancel acts as mallory too
            mallory.predict("a11ce0000001", "all", api_name="/cancel")
        stolen = str(settings.store_path / "jobs" / "a11ce0000001" / "grid.png")  # replay is by id, never a path
        with pytest.raises(Exception, match="job_id") as by_path:
            mallory.predict(stolen, "all", api_name="/replay")
        assert str(settings.store_path) not in str(by_path.value)
        alice = Client(url, auth=("alice", "alice-password"), verbose=False)
        assert [j["id"] for j in alice.predict(api_name="/jobs")] == ["a11ce0000001"]
        assert alice.predict("a11ce0000001", api_name="/status")["state"] == "QUEUED"
        by_header = Client(url, headers={"Authorization": f"Bearer {token}"}, verbose=False)
        assert [j["id"] for j in by_header.predict(api_name="/jobs")] == ["a11ce0000001"]
        assert httpx.get(f"{url}config", headers={"X-Studio-Token": "st_forged"}).status_code == 401

        answers = [httpx.post(f"{url}login", data={"username": "alice", "password": f"guess-{i}"}).status_code
                   for i in range(20)]
        assert answers == [400] * 20
        assert store.failures("user", "alice") >= FREE_FAILURES_USER
        with pytest.raises(ValueError, match="Could not login"):  # throttled: now even the right password waits
            Client(url, auth=("alice", "alice-password"), verbose=False)
        assert [j["id"] for j in by_header.predict(api_name="/jobs")] == ["a11ce0000001"]  # tokens still work
    finally:
        demo.close()
        client.close()


def test_failures_from_other_addresses_never_refuse_the_right_password(records) -> None:
    """Review #7: anyone could lock a user out, even against the right password, by failing from anywhere."""
    clock = Clock()
    store = UserStore(records, clock=clock)
    store.add("alice", "alice-password")
    for i in range(3 * FREE_FAILURES_USER):  # mallory fails as alice from many addresses, and from one
        assert not store.login("alice", "wrong-guess", f"10.9.9.{i % 3}").ok
    assert store.failures("user", "alice") > FREE_FAILURES_USER  # (later guesses were refused unchecked)
    assert store._locked_for("user", "alice", clock.now) > 0  # the user is being guessed at
    assert "too many" in store.login("alice", "alice-password", "10.9.9.0").why  # mallory's addresses wait
    assert store.login("alice", "alice-password", "10.0.0.1").ok  # alice from her own address gets in
    assert store.login("alice", "alice-password", None).ok  # and with no known address


def test_a_guessed_at_user_slows_every_address_down(records) -> None:
    """The per-user counter over all addresses makes each further address wait after its first failure."""
    clock = Clock()
    store = UserStore(records, clock=clock)
    store.add("alice", "alice-password")
    for i in range(FREE_FAILURES_USER + 1):  # one guess each from many addresses: no pair ever reaches its limit
        assert store.login("alice", "wrong-guess", f"10.8.0.{i}").why == "wrong user name or password"
    user_wait = store._locked_for("user", "alice", clock.now)
    assert user_wait > 0
    assert store.login("alice", "wrong-guess", "10.8.1.1").why == "wrong user name or password"
    refused = store.login("alice", "wrong-guess", "10.8.1.1")  # this address's second guess waits
    assert "too many" in refused.why and refused.retry_after_s >= user_wait - 0.01
    assert store.login("alice", "alice-password", "10.8.1.2").ok  # the right password is still never refused


# ----- one user store for every machine (the records database) -----

@pytest.fixture
def postgres_url(postgres) -> str:
    """A fresh PostgreSQL database's URL, dropped afterwards."""
    return postgres.url


@pytest.mark.integration
def test_two_machines_on_one_postgresql_share_users_tokens_and_throttling(postgres_url: str) -> None:
    here, there = Database(postgres_url), Database(postgres_url)  # two engines, as two machines have
    try:
        a, b = UserStore(here), UserStore(there)
        assert not a.any() and b.list() == []
        a.add("alice", "alice-password")
        assert b.any() and b.check("alice", "alice-password") and not b.is_admin("alice")
        with pytest.raises(InputError, match="already exists"):
            b.add("alice", "another-password")
        token = b.new_token("alice")
        assert a.user_for_token(token) == "alice" and a.get("alice")["tokens"] == 1
        for i in range(FREE_FAILURES_USER):  # guesses from one address, sent to either machine
            assert not (a if i % 2 else b).login("alice", "wrong-guess", "10.0.0.1").ok
        assert "too many" in a.login("alice", "alice-password", "10.0.0.1").why
        assert "too many" in b.login("alice", "alice-password", "10.0.0.1").why
        assert a.login("alice", token, "10.0.0.2").ok and b.failures("pair", "alice 10.0.0.1") == FREE_FAILURES_USER
        a.revoke_tokens("alice")
        assert b.user_for_token(token) is None
        b.remove("alice")
        assert not a.any() and not a.check("alice", "alice-password")
    finally:
        here.dispose()
        there.dispose()


@pytest.mark.integration
def test_concurrent_failed_logins_on_two_machines_are_all_counted(postgres_url: str) -> None:
    here, there = Database(postgres_url), Database(postgres_url)
    try:
        stores = [UserStore(here), UserStore(there)]
        stores[0].add("alice", "alice-password")
        per_thread = 4
        errors: list[BaseException] = []

        def guess(store: UserStore, n: int) -> None:
            try:
                for i in range(per_thread):
                    store.login("alice", "wrong-guess", f"10.7.{n}.{i}")  # new addresses: never refused unchecked
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        threads = [threading.Thread(target=guess, args=(stores[n % 2], n)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == [] and stores[1].failures("user", "alice") == 4 * per_thread  # none lost to a race
    finally:
        here.dispose()
        there.dispose()


@pytest.mark.integration
def test_the_cli_on_another_machine_sees_users_made_on_the_first(tmp_path: Path, postgres_url: str) -> None:
    """Two homes with no shared folder and one STUDIO_DATABASE_URL: users and tokens travel with the records."""
    first = {"STUDIO_HOME": str(tmp_path / "first"), "STUDIO_DATABASE_URL": postgres_url, "STUDIO_USER": "",
             "STUDIO_TOKEN": ""}
    second = {**first, "STUDIO_HOME": str(tmp_path / "second")}
    added = _cli("users", "add", "alice", "--password-stdin", env=first, input_text="alice-password\n")
    assert added.returncode == 0, added.stderr
    token = _cli("users", "token", "alice", env=first).stdout.strip()
    assert token.startswith("st_")
    assert '"name": "alice"' in _cli("users", "list", "--json", env=second).stdout
    settings = load_settings(second)
    assert user_from_env(settings, {"STUDIO_TOKEN": token}) == "alice" and viewer_for(settings, "alice") == "alice"
    refused = _cli("jobs", env=second)
    assert refused.returncode == 2 and "STUDIO_TOKEN" in refused.stderr
    assert _cli("jobs", env={**second, "STUDIO_TOKEN": token}).returncode == 0
    assert list(tmp_path.rglob("*.sqlite")) == []  # nothing embedded: the records are on the server


# ----- review findings 1, 2, 3, 5, 6: the UI trusts only the user store, by id, per session -----

def _request(name: str | None):
    """What Gradio passes a handler: a gr.Request naming the signed-in user (None: no login)."""
    import gradio as gr

    r = gr.Request.__new__(gr.Request)
    r.username = name
    return r


def _wrapped_as(mode: str | None, fn):  # noqa: ANN001, ANN202 - a handler wrapped while a page of `mode` is built
    from studio.ui.jobs import building_with, end_building, ui_errors

    token = building_with(mode)
    try:
        return ui_errors(fn)
    finally:
        end_building(token)


def test_ui_trusts_a_login_name_only_from_the_user_store(tmp_path: Path) -> None:
    import gradio as gr

    from studio.queue.client import StudioClient
    from studio.ui.jobs import scoped
    from studio.ui.security import auth_mode

    settings = load_settings({"STUDIO_HOME": str(tmp_path / "home"), "STUDIO_UI_TOKEN": "t" * 24})
    JobStore.from_settings(settings).create(_new("c11000000001", None))  # a CLI (or pre-upgrade) job: no owner
    client = StudioClient(settings)
    assert auth_mode(settings) == "shared"  # any name and the shared token: the name proves nothing

    def visible() -> list[str]:
        return [j["id"] for j in scoped(client).jobs()]

    shared = _wrapped_as("shared", visible)
    assert shared(_request("me")) == ["c11000000001"]  # no users: the single-user default, owner stays NULL
    assert scoped(client).user is None
    users = UserStore.from_settings(settings)
    users.add("alice", "alice-password")  # a user added while the UI runs with the shared token
    JobStore.from_settings(settings).create(_new("a11ce0000001", "alice"))
    with pytest.raises(gr.Error, match="restart the UI") as refused:  # a token holder calling themselves alice
        shared(_request("alice"))
    assert "\n" not in refused.value.message and len(refused.value.message) < 300
    assert _wrapped_as("users", visible)(_request("alice")) == ["a11ce0000001"]  # the user store's login
    assert auth_mode(settings) == "users"
    users.remove("alice")  # a password session outlives the user: it is refused from then on
    with pytest.raises(gr.Error, match="no longer exists"):
        _wrapped_as("users", visible)(_request("alice"))


def test_ui_token_sessions_are_random_and_end_with_their_token(settings, users: UserStore) -> None:
    from studio.ui.security import AuthContext
    from studio.users import token_hash

    token = users.new_token("alice")
    seen: list[bytes] = []

    class App:  # the part of Gradio's app AuthContext uses: its sessions and cookie name
        tokens: dict = {}
        cookie_id = "abc"

    async def inner(scope, receive, send) -> None:  # noqa: ANN001 - an ASGI app
        seen.append(dict(scope["headers"]).get(b"cookie", b""))

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    middleware = AuthContext(inner, settings)

    def call() -> None:
        scope = {"type": "http", "app": App, "client": ("10.0.0.9", 1),
                 "headers": [(b"authorization", f"Bearer {token}".encode())]}
        asyncio.run(middleware(scope, None, send))

    call()
    call()
    assert list(App.tokens.values()) == ["alice"]  # one session per token, reused
    session = next(iter(App.tokens))
    assert token_hash(token)[:40] not in session  # not derivable from the stored hash
    assert seen == [f"access-token-abc={session}; access-token-unsecure-abc={session}".encode()] * 2
    users.revoke_tokens("alice")
    call()
    assert App.tokens == {} and sent[0]["status"] == 401 and len(seen) == 2  # revoked: refused, session gone


def test_ui_replays_by_job_id_and_trusts_no_store_path(settings, users: UserStore) -> None:
    import gradio as gr
    from PIL import Image

    from studio.queue.client import StudioClient
    from studio.record import save_png
    from studio.ui.app import build_app
    from studio.ui.artifacts import ArtifactShelf, shelf_root
    from studio.ui.catalog import Catalog
    from studio.ui.inputs import gradio_cache, trusted_path

    spec = {"op": "sample", "backend": "toy", "n": 1, "seed": 0}
    folder = settings.store_path / "jobs" / "a11ce0000001"
    folder.mkdir(parents=True)
    save_png(Image.new("L", (4, 4)), folder / "grid.png", {"spec": spec})
    store = JobStore.from_settings(settings)
    store.create(_new("a11ce0000001", "alice"))
    for bad in (folder / "grid.png", settings.store_path / "jobs.sqlite", "/etc/passwd", f"{gradio_cache()}/../x"):
        with pytest.raises(InputError, match="not one of the studio's images"):
            trusted_path(str(bad), settings)
    copy = ArtifactShelf.for_settings(settings).put("a11ce0000001", "grid.png", (folder / "grid.png").read_bytes)
    assert copy is not None and trusted_path(copy, settings).startswith(str(shelf_root(settings)))

    def describe(settings, load_models: bool = False) -> dict:  # noqa: ANN001
        return {"backends": [{"name": "toy", "version": "1", "capabilities": ["sample"], "models": []}]}

    demo = build_app(StudioClient(settings), settings, catalog=Catalog(settings, describe=describe),
                     auth_mode="users")
    replay = next(f.fn for f in demo.fns.values() if f.api_name == "replay")
    replay_image = next(f.fn for f in demo.fns.values() if f.name == "replay_png")  # "private", still callable
    for fn in (replay, replay_image):
        for source in (str(folder / "grid.png"), "/etc/nonexistent.png", "/etc/passwd"):  # never read as files
            with pytest.raises(gr.Error, match="job_id") as refused:
                fn(_request("mallory"), source, "all")
            assert "file" not in refused.value.message and "image" not in refused.value.message
        with pytest.raises(gr.Error, match="no job 'a11ce0000001'"):  # another user's job: by id, not found
            fn(_request("mallory"), "a11ce0000001", "all")
    assert [j["id"] for j in store.list()] == ["a11ce0000001"]  # nothing was resubmitted


def test_ui_lists_vectors_and_worker_jobs_only_for_the_user(settings, users: UserStore) -> None:
    import torch

    from studio.queue.client import StudioClient
    from studio.ui.app import build_app
    from studio.ui.catalog import Catalog
    from studio.ui.context import UIContext
    from studio.ui.jobs import JobRunner
    from studio.ui.scatter import DatasetImages
    from studio.ui.tabs.plugins import visible_workers
    from studio.vectorstore import save_vector

    sha = "ab" * 32

    def describe(settings, load_models: bool = False) -> dict:  # noqa: ANN001
        return {"backends": [{"name": "vae", "version": "1", "capabilities": ["sample"],
                              "models": [{"name": "mnist", "sha256": sha}]}]}

    save_vector(settings, "vae", sha, "smile", torch.ones(2), {"space": "z"}, owner="alice")
    catalog = Catalog(settings, describe=describe)
    assert catalog.vectors("vae", "mnist") == []  # users exist and nobody signed in: none (it was every user's)

    def names() -> list[str]:
        return [v["name"] for v in catalog.vectors("vae", "mnist")]

    assert _wrapped_as("users", names)(_request("alice")) == ["smile"]
    assert _wrapped_as("users", names)(_request("mallory")) == []
    demo = build_app(StudioClient(settings), settings, catalog=catalog, auth_mode="users")
    # every event that lists vectors (page load, backend, model, vector, refresh) runs as the event's user
    vector_id = next(c["id"] for c in demo.get_config_file()["components"]
                     if c.get("props", {}).get("label") == "Vector")
    listing = [f for f in demo.fns.values() if any(o._id == vector_id for o in f.outputs)
               or any(i._id == vector_id for i in f.inputs)]
    assert len(listing) >= 4 and all(hasattr(f.fn, "__wrapped__") for f in listing), [f.name for f in listing]

    store = JobStore.from_settings(settings)
    store.create(_new("a11ce0000001", "alice", queue="t.any.toy"))
    claimed, _ = store.claim("a11ce0000001", "lease-1", "w1", 60.0)
    assert claimed is not None
    store.worker_seen("w1", {"hostname": "gpu1", "backends": ["toy"], "queues": ["t.any.toy"]}, "a11ce0000001")
    client = StudioClient(settings)
    ctx = UIContext(client, settings, catalog, JobRunner(client), DatasetImages(settings))
    shown = {who: _wrapped_as("users", lambda: [w.get("job_id") for w in visible_workers(ctx)])(_request(who))
             for who in ("alice", "mallory", "root")}
    assert shown == {"alice": ["a11ce0000001"], "mallory": [None], "root": ["a11ce0000001"]}


def test_a_user_cannot_save_a_vector_over_another_users_vector(settings) -> None:
    """Review #4: mallory fitting a vector named like alice's replaced alice's vector."""
    import torch

    from studio.vectorstore import load_vector, save_vector

    sha = "cd" * 32
    save_vector(settings, "vae", sha, "smile", torch.ones(2), {"space": "z"}, owner="alice")
    save_vector(settings, "vae", sha, "public", torch.ones(2), {"space": "z"})  # ownerless (single-user default)
    for name in ("smile", "public"):
        with pytest.raises(InputError) as refused:
            save_vector(settings, "vae", sha, name, torch.zeros(2), {"space": "z"}, owner="mallory")
        assert str(refused.value) == f"vector '{name}' belongs to another user; choose another name"
    vector, meta = load_vector(settings, "vae", sha, "smile", viewer="alice")
    assert meta["owner"] == "alice" and vector.tolist() == [1.0, 1.0]  # untouched
    save_vector(settings, "vae", sha, "smile", torch.full((2,), 2.0), {"space": "z"}, owner="alice")  # her own
    assert load_vector(settings, "vae", sha, "smile")[0].tolist() == [2.0, 2.0]
    save_vector(settings, "vae", sha, "mine", torch.zeros(2), {"space": "z"}, owner="mallory")  # a new name: fine
    save_vector(settings, "vae", sha, "smile", torch.zeros(2), {"space": "z"})  # owner None (admin) replaces any
    assert load_vector(settings, "vae", sha, "smile")[0].tolist() == [0.0, 0.0]


def test_fit_vector_results_do_not_reveal_the_store_location(settings) -> None:
    import json

    from studio.executor import Runtime, execute

    result = execute({"op": "fit_vector", "backend": "pca", "name": "smile", "with_seeds": [1, 2],
                      "without_seeds": [3, 4]}, Runtime(settings), owner="alice")
    shown = json.dumps(result.metrics)
    assert result.metrics["path"].endswith("smile.safetensors") and not result.metrics["path"].startswith("/")
    assert str(settings.store_path) not in shown and str(settings.home) not in shown
