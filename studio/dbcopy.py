"""Move a studio's history to other servers: every record of the records database and every stored object they
name, from one database + storage to another (e.g. the embedded SQLite file and local folder to PostgreSQL + S3).

`copy_records` reads the source in one snapshot (SQLite: one read transaction; PostgreSQL: REPEATABLE READ), so
the records and the objects it copies belong to one moment. Objects are copied first (re-copying is harmless),
then every table in one target transaction, streamed in chunks, counts checked before the commit: a copy that
fails at any point leaves no record in the target, and can simply be run again. The target database must be
empty (its `workers` advertisements aside). Jobs QUEUED or RUNNING at copy time are copied as they are, so stop the
studio (UI, clients and workers) first: a worker still running on the source finishes its job there, not here.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Table, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from studio.db import Database, metadata, studio_meta
from studio.db import workers as T_WORKERS
from studio.errors import InputError, NotFound, StudioError, clip
from studio.storage import LocalStorage, S3Storage, Storage

CHUNK_ROWS = 500  # rows read and inserted at a time
OBJECT_PREFIXES = ("jobs/", "vectors/", "models/")  # everything under these is copied, named by a record or not
KEY_COLUMNS = {"artifacts": "key", "vectors": "key", "models": "key"}  # record columns that name storage keys
RECORD_TABLES: list[Table] = [t for t in metadata.sorted_tables if t is not studio_meta]
EPHEMERAL = {T_WORKERS.name}  # live advertisements: a target may already have its own (they are merged)

Progress = Callable[[str, int, int], None]  # (table name or "objects", done, total)


def table_counts(db: Database) -> dict[str, int]:
    """Rows per table of the records database (the schema is created or migrated first)."""
    with db.read() as conn:
        return _counts(conn)


def _counts(conn: Connection) -> dict[str, int]:
    return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in RECORD_TABLES}


def live_workers(db: Database, within_s: float = 60.0) -> int:
    """How many workers advertised themselves in the last `within_s` seconds."""
    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(T_WORKERS)
                                .where(T_WORKERS.c.last_seen >= time.time() - within_s)).scalar_one())


def same_storage(a: Storage, b: Storage) -> bool:
    """Whether two stores are the same place (then objects need no copy)."""
    if isinstance(a, LocalStorage) and isinstance(b, LocalStorage):
        return a.root.resolve() == b.root.resolve()
    if isinstance(a, S3Storage) and isinstance(b, S3Storage):
        return (a.url, a.endpoint_url.rstrip("/")) == (b.url, b.endpoint_url.rstrip("/"))
    return False


def same_database(a: Database, b: Database) -> bool:
    """Whether two Database objects name the same database."""
    if a.is_sqlite and b.is_sqlite:
        pa, pb = a.sqlite_path, b.sqlite_path
        return pa is not None and pb is not None and pa.expanduser().resolve() == pb.expanduser().resolve()
    return a.shown == b.shown


def copy_records(source: Database, target: Database, source_storage: Storage, target_storage: Storage,
                 progress: Progress | None = None) -> dict:
    """Copy every record of `source` into the empty database `target`, and every object the records name (plus
    everything under jobs/, vectors/ and models/) from `source_storage` to `target_storage` (skipped when they are
    the same store). Returns {"tables": {table: rows}, "objects": copied, "missing": [keys named by a record but
    absent from the source storage]}. Refuses (InputError, one line) a target that already holds records or is
    the source itself; any failure leaves the target database without a copied record."""
    report = progress or (lambda _what, _done, _total: None)
    try:
        check_target(source, target)
        target_storage.exists("studio-db-copy-probe")  # a missing bucket or an unreachable server: fail before
        with _snapshot(source) as src:
            counts = _counts(src)
            copied, missing = 0, []
            if not same_storage(source_storage, target_storage):
                copied, missing = _copy_objects(src, source_storage, target_storage, report)
            with target.write() as dst:
                _refuse_nonempty(target, dst)
                for table in RECORD_TABLES:
                    _copy_table(src, dst, target, table, counts[table.name], report)
                _copy_meta(src, dst, target)
                _check_counts(dst, counts)
                _reset_sequences(dst, target)
    except DBAPIError as exc:
        reason = clip(str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip()
                      else type(exc).__name__, 160)
        raise StudioError(f"copy to {target.shown} failed ({reason}); nothing was committed to it, so run it "
                          "again once the cause is fixed") from None
    return {"tables": counts, "objects": copied, "missing": missing}


def check_target(source: Database, target: Database) -> None:
    """InputError (one line) unless `target` is another database than `source` and holds no records; both schemas
    are made or migrated first (a database of a newer version is refused)."""
    if same_database(source, target):
        raise InputError(f"the target database {target.shown} is the studio's own database: copy to another one")
    source.ensure_schema()  # migrates an old embedded file; refuses a newer one
    target.ensure_schema()
    _refuse_nonempty(target)


def _refuse_nonempty(target: Database, conn: Connection | None = None) -> None:
    with contextlib.ExitStack() as stack:
        conn = conn or stack.enter_context(target.read())
        held = {name: n for name, n in _counts(conn).items() if n and name not in EPHEMERAL}
    if held:
        what = ", ".join(f"{n} {name}" for name, n in sorted(held.items(), key=lambda kv: kv[0] != "jobs"))
        raise InputError(f"the target database {target.shown} already holds records ({clip(what, 80)}): copy into "
                         "a new, empty database (e.g. `createdb studio_new`, then --to postgresql://.../studio_new)")


@contextlib.contextmanager
def _snapshot(db: Database) -> Iterator[Connection]:
    """One read-only transaction over the whole copy, so every table and key comes from the same moment."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            conn.execution_options(studio_read=True)  # no BEGIN IMMEDIATE: a deferred read transaction
            conn.exec_driver_sql("BEGIN")
        else:
            conn.execution_options(isolation_level="REPEATABLE READ")
        try:
            yield conn
        finally:
            conn.rollback()


