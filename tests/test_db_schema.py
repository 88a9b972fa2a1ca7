"""The records schema is versioned: a store made by an older Latent Studio (SQLite, versions 1 and 2, with users in
users.sqlite beside it and artifacts as files under <store>/jobs/<id>/<name>) is migrated when it is opened, in one
transaction; a database stamped by a newer version is refused in one line, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from studio.config import Settings, load_settings
from studio.db import SCHEMA_VERSION, Database, studio_meta
from studio.errors import StudioError
from studio.queue.jobstore import JobStore, NewJob
from studio.queue.store import ArtifactStore
from studio.testing_services import PostgresDatabase, postgres_available
from studio.users import UserStore, hash_password, token_hash

# The job store's SQL of schema version 2, as released (git show ff79e64^:studio/jobstore.py); version 1 is the same
# without jobs.owner and its indexes (git show e20e6ed:studio/jobstore.py).
V2_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, op TEXT NOT NULL, backend TEXT NOT NULL, model TEXT, spec TEXT NOT NULL,
    priority INTEGER NOT NULL, queue TEXT NOT NULL, batch_key TEXT, images INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, started REAL, attempt_started REAL, finished REAL, attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL, time_limit_s REAL NOT NULL, progress REAL NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', eta_s REAL,
    preview TEXT, error TEXT, metrics TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0, lease_owner TEXT,
    lease_expires REAL, worker TEXT, leader TEXT, parent TEXT, staging TEXT{owner}
);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, batch_key);
CREATE TABLE IF NOT EXISTS events (job_id TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id);
CREATE TABLE IF NOT EXISTS artifacts (
    job_id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY, info TEXT NOT NULL, started REAL NOT NULL, last_seen REAL NOT NULL, job_id TEXT
);
"""
V2_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, state);
CREATE INDEX IF NOT EXISTS jobs_by_owner_start ON jobs (owner, attempt_started);
CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (queue, state, priority, owner, created);
"""
# users.sqlite as released (git show ff79e64^:studio/users.py); {not_null} lets a test make a corrupt one
USERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, admin INTEGER NOT NULL DEFAULT 0, password TEXT,
                                  created REAL {not_null});
CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, user TEXT NOT NULL, created REAL NOT NULL, last_used REAL);
CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens (user);
CREATE TABLE IF NOT EXISTS failures (kind TEXT NOT NULL, key TEXT NOT NULL, count INTEGER NOT NULL, last REAL NOT NULL,
                                     locked_until REAL NOT NULL DEFAULT 0, PRIMARY KEY (kind, key));
"""
PASSWORD = "correct horse battery"
TOKEN = "st_" + "7" * 40
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
EVENTS = [("queued", "queued"), ("started", "attempt 1 on w1"), ("progress", "1/2"), ("progress", "2/2"),
          ("succeeded", "succeeded")]  # all at the same second: only their order tells them apart


def _settings(home: Path) -> Settings:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
    return load_settings({**env, "STUDIO_HOME": str(home)})


