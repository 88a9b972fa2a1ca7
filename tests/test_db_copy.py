"""`studio db copy`: an embedded studio (SQLite + local folder) moved to PostgreSQL + S3 keeps its whole history
(ids, states, events in order, artifact bytes, users, vectors, models); a non-empty target, the studio's own
database and bad URLs are refused in one line; a copy that fails half-way leaves nothing in the target."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from studio.config import Settings, load_settings
from studio.db import SCHEMA_VERSION, Database
from studio.db import events as T_EV
from studio.db import models as T_MODELS
from studio.db import vectors as T_VECTORS
from studio.dbcopy import copy_records, table_counts
from studio.errors import InputError, StudioError
from studio.executor import Artifact, JobResult
from studio.queue.jobstore import Ending, JobStore, NewJob
from studio.queue.store import ArtifactStore
from studio.storage import LocalStorage
from studio.testing_services import PostgresDatabase, S3Server
from studio.users import UserStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # stands for an image: bytes must arrive identical
WEIGHTS = os.urandom(300_000)
SHA = "ab" * 32
EXTRA_EVENTS = 1234  # more than one chunk of rows (CHUNK_ROWS) in a table
ENV_KEYS = ("STUDIO_DATABASE_URL", "STUDIO_STORAGE_URL", "STUDIO_S3_ENDPOINT_URL", "STUDIO_STORE_DIR")


def _settings(home: Path, **extra: str) -> Settings:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    return load_settings({**env, "STUDIO_HOME": str(home), **extra})


def _new(job_id: str, seed: int = 0) -> NewJob:
    return NewJob(id=job_id, spec={"op": "sample", "backend": "toy", "n": 1, "seed": seed}, priority=5,
                  queue="t.any.toy", max_attempts=3, time_limit_s=60.0)


def _build_embedded(settings: Settings) -> dict:
    """Real records made through the job store and artifact store as a worker makes them, plus a user, a vector
    and a model (row and object). Returns what the copy must preserve."""
    jobs = JobStore.from_settings(settings)
    arts = ArtifactStore.from_settings(settings)
    for i, job_id in enumerate(("aaaa0001", "aaaa0002", "aaaa0003")):
        jobs.create(_new(job_id, seed=i))
    for job_id in ("aaaa0001", "aaaa0002"):
        jobs.claim(job_id, "w1/x", "w1", lease_s=30)
    result = JobResult([Artifact("image_000.png", PNG, "image")], {"fid": 1.5})
    result.add_json("record.json", {"seed": 0})
    prefix, listed = arts.stage("aaaa0001", result)
    done = jobs.finish_many("w1/x", [Ending("aaaa0001", "SUCCEEDED", metrics=result.metrics, artifacts=listed,
                                           staging=prefix),
                                    Ending("aaaa0002", "FAILED", error="backend toy: out of memory")])
    assert done == {"aaaa0001", "aaaa0002"}
    db = jobs.db
    with db.write() as conn:
        conn.execute(insert(T_EV), [{"job_id": "aaaa0003", "ts": time.time() + i * 1e-3, "kind": "note",
                                     "message": f"note {i}"} for i in range(EXTRA_EVENTS)])
        conn.execute(insert(T_VECTORS).values(backend="toy", weights="0123456789abcdef", name="smile", owner=None,
                                              shared="[]", meta='{"space": "seed"}',
                                              key="vectors/toy/0123456789abcdef/smile.safetensors",
                                              created=time.time()))
        conn.execute(insert(T_MODELS).values(sha256=SHA, backend="toy", name="mine", key=f"models/{SHA}.safetensors",
                                             size=len(WEIGHTS), owner=None, source="import", meta="{}",
                                             created=time.time()))
    arts.storage.put("vectors/toy/0123456789abcdef/smile.safetensors", b"vector-bytes")
    arts.storage.put(f"models/{SHA}.safetensors", WEIGHTS)
    UserStore.from_settings(settings).add("alice", "correct horse battery")
    records = {job_id: jobs.get(job_id) for job_id in ("aaaa0001", "aaaa0002", "aaaa0003")}
    return {"jobs": records, "bytes": {(j["id"], a["name"]): arts.read(j, a["name"])
                                       for j in records.values() for a in j["artifacts"]}}


def _same_history(expected: dict, settings: Settings) -> None:
    jobs = JobStore.from_settings(settings)
    arts = ArtifactStore.from_settings(settings)
    assert sorted(j["id"] for j in jobs.list(limit=10)) == sorted(expected["jobs"])
    for job_id, before in expected["jobs"].items():
        assert jobs.get(job_id) == before  # state, spec, attempts, metrics, error, artifacts' keys, events in order
    assert len(expected["bytes"]) == 2
    for (job_id, name), data in expected["bytes"].items():
        assert arts.read(jobs.get(job_id), name) == data
    first = jobs.get("aaaa0001")
    assert first["state"] == "SUCCEEDED" and arts.read(first, "image_000.png") == PNG
    assert jobs.get("aaaa0002")["error"] == "backend toy: out of memory"
    assert len(jobs.get("aaaa0003")["events"]) == EXTRA_EVENTS + 1
    assert arts.storage.get(f"models/{SHA}.safetensors") == WEIGHTS
    assert arts.storage.get("vectors/toy/0123456789abcdef/smile.safetensors") == b"vector-bytes"
    with jobs.db.read() as conn:
        assert conn.execute(select(T_MODELS.c.name, T_MODELS.c.size)).all() == [("mine", len(WEIGHTS))]
        assert conn.execute(select(T_VECTORS.c.name)).scalars().all() == ["smile"]
    assert UserStore.from_settings(settings).check("alice", "correct horse battery")
    # the copy goes on living: new events follow the copied ones (PostgreSQL: the sequence moved past them)
    jobs.create(_new("bbbb0001"))
    assert len(jobs.get("bbbb0001")["events"]) == 1
    assert jobs.get("aaaa0001")["events"] == expected["jobs"]["aaaa0001"]["events"]


def test_copy_to_another_sqlite_file_and_folder_keeps_everything(tmp_path: Path) -> None:
    source = _settings(tmp_path / "old")
    expected = _build_embedded(source)
    target = _settings(tmp_path / "new")
    result = copy_records(Database(f"sqlite:///{tmp_path / 'old/store/jobs.sqlite'}"),
                          Database(f"sqlite:///{tmp_path / 'new/store/jobs.sqlite'}"),
                          LocalStorage(source.store_path), LocalStorage(target.store_path))
    assert result["tables"]["jobs"] == 3 and result["tables"]["events"] > EXTRA_EVENTS
    assert result["tables"]["users"] == 1 and result["objects"] == 4 and result["missing"] == []
    _same_history(expected, target)


def test_a_copy_that_fails_half_way_leaves_nothing_and_can_run_again(tmp_path: Path) -> None:
    source = _settings(tmp_path / "old")
    _build_embedded(source)
    src_db = Database(f"sqlite:///{tmp_path / 'old/store/jobs.sqlite'}")
    dst_db = Database(f"sqlite:///{tmp_path / 'new.sqlite'}")
    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"not a folder")  # the target storage cannot be written under a file
    with pytest.raises(StudioError) as err:
        copy_records(src_db, dst_db, LocalStorage(source.store_path), LocalStorage(blocked))
    assert "\n" not in str(err.value)
    assert set(table_counts(dst_db).values()) == {0}
    result = copy_records(src_db, dst_db, LocalStorage(source.store_path), LocalStorage(tmp_path / "objects"))
    assert table_counts(dst_db) == result["tables"] == table_counts(src_db)


def test_copy_refuses_a_nonempty_target_and_the_source_itself(tmp_path: Path) -> None:
    source = _settings(tmp_path / "old")
    _build_embedded(source)
    src_db = Database(f"sqlite:///{tmp_path / 'old/store/jobs.sqlite'}")
    busy = JobStore(tmp_path / "busy.sqlite")
    busy.create(_new("cccc0001"))
    storage = LocalStorage(source.store_path)
    with pytest.raises(InputError, match=r"already holds records \(1 jobs.*empty database") as err:
        copy_records(src_db, busy.db, storage, LocalStorage(tmp_path / "objects"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "objects").exists()  # refused before any object was copied
    with pytest.raises(InputError, match="the studio's own database"):
        copy_records(src_db, Database(f"sqlite:///{tmp_path / 'old/store/../store/jobs.sqlite'}"), storage, storage)


# ----- PostgreSQL + S3, through the command line -----

def _studio(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, timeout=300,
                          env={**base, **env})


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.integration
def test_db_copy_moves_an_embedded_studio_to_postgres_and_s3(tmp_path: Path, s3_server: S3Server,
                                                            postgres: PostgresDatabase,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "embedded"
    embedded = _settings(home)
    expected = _build_embedded(embedded)
    JobStore.from_settings(embedded).worker_seen("w1", {"hostname": "gpu1"})  # the studio still runs
    bucket = s3_server.create_bucket(f"b-{uuid.uuid4().hex[:10]}") + "/studio"
    env = {"STUDIO_HOME": str(home), **s3_server.env()}

    proc = _studio("db", "copy", "--to", postgres.url, "--storage-to", bucket, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "warning: 1 worker(s) reported in the last minute: stop the studio first" in proc.stderr
    assert "copying events: " in proc.stderr and "copying objects: 4/4" in proc.stderr
    assert "  jobs       3" in proc.stdout and f"and 4 objects to {bucket}" in proc.stdout

    server_env = {"STUDIO_DATABASE_URL": postgres.url, "STUDIO_STORAGE_URL": bucket}
    status = _studio("db", "status", env={**env, "STUDIO_HOME": str(tmp_path / "elsewhere"), **server_env})
    assert status.returncode == 0, status.stderr
    assert f"database  {postgres.url}  (schema version {SCHEMA_VERSION})" in status.stdout
    assert f"storage   {bucket}" in status.stdout
    assert "  jobs       3" in status.stdout and "  users      1" in status.stdout

    # a machine that shares no folder with the embedded studio sees the same history
    _same_history(expected, _settings(tmp_path / "elsewhere", **server_env,
                                      STUDIO_S3_ENDPOINT_URL=s3_server.endpoint_url))

    again = _studio("db", "copy", "--to", postgres.url, "--storage-to", bucket, env=env)
    assert "already holds records" in _one_line_error(again) and "empty database" in again.stderr

    # and back again: PostgreSQL + S3 (streamed through a server-side cursor) to a new embedded studio
    back = _settings(tmp_path / "back")
    server = _settings(tmp_path / "elsewhere", **server_env, STUDIO_S3_ENDPOINT_URL=s3_server.endpoint_url)
    result = copy_records(Database(postgres.url), Database(f"sqlite:///{back.store_path / 'jobs.sqlite'}"),
                          ArtifactStore.from_settings(server).storage, LocalStorage(back.store_path))
    assert table_counts(Database.for_settings(back)) == result["tables"] == table_counts(Database(postgres.url))
    assert result["objects"] == 4 and result["tables"]["jobs"] == 4
    jobs = JobStore.from_settings(back)
    assert jobs.get("aaaa0003")["events"] == expected["jobs"]["aaaa0003"]["events"]
    assert ArtifactStore.from_settings(back).read(jobs.get("aaaa0001"), "image_000.png") == PNG


@pytest.mark.integration
def test_db_copy_bad_urls_are_one_line(tmp_path: Path, s3_server: S3Server, postgres: PostgresDatabase) -> None:
    env = {"STUDIO_HOME": str(tmp_path / "home"), **s3_server.env()}
    JobStore.from_settings(_settings(tmp_path / "home")).create(_new("dddd0001"))
    cases = [
        (["--to", "mysql://u:secret-pw@h/db"], "is not a supported database URL"),
        (["--to", "not a url"], "is not a supported database URL"),
        (["--to", postgres.url + "_missing"], "does not exist"),
        (["--to", "postgresql://postgres@127.0.0.1:1/x"], "is unavailable"),
        (["--to", postgres.url, "--storage-to", "ftp://h/x"], "--storage-to 'ftp://h/x' is not supported"),
        (["--to", postgres.url, "--storage-to", "s3://Bad_Bucket/x"], "invalid bucket"),
        (["--to", postgres.url, "--storage-to", "s3://no-such-bucket-here/x"], "does not exist"),
        (["--to", postgres.url, "--storage-to", "s3://b-x/y", "--s3-endpoint-url", "http://127.0.0.1:1"],
         "is unreachable"),
    ]
    for args, message in cases:
        line = _one_line_error(_studio("db", "copy", *args, env=env))
        assert message in line and "secret-pw" not in line, line
    assert set(table_counts(Database(postgres.url)).values()) == {0}  # nothing reached the target


def test_storage_gc_removes_only_old_uncommitted_uploads(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "home")
    _build_embedded(settings)
    arts = ArtifactStore.from_settings(settings)
    arts.storage.put("jobs/aaaa0003/20260101T000000-deadbeef0000/image_000.png", b"orphan")
    env = {"STUDIO_HOME": str(tmp_path / "home")}
    young = _studio("storage", "gc", env=env)
    assert young.returncode == 0 and "removed 0 orphaned object(s)" in young.stdout, young.stderr
    old = _studio("storage", "gc", "--older-than", "0", env=env)
    assert old.returncode == 0 and "removed 1 orphaned object(s)" in old.stdout, old.stderr
    job = JobStore.from_settings(settings).get("aaaa0001")
    assert arts.read(job, "image_000.png") == PNG  # committed artifacts stay
    assert "--older-than must be 0 or more" in _one_line_error(_studio("storage", "gc", "--older-than", "-5",
                                                                        env=env))
