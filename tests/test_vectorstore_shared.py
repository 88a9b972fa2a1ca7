"""Vectors beyond one machine: metadata in the records, tensors in storage, on both stacks.

Each test runs on {SQLite file + local folder} and {PostgreSQL + S3 (a real moto_server)}. A "machine" is a
Settings with its own STUDIO_HOME and the shared database and storage URLs; the cross-machine load also runs in a
separate process that shares nothing with this one but those URLs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy import select

from studio.config import Settings, load_settings
from studio.db import Database, studio_meta
from studio.db import shared as shared_db
from studio.errors import InputError, NotFound
from studio.storage import storage_for
from studio.testing_services import PostgresDatabase, S3Server, postgres_available, s3_server_available
from studio.vectorstore import check_can_save, list_vectors, load_vector, save_vector, share_vector

SHA = "ab" * 32
Machine = Callable[[str], Settings]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    if not s3_server_available():
        pytest.fail("moto_server is not installed: pip install 'moto[server]' (a dev dependency)")
    with S3Server() as server:
        yield server


@pytest.fixture(params=["sqlite+local", pytest.param("postgres+s3", marks=pytest.mark.integration)])
def machine(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Machine]:
    """machine(name) -> the Settings of a studio with its own home and the shared records and storage."""
    monkeypatch.delenv("STUDIO_CONFIG", raising=False)
    databases: list[str] = []
    if request.param == "sqlite+local":
        shared = {"STUDIO_DATABASE_URL": f"sqlite:///{tmp_path / 'shared' / 'records.sqlite'}",
                  "STUDIO_STORE_DIR": str(tmp_path / "shared" / "store")}
        pg = None
    else:
        if not postgres_available():
            pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (see docs: the tests need the local server)")
        server = request.getfixturevalue("s3_server")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)  # boto3 reads the AWS_* variables from the environment
        pg = PostgresDatabase().create()
        bucket = server.create_bucket(f"vectors-{uuid.uuid4().hex[:10]}")
        shared = {"STUDIO_DATABASE_URL": pg.url, "STUDIO_STORAGE_URL": f"{bucket}/studio",
                  "STUDIO_S3_ENDPOINT_URL": server.endpoint_url}

    def make(name: str) -> Settings:
        settings = load_settings({**shared, "STUDIO_HOME": str(tmp_path / name)})
        databases.append(settings.database_url)
        return settings

    make.env = shared  # type: ignore[attr-defined]
    yield make
    if pg is not None:
        for url in set(databases):
            shared_db(url).dispose()  # this process's pooled connections, before the database goes
        pg.drop()


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 400, text
    return text


def _load_elsewhere(env: dict[str, str], home: Path, name: str, viewer: str | None = None) -> dict:
    """Load a vector in a fresh process (another "machine": no caches, no folders shared with this one)."""
    code = ("import json, sys; from studio.config import load_settings; from studio.vectorstore import load_vector; "
            "v, m = load_vector(load_settings(), 'vae', sys.argv[1], sys.argv[2], viewer=sys.argv[3] or None); "
            "print(json.dumps({'values': v.flatten().tolist(), 'shape': list(v.shape), 'dtype': str(v.dtype), "
            "'meta': m}))")
    proc = subprocess.run([sys.executable, "-c", code, SHA, name, viewer or ""], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env, "STUDIO_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_vector_fitted_on_one_machine_is_listed_and_loaded_on_another(machine: Machine) -> None:
    from studio.executor import store_relative as _store_relative

    a, b = machine("gpu-a"), machine("gpu-b")
    vector = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(7))
    key = save_vector(a, "vae", SHA, "thick", vector, {"space": "z", "method": "mean", "auc": 0.91})
    assert key.startswith(f"vectors/vae/{SHA[:16]}/") and key.endswith("/thick.safetensors")  # under its bytes' hash
    assert _store_relative(key, a) == "thick.safetensors"  # what a fit job reports: a file name, never a path
    rows = list_vectors(b)
    assert [(r["backend"], r["name"], r["sha256"], r["space"], r["auc"]) for r in rows] == \
        [("vae", "thick", SHA, "z", 0.91)]
    loaded, meta = load_vector(b, "vae", SHA, "thick")
    assert torch.equal(loaded, vector) and loaded.dtype == torch.float32 and meta["shape"] == [4, 3, 3]
    elsewhere = _load_elsewhere(machine.env, b.home, "thick")  # type: ignore[attr-defined]
    assert torch.equal(torch.tensor(elsewhere["values"]).reshape(elsewhere["shape"]), vector)
    assert elsewhere["meta"]["method"] == "mean" and elsewhere["meta"]["space"] == "z"
    assert not a.vectors_path.exists() and not b.vectors_path.exists()  # nothing kept in a machine's own folders
    save_vector(b, "vae", SHA, "thick", torch.zeros(4, 3, 3), {"space": "z", "method": "pca"})  # re-fit on B
    again, meta = load_vector(a, "vae", SHA, "thick")
    assert torch.equal(again, torch.zeros(4, 3, 3)) and meta["method"] == "pca" and "auc" not in meta
    with pytest.raises(NotFound, match=r"no vector 'thick' for backend 'vae' with weights cdcdcdcdcdcdcdcd "
                                       r"\(stored: none\)"):
        load_vector(b, "vae", "cd" * 32, "thick")  # other weights do not see it


def test_owners_and_sharing_hold_across_machines(machine: Machine) -> None:
    a, b = machine("gpu-a"), machine("gpu-b")
    save_vector(a, "vae", SHA, "smile", torch.ones(3), {"space": "z"}, owner="alice")
    save_vector(a, "vae", SHA, "public", torch.ones(3), {"space": "z"})
    assert [r["name"] for r in list_vectors(b, viewer="mallory")] == ["public"]
    assert [r["name"] for r in list_vectors(b, viewer="alice")] == ["public", "smile"]
    assert [r["name"] for r in list_vectors(b, "vae")] == ["public", "smile"]  # admins
    with pytest.raises(NotFound) as hidden:
        load_vector(b, "vae", SHA, "smile", viewer="mallory")
    assert _one_line(hidden).endswith("(stored: public)")
    for name in ("smile", "public"):
        with pytest.raises(InputError) as refused:
            check_can_save(b, "vae", SHA, name, "mallory")
        assert _one_line(refused) == f"vector '{name}' belongs to another user; choose another name"
        with pytest.raises(InputError, match="belongs to another user"):
            save_vector(b, "vae", SHA, name, torch.zeros(3), {"space": "z"}, owner="mallory")
    assert load_vector(a, "vae", SHA, "smile", viewer="alice")[0].tolist() == [1.0, 1.0, 1.0]  # untouched
    with pytest.raises(NotFound, match="only its owner can share it"):
        share_vector(b, "vae", SHA, "public", ["mallory"], viewer="mallory")
    with pytest.raises(NotFound, match="no vector 'smile'"):
        share_vector(b, "vae", SHA, "smile", ["mallory"], viewer="mallory")
    meta = share_vector(b, "vae", SHA, "smile", ["mallory"], viewer="alice")
    assert meta["owner"] == "alice" and meta["shared"] == ["mallory"]
    vector, meta = load_vector(a, "vae", SHA, "smile", viewer="mallory")
    assert vector.tolist() == [1.0, 1.0, 1.0] and meta["shared"] == ["mallory"]
    assert [r["name"] for r in list_vectors(a, viewer="mallory")] == ["public", "smile"]
    save_vector(b, "vae", SHA, "smile", torch.full((3,), 2.0), {"space": "z"}, owner="alice")  # her own, elsewhere
    assert load_vector(a, "vae", SHA, "smile")[0].tolist() == [2.0, 2.0, 2.0]


def test_corrupt_or_missing_stored_bytes_give_one_clear_line(machine: Machine) -> None:
    a, b = machine("gpu-a"), machine("gpu-b")
    key = save_vector(a, "vae", SHA, "thick", torch.arange(8.0), {"space": "z"})
    store = storage_for(a)
    good = store.get(key)

    store.put(key, b"\xff" * 40)  # not safetensors at all
    with pytest.raises(InputError) as garbage:
        load_vector(b, "vae", SHA, "thick")
    assert _one_line(garbage).startswith("stored vector 'thick' is unreadable: weights file 'thick.safetensors' "
                                         "is not readable as safetensors")

    flipped = bytearray(good)
    flipped[-1] ^= 0x40  # a valid header over different data: only the recorded sha256 tells
    store.put(key, bytes(flipped))
    with pytest.raises(InputError) as changed:
        load_vector(b, "vae", SHA, "thick")
    assert _one_line(changed).startswith("stored vector 'thick' is corrupt: its bytes in storage")

    store.delete(key)
    with pytest.raises(InputError) as missing:
        load_vector(b, "vae", SHA, "thick")
    assert "is missing from storage" in _one_line(missing)
    assert [r["name"] for r in list_vectors(b)] == ["thick"]  # still listed: a re-fit replaces it

    save_vector(b, "vae", SHA, "thick", torch.arange(8.0), {"space": "z"})
    assert load_vector(a, "vae", SHA, "thick")[0].tolist() == list(map(float, range(8)))


def _legacy(home: Path, name: str, vector: torch.Tensor, meta: dict, sha: str = SHA) -> Path:
    """A vector as the old studio wrote it: `<home>/vectors/<backend>/<sha16>/<name>.safetensors` + `.json`."""
    folder = home / "vectors" / "vae" / sha[:16]
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"vector": vector}, str(folder / f"{name}.safetensors"), metadata={"space": meta["space"], "name": name})
    record = {**meta, "name": name, "backend": "vae", "sha256": sha, "shape": list(vector.shape),
              "created": "2024-05-01T10:00:00+00:00"}
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    return folder / f"{name}.safetensors"


def test_legacy_vectors_are_imported_once_and_survive_the_upgrade(machine: Machine) -> None:
    a, b = machine("old-studio"), machine("new-gpu")
    old = _legacy(a.home, "smile", torch.full((2, 2), 3.0), {"space": "z", "method": "mean", "auc": 0.8,
                                                             "owner": "alice", "shared": ["bob"]})
    _legacy(a.home, "public", torch.ones(5), {"space": "w"}, sha="cd" * 32)
    _legacy(a.home, "clash", torch.ones(2), {"space": "z"})
    broken = _legacy(a.home, "broken", torch.ones(2), {"space": "z"})
    broken.write_bytes(b"\x00" * 4)  # unreadable: skipped, the others still come
    save_vector(b, "vae", SHA, "clash", torch.full((2,), 9.0), {"space": "z"})  # saved since, on the records

    rows = list_vectors(a)  # the first listing imports
    assert [(r["sha256"][:16], r["name"]) for r in rows] == [(SHA[:16], "clash"), (SHA[:16], "smile"),
                                                        ("cd" * 8, "public")]
    smile = rows[1]
    assert smile["owner"] == "alice" and smile["shared"] == ["bob"] and smile["auc"] == 0.8 and smile["sha256"] == SHA
    vector, meta = load_vector(b, "vae", SHA, "smile", viewer="bob")  # on a machine that never had the files
    assert torch.equal(vector, torch.full((2, 2), 3.0)) and meta["method"] == "mean"
    with pytest.raises(NotFound):
        load_vector(b, "vae", SHA, "smile", viewer="mallory")
    assert load_vector(b, "vae", "cd" * 32, "public")[0].tolist() == [1.0] * 5
    assert load_vector(a, "vae", SHA, "clash")[0].tolist() == [9.0, 9.0]  # the records win over an old file

    save_file({"vector": torch.zeros(2, 2)}, str(old), metadata={"space": "z", "name": "smile"})
    _legacy(a.home, "late", torch.ones(2), {"space": "z"})
    assert [r["name"] for r in list_vectors(a)] == ["clash", "smile", "public"]  # imported once: no second pass
    assert torch.equal(load_vector(a, "vae", SHA, "smile")[0], torch.full((2, 2), 3.0))
    with Database.for_settings(a).read() as conn:
        markers = conn.execute(select(studio_meta.c.key, studio_meta.c.value)
                               .where(studio_meta.c.key.like("vectors_imported:%"))).all()
    assert [value for _, value in markers] == [str((a.home / "vectors").resolve())]
    assert all(len(key) <= 64 for key, _ in markers)


def test_a_resave_that_fails_to_commit_leaves_the_old_vector_loadable(machine: Machine, monkeypatch) -> None:
    """A re-fit uploads its tensor under a key of its own and commits the row after: when the commit fails, readers
    keep loading the old vector (no half-replaced object), and a committed re-save removes the old object."""
    from studio.db import Database
    from studio.storage import storage_for

    a = machine("gpu-a")
    old = torch.ones(2, 2)
    first = save_vector(a, "vae", SHA, "kept", old, {"space": "z"})
    upsert = Database.upsert

    def failing(self, conn, table, values, keys):  # noqa: ANN001 - the row's write fails after the upload
        if table.name == "vectors":
            raise RuntimeError("the database went away mid-commit")
        return upsert(self, conn, table, values, keys)

    monkeypatch.setattr(Database, "upsert", failing)
    with pytest.raises(RuntimeError):
        save_vector(a, "vae", SHA, "kept", torch.zeros(2, 2), {"space": "z"})
    monkeypatch.setattr(Database, "upsert", upsert)
    loaded, _ = load_vector(a, "vae", SHA, "kept")
    assert torch.equal(loaded, old)
    second = save_vector(a, "vae", SHA, "kept", torch.full((2, 2), 3.0), {"space": "z"})
    assert second != first and not storage_for(a).exists(first)
    assert torch.equal(load_vector(a, "vae", SHA, "kept")[0], torch.full((2, 2), 3.0))