def _old_store(store: Path, version: int, users_not_null: str = "NOT NULL", bad_user: bool = False) -> None:
    """An embedded store as Latent Studio of schema `version` (1 or 2) left it."""
    store.mkdir(parents=True)
    db = sqlite3.connect(store / "jobs.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V2_SCHEMA.format(owner=",\n    owner TEXT" if version >= 2 else ""))
    if version >= 2:
        db.executescript(V2_INDEXES)
    db.execute(f"PRAGMA user_version = {version}")
    now = 1_700_000_000.0
    spec = '{"op": "sample", "backend": "vae", "n": 1, "seed": 3}'
    owner = ("alice",) if version >= 2 else ()
    columns = "id, state, op, backend, spec, priority, queue, created, started, finished, attempts, max_attempts, " \
              "time_limit_s, message, metrics, error" + (", owner" if version >= 2 else "")
    marks = ", ".join("?" * (16 + len(owner)))
    db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})",
               ("01d00001", "SUCCEEDED", "sample", "vae", spec, 5, "studio.any.vae", now, now + 1, now + 2, 1, 3,
                1800.0, "succeeded", '{"seconds": 1.0}', None, *owner))
    db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})",
               ("01d00002", "FAILED", "sample", "vae", spec, 7, "studio.any.vae", now + 10, now + 11, now + 12, 3, 3,
                1800.0, "failed", None, "backend vae: out of memory", *owner))
    for kind, message in EVENTS:
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", ("01d00001", now, kind, message))
    db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", ("01d00002", now + 10, "failed", "backend vae: out of memory"))
    for name, data, kind in (("image_000.png", PNG, "image"), ("record.json", b'{"seed": 3}', "json")):
        path = store / "jobs" / "01d00001" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        db.execute("INSERT INTO artifacts VALUES (?, ?, ?, ?, ?)", ("01d00001", name, kind, str(path), len(data)))
    db.execute("INSERT INTO workers VALUES (?, ?, ?, ?, ?)", ("w1", '{"hostname": "h"}', now, now, None))
    db.close()
    users = sqlite3.connect(store / "users.sqlite", isolation_level=None)
    users.executescript(USERS_SCHEMA.format(not_null=users_not_null))
    users.execute("INSERT INTO users VALUES (?, ?, ?, ?)", ("alice", 1, hash_password(PASSWORD), now))
    users.execute("INSERT INTO tokens VALUES (?, ?, ?, ?)", (token_hash(TOKEN), "alice", now, None))
    if bad_user:  # a row the new schema cannot hold: the migration fails after it changed the other tables
        users.execute("INSERT INTO users VALUES (?, ?, ?, ?)", ("bob", 0, None, None))
    users.close()


def _snapshot(path: Path) -> dict:
    """Everything an old store holds, read with plain sqlite3 (its version, tables, columns and rows)."""
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {"version": db.execute("PRAGMA user_version").fetchone()[0],
                **{t: ([c[1] for c in db.execute(f"PRAGMA table_info({t})")],
                       sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr)) for t in tables}}
    finally:
        db.close()


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_embedded_store_is_migrated_with_its_history(tmp_path: Path, version: int) -> None:
    settings = _settings(tmp_path / "home")
    _old_store(settings.store_path, version)
    jobs = JobStore.from_settings(settings)
    assert jobs.schema_version() == SCHEMA_VERSION
    assert [(j["id"], j["state"], j["owner"]) for j in jobs.list()] == \
        [("01d00002", "FAILED", "alice" if version == 2 else None), ("01d00001", "SUCCEEDED",
                                                                      "alice" if version == 2 else None)]
    first = jobs.get("01d00001")
    assert [(e["kind"], e["message"]) for e in first["events"]] == EVENTS
    assert first["metrics"] == {"seconds": 1.0} and jobs.get("01d00002")["error"] == "backend vae: out of memory"
    assert [(a["name"], a["key"], a["size"]) for a in first["artifacts"]] == \
        [("image_000.png", "jobs/01d00001/image_000.png", len(PNG)), ("record.json", "jobs/01d00001/record.json", 11)]
    arts = ArtifactStore.from_settings(settings)
    assert arts.read(first, "image_000.png") == PNG and arts.read(first, "record.json") == b'{"seed": 3}'
    assert arts.collect_orphans(jobs, older_than_s=-1) == 0  # the old layout's files are committed ones
    users = UserStore.from_settings(settings)
    assert users.check("alice", PASSWORD) and not users.check("alice", "wrong password")
    assert users.user_for_token(TOKEN) == "alice" and users.is_admin("alice")
    # the migrated store goes on: new jobs and their events come after the old ones
    jobs.create(NewJob(id="e0e00001", spec={"op": "sample", "backend": "vae", "n": 1, "seed": 0}, priority=5,
                       queue="studio.any.vae", max_attempts=3, time_limit_s=60.0))
    assert jobs.get("e0e00001")["events"][0]["ts"] > first["events"][-1]["ts"]
    assert [(e["kind"], e["message"]) for e in jobs.get("01d00001")["events"]] == EVENTS
    # and opening it again (another process of the new version) changes nothing
    migrated = _snapshot(settings.store_path / "jobs.sqlite")
    again = JobStore(Database(f"sqlite:///{settings.store_path / 'jobs.sqlite'}"))
    assert again.get("01d00001")["events"] == jobs.get("01d00001")["events"]
    assert _snapshot(settings.store_path / "jobs.sqlite") == migrated


