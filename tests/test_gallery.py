"""The Gallery's store queries and zips: filters, paging and stars run in the records database, scoped per user; a
zip holds the PNGs byte for byte, with their records, and is bounded. Without processes (the store, storage and
client of one STUDIO_HOME); the same queries run on PostgreSQL."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import inspect, update

from studio.config import load_settings
from studio.db import Database, favourites, studio_meta
from studio.db import jobs as T_JOBS
from studio.errors import InputError, NotFound
from studio.queue.jobstore import JobStore, NewJob
from studio.record import make_record, pnginfo, read_record
from studio.storage import LocalStorage
from studio.ui.tabs.gallery import DAY_S, gallery_filters, job_refs, parse_day, write_zip

DAY1 = 1_780_000_000.0  # the jobs' creation times: day 1, 3 and 5 (the newest)
LEASE = "worker-lease"


def png(spec: dict, index: int) -> bytes:
    """A small PNG carrying the record of image `index` of `spec` (as the studio writes them)."""
    buf = io.BytesIO()
    record = make_record(spec, {"backend": spec["backend"], "model": spec.get("model")}, {"index": index})
    Image.new("L", (8, 8), 30 * index).save(buf, format="PNG", pnginfo=pnginfo(record))
    return buf.getvalue()


def finished(store: JobStore, storage: LocalStorage, job_id: str, spec: dict, owner: str | None, created: float,
             names: list[str], state: str = "SUCCEEDED") -> None:
    """A job of `owner` that ended in `state` at `created`, with image artifacts `names` in storage."""
    store.create(NewJob(id=job_id, spec=spec, priority=5, queue=f"q-{job_id}", max_attempts=1, time_limit_s=60.0,
                        owner=owner, images=len(names)))
    assert store.claim(job_id, LEASE, "w", 60.0)[0]["id"] == job_id
    prefix = f"jobs/{job_id}/a1"
    arts = []
    for i, name in enumerate(names):
        data = png(spec, i)
        storage.put(f"{prefix}/{name}", data)
        arts.append({"name": name, "kind": "image", "key": f"{prefix}/{name}", "size": len(data)})
    arts.append({"name": "metrics.json", "kind": "json", "key": f"{prefix}/metrics.json", "size": 2})
    storage.put(f"{prefix}/metrics.json", b"{}")
    assert store.finish(job_id, LEASE, state, artifacts=arts, staging=prefix)
    with store.db.write() as db:
        db.execute(update(T_JOBS).where(T_JOBS.c.id == job_id).values(created=created))


def history(store: JobStore, storage: LocalStorage) -> None:
    """alice: a vae sample (day 1, 3 images + grid, prompt "A Red Fox 100%"), a gan edit (day 3, a strip only),
    a failed sample (day 4); bob: a toy sample (day 5)."""
    fox = {"op": "sample", "backend": "vae", "model": "mnist", "n": 3, "seed": 1,
           "options": {"prompt": "A Red Fox 100%"}}
    finished(store, storage, "a0000001", fox, "alice", DAY1, ["sample_000.png", "sample_001.png",
                                                                "sample_002.png", "grid.png"])
    edit = {"op": "edit", "backend": "gan", "model": "fashion", "seed": 2, "options": {}}
    finished(store, storage, "a0000002", edit, "alice", DAY1 + 2 * DAY_S, ["strip.png"])
    failed = {"op": "sample", "backend": "vae", "model": "mnist", "n": 1, "options": {"prompt": "red fox"}}
    finished(store, storage, "a0000003", failed, "alice", DAY1 + 3 * DAY_S, ["sample_000.png"], state="FAILED")
    toy = {"op": "sample", "backend": "toy", "model": "m", "n": 1, "options": {"prompt": "a red fox"}}
    finished(store, storage, "b0000001", toy, "bob", DAY1 + 4 * DAY_S, ["sample_000.png"])


@pytest.fixture
def home(tmp_path: Path):
    """Settings, a job store and storage of a fresh STUDIO_HOME holding `history`."""
    settings = load_settings(env={"STUDIO_HOME": str(tmp_path / "home")})
    store = JobStore.from_settings(settings)
    storage = LocalStorage(settings.store_path)
    history(store, storage)
    yield settings, store, storage
    store.db.dispose()


def refs(items: list[dict]) -> list[tuple[str, str]]:
    return [(i["job_id"], i["name"]) for i in items]


ALICE_ALL = [("a0000002", "strip.png"), ("a0000001", "sample_000.png"), ("a0000001", "sample_001.png"),
             ("a0000001", "sample_002.png")]


def check_queries(store: JobStore) -> None:
    items, total = store.gallery("alice")
    # newest job first, then by name; a grid is left out beside its own images, a lone strip is kept; FAILED hidden
    assert (refs(items), total) == (ALICE_ALL, 4)
    assert items[0]["op"] == "edit" and items[1]["backend"] == "vae" and not any(i["favourite"] for i in items)
    pages = [store.gallery("alice", offset=o, limit=3) for o in (0, 3)]
    assert [t for _, t in pages] == [4, 4] and refs(pages[0][0] + pages[1][0]) == ALICE_ALL
    assert refs(store.gallery("alice", op="edit")[0]) == ALICE_ALL[:1]
    assert refs(store.gallery("alice", backend="vae")[0]) == ALICE_ALL[1:]  # not bob's, not the failed job's
    assert store.gallery("alice", model="fashion")[1] == 1 and store.gallery("alice", backend="toy") == ([], 0)
    assert refs(store.gallery("alice", prompt="RED fox")[0]) == ALICE_ALL[1:]  # any case, a substring
    assert refs(store.gallery("alice", prompt="0%")[0]) == ALICE_ALL[1:]  # a literal %, not a wildcard
    assert store.gallery("alice", prompt="x%")[1] == 0 and store.gallery("alice", prompt="_ed")[1] == 0
    assert refs(store.gallery("alice", since=DAY1 + DAY_S)[0]) == ALICE_ALL[:1]
    assert refs(store.gallery("alice", until=DAY1 + DAY_S)[0]) == ALICE_ALL[1:]
    assert refs(store.gallery("bob", prompt="red")[0]) == [("b0000001", "sample_000.png")]  # only bob's own
    everyone, total = store.gallery(None, limit=2)  # admins and the single-user default see every job
    assert total == 5 and refs(everyone)[0] == ("b0000001", "sample_000.png")
    assert store.gallery_facets("alice") == {"backend": ["gan", "vae"], "model": ["fashion", "mnist"],
                                             "op": ["edit", "sample"]}
    assert store.gallery_facets("bob")["backend"] == ["toy"]
    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"prompt": "x" * 501}):
        with pytest.raises(InputError):
            store.gallery("alice", **bad)


def check_favourites(store: JobStore) -> None:
    assert store.set_favourite("alice", "a0000001", "sample_001.png", viewer="alice") is True
    assert store.set_favourite("alice", "a0000001", "sample_001.png", viewer="alice") is True  # again: no error
    starred = ("a0000001", "sample_001.png")
    assert refs(store.gallery("alice", "alice", favourites_only=True)[0]) == [starred]
    assert [refs([i]) for i in store.gallery("alice", "alice")[0] if i["favourite"]] == [[starred]]
    # stars are per user: nobody else sees alice's, not even a viewer of every job
    assert store.gallery(None, "carol", favourites_only=True) == ([], 0)
    assert not any(i["favourite"] for i in store.gallery(None, "bob")[0])
    with pytest.raises(NotFound):  # bob cannot star (or learn about) alice's image
        store.set_favourite("bob", "a0000001", "sample_000.png", viewer="bob")
    with pytest.raises(NotFound):  # not an image of the job
        store.set_favourite("alice", "a0000001", "metrics.json", viewer="alice")
    store.set_favourite(None, "b0000001", "sample_000.png")  # the single-user default's stars
    assert refs(store.gallery(None, None, favourites_only=True)[0]) == [("b0000001", "sample_000.png")]
    assert store.set_favourite("alice", "a0000001", "sample_001.png", on=False, viewer="alice") is False
    assert store.gallery("alice", "alice", favourites_only=True) == ([], 0)


def test_gallery_filters_pages_and_scopes_in_the_store(home) -> None:
    _, store, _ = home
    check_queries(store)


def test_favourites_are_kept_per_user(home) -> None:
    _, store, _ = home
    check_favourites(store)


def test_gallery_queries_on_postgres(postgres, tmp_path: Path) -> None:
    store = JobStore(Database(postgres.url))
    try:
        history(store, LocalStorage(tmp_path / "store"))
        check_queries(store)
        check_favourites(store)
    finally:
        store.db.dispose()


def test_a_zip_holds_the_pngs_with_their_records_and_is_bounded(home, tmp_path: Path) -> None:
    from studio.queue.client import StudioClient
    from studio.users import UserStore

    settings, _, _ = home
    users = UserStore.from_settings(settings)
    users.add("alice", "alice-password")
    users.add("bob", "bob-password")
    client = StudioClient(settings)
    alice, bob = client.for_user("alice"), client.for_user("bob")
    picked = [("a0000001", "sample_002.png"), ("a0000002", "strip.png"), ("a0000001", "sample_002.png")]
    path = write_zip(alice, picked, tmp_path / "picked.zip")
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["a0000001/sample_002.png", "a0000002/strip.png"]  # once each
        data = zf.read("a0000001/sample_002.png")
        assert data == alice.artifact_bytes("a0000001", "sample_002.png")  # byte for byte
        record = read_record(Image.open(io.BytesIO(data)))
        assert record["spec"]["options"]["prompt"] == "A Red Fox 100%" and record["item"] == {"index": 2}
    whole = job_refs(alice, "a0000001")
    assert [n for _, n in whole] == ["grid.png", "sample_000.png", "sample_001.png", "sample_002.png"]
    with zipfile.ZipFile(write_zip(alice, whole, tmp_path / "job.zip")) as zf:
        assert len(zf.namelist()) == 4 and all(read_record(Image.open(zf.open(n)))["spec"]["seed"] == 1
                                               for n in zf.namelist())
    for kwargs, words in (({"max_files": 1}, "more than one zip may hold"), ({"max_bytes": 100}, "MB")):
        with pytest.raises(InputError, match=words):
            write_zip(alice, picked, tmp_path / "big.zip", **kwargs)
    with pytest.raises(NotFound):  # another user's job is no job
        write_zip(bob, picked, tmp_path / "theirs.zip")
    with pytest.raises(InputError, match="no image"):
        write_zip(alice, [("a0000001", "metrics.json")], tmp_path / "json.zip")
    assert not (tmp_path / "big.zip").exists() and not (tmp_path / "theirs.zip").exists()
    # the client's gallery is the user's own, with their own stars
    assert alice.favourite("a0000002", "strip.png") is True
    assert [i["name"] for i in alice.gallery(favourites_only=True)["items"]] == ["strip.png"]
    assert bob.gallery(favourites_only=True) == {"items": [], "total": 0}
    assert bob.gallery()["total"] == 1 and bob.gallery_facets()["op"] == ["sample"]
    client.close()


def test_date_and_text_filters_from_the_tab() -> None:
    start = parse_day("2026-01-31", "from")
    assert parse_day("2026-01-31", "to", end=True) == start + DAY_S  # the 'to' day is included
    assert parse_day("2026-01-31 12:00:00", "from") == start and parse_day("", "from") is None
    with pytest.raises(InputError, match="from: expected a date"):
        parse_day("31/01/2026", "from")
    assert gallery_filters("any", "", " edit ", "Fox", None, None, None) == {
        "backend": None, "model": None, "op": "edit", "prompt": "Fox", "since": None, "until": None,
        "favourites_only": False}
    with pytest.raises(InputError, match="before"):
        gallery_filters("any", "any", "any", "", "2026-02-02", "2026-02-01", True)


def version_3_gains_favourites(url: str) -> None:
    first = Database(url)
    first.ensure_schema()
    with first.write() as conn:  # as version 3 left it: no favourites table
        favourites.drop(conn)
        conn.execute(update(studio_meta).values(value="3"))
    first.dispose()
    again = Database(url)  # another process of this version opens it
    store = JobStore(again)
    with again.read() as conn:
        assert inspect(conn).has_table("favourites")
    assert store.schema_version() == 4
    again.dispose()


def test_a_version_3_database_gains_the_favourites_table(tmp_path: Path) -> None:
    version_3_gains_favourites(f"sqlite:///{tmp_path / 'jobs.sqlite'}")


def test_a_version_3_postgres_database_gains_the_favourites_table(postgres) -> None:
    version_3_gains_favourites(postgres.url)
