"""Blob storage: one behaviour suite over the local folder and S3 (a real moto_server), plus the test services."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from studio.config import load_settings
from studio.errors import InputError, NotFound
from studio.storage import LocalStorage, S3Storage, Storage, StorageUnavailable, open_storage, storage_for
from studio.testing_services import PostgresDatabase, S3Server, free_port, postgres_available

SECRET = "not-a-real-secret-9f3a"  # the secret key the S3 server is used with: no message may show it


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": SECRET}.items():
        monkeypatch.setenv(name, value)
    return s3_server


def _bucket(server: S3Server) -> str:
    return server.create_bucket(f"b-{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    server = request.getfixturevalue("s3_env")
    return S3Storage(_bucket(server) + "/studio/prefix", server.endpoint_url)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 300 and SECRET not in text
    return text


def test_put_get_round_trip_and_overwrite(store: Storage) -> None:
    assert not store.exists("runs/1/image.png")
    store.put("runs/1/image.png", b"first")
    assert store.get("runs/1/image.png") == b"first"
    assert store.exists("runs/1/image.png")
    store.put("runs/1/image.png", b"second, longer")
    assert store.get("runs/1/image.png") == b"second, longer"
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert [key for key, _ in store.list("")] == ["empty", "runs/1/image.png"]


def test_missing_key_is_not_found(store: Storage, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as exc:
        store.get("runs/missing.png")
    assert "runs/missing.png" in _one_line(exc)
    dest = tmp_path / "dest.png"
    with pytest.raises(NotFound):
        store.get_file("runs/missing.png", dest)
    assert not dest.exists() and list(tmp_path.glob("*dest*")) == []
    store.delete("runs/missing.png")  # missing is fine
    assert store.delete_prefix("runs/") == 0


def test_list_prefix_and_times(store: Storage) -> None:
    before = time.time()
    for key in ("runs/a/1.png", "runs/a/2.png", "runs/ab.txt", "runs/b/1.png", "other/x"):
        store.put(key, key.encode())
    after = time.time()
    listed = store.list("runs/a/")
    assert [key for key, _ in listed] == ["runs/a/1.png", "runs/a/2.png"]
    assert all(before - 5 <= t <= after + 5 for _, t in listed)
    assert [key for key, _ in store.list("runs/a")] == ["runs/a/1.png", "runs/a/2.png", "runs/ab.txt"]
    assert [key for key, _ in store.list("")] == ["other/x", "runs/a/1.png", "runs/a/2.png", "runs/ab.txt",
                                                   "runs/b/1.png"]
    assert store.list("nothing/") == [] and store.list("runs/c") == []


def test_delete_and_delete_prefix(store: Storage) -> None:
    for key in ("attempt/7/a", "attempt/7/b", "attempt/70/c", "keep/d"):
        store.put(key, b"x")
    store.delete("keep/d")
    assert not store.exists("keep/d")
    assert store.delete_prefix("attempt/7/") == 2
    assert [key for key, _ in store.list("")] == ["attempt/70/c"]
    assert store.delete_prefix("") == 1 and store.list("") == []


def test_big_file_streams_both_ways(store: Storage, tmp_path: Path) -> None:
    src = tmp_path / "weights.bin"
    data = os.urandom(6 * 1024 * 1024 + 123)
    src.write_bytes(data)
    store.put_file("weights/abc.safetensors", src)
    out = tmp_path / "out" / "w.bin"
    out.parent.mkdir()
    store.get_file("weights/abc.safetensors", out)
    assert out.read_bytes() == data
    assert os.listdir(out.parent) == ["w.bin"]  # no temp file left beside it
    if isinstance(store, S3Storage):  # it went up in parts (an ETag of a multipart upload ends in -<parts>)
        head = store._client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/weights/abc.safetensors")
        assert head["ETag"].strip('"').endswith("-2")
    with pytest.raises(InputError):
        store.put_file("weights/none", tmp_path / "no-such-file")
    with pytest.raises(InputError, match="folder does not exist"):
        store.get_file("weights/abc.safetensors", tmp_path / "no-folder" / "w.bin")


def test_presigned_url(store: Storage) -> None:
    store.put("share/img.png", b"\x89PNG bytes")
    url = store.presigned_url("share/img.png", expires_s=60)
    if isinstance(store, LocalStorage):
        assert url is None
        return
    assert SECRET not in url
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.read() == b"\x89PNG bytes"


def test_reads_never_see_a_torn_object(store: Storage) -> None:
    size = 512 * 1024
    store.put("live", b"A" * size)
    seen: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(store.get("live"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(12):
            store.put("live", (b"B" if i % 2 == 0 else b"A") * size)
    finally:
        stop.set()
        reader.join(30)
    assert seen and all(len(blob) == size and blob.count(blob[:1]) == size for blob in seen)


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", "", "a b", "a/../../x", "x/", "k" * 513])
def test_bad_keys_refused(store: Storage, key: str) -> None:
    for call in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key),
                 lambda: store.delete(key), lambda: store.presigned_url(key)):
        with pytest.raises(InputError) as exc:
            call()
        _one_line(exc)
    with pytest.raises(InputError):
        store.list("../")
    assert store.list("") == []


def test_local_symlink_out_of_root_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"private")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file").symlink_to(outside / "secret")
    store = LocalStorage(root)
    store.put("ok/inside", b"fine")
    for call in (lambda: store.get("link/secret"), lambda: store.put("link/new", b"x"), lambda: store.get("file"),
                 lambda: store.get_file("file", tmp_path / "copy"), lambda: store.delete("link/secret")):
        with pytest.raises(InputError) as exc:
            call()
        assert "outside" in _one_line(exc)
    assert sorted(os.listdir(outside)) == ["secret"] and (outside / "secret").read_bytes() == b"private"
    assert [key for key, _ in store.list("")] == ["ok/inside"]
    assert store.list("link/") == []


@pytest.mark.parametrize("url", ["ftp://host/x", "https://user:pw@host/b", "/some/folder", "s3://", "s3://Bad_Bucket",
                                 "s3://bucket/../x"])
def test_bad_storage_urls_refused(url: str, tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        open_storage(url, tmp_path)
    text = _one_line(exc)
    assert "s3://bucket/prefix" in text and "pw" not in text


def test_storage_for_settings_is_cached(tmp_path: Path) -> None:
    settings = load_settings({"STUDIO_HOME": str(tmp_path)})
    store = storage_for(settings)
    assert isinstance(store, LocalStorage) and store.root == tmp_path / "store"
    assert storage_for(load_settings({"STUDIO_HOME": str(tmp_path)})) is store
    assert storage_for(load_settings({"STUDIO_HOME": str(tmp_path / "other")})) is not store


@pytest.mark.integration
def test_s3_from_settings(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = _bucket(s3_env)
    settings = load_settings({"STUDIO_HOME": str(tmp_path), "STUDIO_STORAGE_URL": bucket + "/p",
                              "STUDIO_S3_ENDPOINT_URL": s3_env.endpoint_url})
    store = storage_for(settings)
    assert isinstance(store, S3Storage) and store.url == bucket + "/p" and storage_for(settings) is store
    store.put("k", b"v")
    assert s3_env.client().get_object(Bucket=store.bucket, Key="p/k")["Body"].read() == b"v"


@pytest.mark.integration
def test_unreachable_endpoint_is_one_line_fast(s3_env: S3Server) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = S3Storage("s3://bucket/p", endpoint)
    for call in (lambda: store.get("k"), lambda: store.put("k", b"x"), lambda: store.list("")):
        start = time.monotonic()
        with pytest.raises(StorageUnavailable) as exc:
            call()
        assert time.monotonic() - start < 5
        text = _one_line(exc)
        assert "s3://bucket/p" in text and endpoint in text and "unreachable" in text


@pytest.mark.integration
def test_missing_bucket_is_unavailable(s3_env: S3Server) -> None:
    store = S3Storage("s3://no-such-bucket-here/p", s3_env.endpoint_url)
    for call in (lambda: store.get("k"), lambda: store.exists("k"), lambda: store.put("k", b"x")):
        with pytest.raises(StorageUnavailable) as exc:
            call()
        assert "bucket no-such-bucket-here does not exist at " + s3_env.endpoint_url in _one_line(exc)


@pytest.mark.integration
def test_outage_then_recovery(s3_env: S3Server) -> None:
    store = S3Storage(_bucket(s3_env), s3_env.endpoint_url)
    impatient = S3Storage(store.url, s3_env.endpoint_url, max_attempts=1, read_timeout=1)
    store.put("k", b"kept")
    impatient.get("k")
    s3_env.pause()
    try:
        start = time.monotonic()
        with pytest.raises(StorageUnavailable) as exc:
            impatient.get("k")
        assert time.monotonic() - start < 5 and "unreachable" in _one_line(exc)
    finally:
        s3_env.resume()
    assert store.get("k") == b"kept" and impatient.get("k") == b"kept"


@pytest.mark.integration
def test_s3_server_restart_loses_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with S3Server() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        store = S3Storage(server.create_bucket("kept"), server.endpoint_url)
        store.put("k", b"v")
        server.stop()
        with pytest.raises(StorageUnavailable, match="unreachable"):
            store.get("k")
        server.start()
        with pytest.raises(StorageUnavailable, match="bucket kept does not exist"):
            store.get("k")


@pytest.mark.integration
def test_postgres_database_lifecycle() -> None:
    if not postgres_available():
        pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (trust auth, user postgres)")
    import psycopg
    import sqlalchemy as sa

    db = PostgresDatabase().create()
    try:
        assert db.url.startswith("postgresql://postgres@127.0.0.1:5432/studio_test") and db.exists()
        engine = sa.create_engine(db.url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        engine.dispose()
        victim = psycopg.connect(db.url, autocommit=True)
        assert victim.execute("SELECT count(*) FROM t").fetchone() == (1,)
        assert db.terminate_connections() == 1
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        victim.close()
        survivor = psycopg.connect(db.url)  # a held connection does not stop drop()
    finally:
        db.drop()
    assert not db.exists()
    survivor.close()
    db.drop()  # a second drop is fine