def test_a_failed_migration_leaves_the_old_store_as_it_was(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "home")
    _old_store(settings.store_path, 2, users_not_null="", bad_user=True)
    path = settings.store_path / "jobs.sqlite"
    before = _snapshot(path)
    assert before["version"] == 2 and "path" in before["artifacts"][0]
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever it raises (see the next test), nothing may change
        JobStore(Database(f"sqlite:///{path}"))
    after = _snapshot(path)
    assert after == before  # no new column, table, row or version: the events and artifacts rebuilds rolled back
    # with the bad row removed, the same store migrates
    users = sqlite3.connect(settings.store_path / "users.sqlite")
    users.execute("DELETE FROM users WHERE name = 'bob'")
    users.commit()
    users.close()
    jobs = JobStore(Database(f"sqlite:///{path}"))
    assert [(e["kind"], e["message"]) for e in jobs.get("01d00001")["events"]] == EVENTS


def test_a_failed_migration_is_refused_in_one_line_without_secrets(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "home")
    _old_store(settings.store_path, 2, users_not_null="", bad_user=True)
    with pytest.raises(StudioError) as err:
        JobStore(Database(f"sqlite:///{settings.store_path / 'jobs.sqlite'}"))
    assert "\n" not in str(err.value) and "scrypt$" not in str(err.value) and "migrat" in str(err.value)


def _one_line(exc: pytest.ExceptionInfo, version: int) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 300, text
    assert f"schema version {version}" in text and f"({SCHEMA_VERSION})" in text and "upgrade" in text, text
    return text


def test_a_newer_sqlite_database_is_refused_in_one_line(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "home")
    path = settings.store_path / "jobs.sqlite"
    JobStore(Database(f"sqlite:///{path}")).create(NewJob(id="aaaa0001", spec={"op": "sample", "backend": "vae",
                                                                               "n": 1}, priority=5, queue="q",
                                                          max_attempts=3, time_limit_s=60.0))
    db = sqlite3.connect(path)
    db.execute("UPDATE studio_meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    before = _snapshot(path)
    with pytest.raises(StudioError) as err:
        JobStore(Database(f"sqlite:///{path}"))
    _one_line(err, 99)
    assert _snapshot(path) == before
    proc = subprocess.run([sys.executable, "-m", "studio", "db", "status"], capture_output=True, text=True,
                          timeout=120, env={**{k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")},
                                            "STUDIO_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"schema version 99, newer than this Latent Studio knows ({SCHEMA_VERSION})" in proc.stderr


def test_a_legacy_file_stamped_newer_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _old_store(store, 2)
    db = sqlite3.connect(store / "jobs.sqlite")
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(StudioError) as err:
        JobStore(Database(f"sqlite:///{store / 'jobs.sqlite'}"))
    _one_line(err, 7)


@pytest.mark.integration
def test_a_newer_postgres_database_is_refused_in_one_line() -> None:
    if not postgres_available():
        pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (see ENVIRONMENT.md)")
    pg = PostgresDatabase().create()
    first = Database(pg.url)
    try:
        store = JobStore(first)
        store.create(NewJob(id="aaaa0001", spec={"op": "sample", "backend": "vae", "n": 1}, priority=5, queue="q",
                            max_attempts=3, time_limit_s=60.0))
        with first.write() as conn:
            conn.execute(update(studio_meta).where(studio_meta.c.key == "schema_version").values(value="99"))
        newer = Database(pg.url)  # another process of this version, opening the database a newer one stamped
        try:
            with pytest.raises(StudioError) as err:
                JobStore(newer)
            text = _one_line(err, 99)
            assert pg.name in text
        finally:
            newer.dispose()
        assert store.get("aaaa0001")["state"] == "QUEUED"  # refused, not damaged
    finally:
        first.dispose()
        pg.drop()