def _stream(conn: Connection, query: object) -> Iterator[list]:
    """Rows of `query` in chunks of CHUNK_ROWS (a server-side cursor on PostgreSQL)."""
    result = conn.execute(query.execution_options(stream_results=True, yield_per=CHUNK_ROWS))  # type: ignore[attr-defined]
    try:
        yield from result.partitions(CHUNK_ROWS)
    finally:
        result.close()


def _object_keys(src: Connection, storage: Storage) -> tuple[list[str], list[str]]:
    """(keys to copy, sorted; keys named by a record but absent from `storage`)."""
    listed: set[str] = set()
    for prefix in OBJECT_PREFIXES:
        listed.update(key for key, _ in storage.list(prefix))
    named: set[str] = set()
    for table in RECORD_TABLES:
        column = KEY_COLUMNS.get(table.name)
        if column is None:
            continue
        for chunk in _stream(src, select(table.c[column])):
            named.update(row[0] for row in chunk if row[0] not in listed)
    missing = sorted(key for key in named if not storage.exists(key))
    return sorted(listed | (named - set(missing))), missing


def _copy_objects(src: Connection, source: Storage, target: Storage, report: Progress) -> tuple[int, list[str]]:
    keys, missing = _object_keys(src, source)
    report("objects", 0, len(keys))
    with tempfile.TemporaryDirectory(prefix="studio-db-copy-") as tmp:
        path = Path(tmp) / "object"
        for done, key in enumerate(keys, 1):
            try:
                source.get_file(key, path)
            except NotFound:  # removed since it was listed (a live studio's collect_orphans)
                missing.append(key)
                continue
            target.put_file(key, path)
            path.unlink(missing_ok=True)
            if done % 50 == 0 or done == len(keys):
                report("objects", done, len(keys))
    gone = set(missing)
    copied = [k for k in keys if k not in gone]
    there = {key for prefix in OBJECT_PREFIXES for key, _ in target.list(prefix)}
    absent = [k for k in copied if k not in there and not target.exists(k)]
    if absent:
        raise StudioError(f"storage {target.url} does not show {len(absent)} copied objects (e.g. "
                          f"{clip(absent[0])!r}); nothing was committed to the target database")
    return len(copied), sorted(missing)


def _insert(dst: Connection, target: Database, table: Table, rows: list[dict]) -> None:
    if table.name not in EPHEMERAL:
        dst.execute(table.insert(), rows)
        return
    if target.is_sqlite:  # an advertisement the target already has wins
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    dst.execute(insert(table).on_conflict_do_nothing(), rows)


def _copy_table(src: Connection, dst: Connection, target: Database, table: Table, total: int,
                report: Progress) -> None:
    report(table.name, 0, total)
    done = 0
    for chunk in _stream(src, select(table).order_by(*table.primary_key.columns)):
        _insert(dst, target, table, [dict(row._mapping) for row in chunk])
        done += len(chunk)
        report(table.name, done, total)


def _copy_meta(src: Connection, dst: Connection, target: Database) -> None:
    """studio_meta entries other than the schema version (the target's own, set when its schema was made)."""
    for key, value in src.execute(select(studio_meta.c.key, studio_meta.c.value)
                                  .where(studio_meta.c.key != "schema_version")).all():
        target.upsert(dst, studio_meta, {"key": key, "value": value}, ["key"])


def _check_counts(dst: Connection, expected: dict[str, int]) -> None:
    got = _counts(dst)
    wrong = [name for name, n in expected.items()
             if (got[name] < n if name in EPHEMERAL else got[name] != n)]
    if wrong:
        name = wrong[0]
        raise StudioError(f"copy check failed: table {name} has {got[name]} rows in the target, {expected[name]} in "
                          "the source; nothing was committed to the target database")


def _reset_sequences(dst: Connection, target: Database) -> None:
    """PostgreSQL: move each serial column's sequence past the copied values (SQLite continues from max(rowid))."""
    if target.is_sqlite:
        return
    for table in RECORD_TABLES:
        column = table.autoincrement_column
        if column is None:
            continue
        dst.execute(text(f"SELECT setval(pg_get_serial_sequence(:table, :column), "
                         f"(SELECT COALESCE(MAX({column.name}), 0) + 1 FROM {table.name}), false)"),
                    {"table": table.name, "column": column.name})


__all__ = ["CHUNK_ROWS", "OBJECT_PREFIXES", "check_target", "copy_records", "live_workers", "same_database",
           "same_storage", "table_counts"]
