"""Versioned migrations of the records database (see studio.db for the versions).

Version 3 moved the embedded SQLite file onto the SQLAlchemy schema: events gained a sequence column (order without
SQLite's rowid), artifacts name a storage key instead of a path, and users moved in from `users.sqlite` beside it.
Each step runs inside the migrating transaction, so a failed migration leaves the old database as it was.
Version 4 only added a table (favourites): opening a version-3 database (SQLite or PostgreSQL) creates it with
`metadata.create_all` in that same transaction, so no step of its own is needed.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from studio.db import Database


def migrate_sqlite_to_v3(conn: Connection, db: Database) -> None:
    """Bring an embedded SQLite database of version 0-2 to version 3 (tables of version 3 are made by the caller)."""
    from studio.db import artifacts, events, failures, tokens, users

    if not db.is_sqlite:
        return
    tables = set(inspect(conn).get_table_names())
    if "jobs" in tables:
        columns = {c["name"] for c in inspect(conn).get_columns("jobs")}
        if "owner" not in columns:  # version 1
            conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN owner TEXT")
    if "events" in tables and "seq" not in {c["name"] for c in inspect(conn).get_columns("events")}:
        _rebuild(conn, "events", lambda: events.create(conn),
                 "INSERT INTO events (job_id, ts, kind, message) SELECT job_id, ts, kind, message FROM old "
                 "ORDER BY rowid")
    if "artifacts" in tables and "key" not in {c["name"] for c in inspect(conn).get_columns("artifacts")}:
        _rebuild(conn, "artifacts", lambda: artifacts.create(conn),
                 "INSERT INTO artifacts (job_id, name, kind, key, size) SELECT job_id, name, kind, "
                 "'jobs/' || job_id || '/' || name, size FROM old")
    path = db.sqlite_path
    legacy = path.parent / "users.sqlite" if path is not None else None
    if legacy is not None and legacy.is_file() and "users" not in tables:
        for table in (users, tokens, failures):
            table.create(conn, checkfirst=True)
        src = sqlite3.connect(legacy)
        try:
            for table in (users, tokens, failures):
                names = [c.name for c in table.columns]
                try:
                    rows = src.execute(f"SELECT {', '.join(f'[{n}]' for n in names)} FROM {table.name}").fetchall()
                except sqlite3.OperationalError:  # an empty legacy file without that table
                    continue
                if rows:
                    conn.execute(table.insert(), [dict(zip(names, r, strict=True)) for r in rows])
        finally:
            src.close()


def _rebuild(conn: Connection, name: str, create: object, copy_sql: str) -> None:
    """Replace table `name` by its version-3 definition, copying its rows with `copy_sql` (reading table `old`)."""
    conn.exec_driver_sql(f"ALTER TABLE {name} RENAME TO old")
    for (index,) in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'old' "
                                         "AND sql IS NOT NULL").fetchall():
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index}")
    create()  # type: ignore[operator]
    conn.exec_driver_sql(copy_sql)
    conn.exec_driver_sql("DROP TABLE old")
