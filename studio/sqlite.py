"""SQLite plumbing shared by the embedded stores (jobs, users): one connection per thread and per process, and
write transactions that take the write lock at once.

Every connection is in autocommit mode (`isolation_level=None`: transactions are explicit), uses WAL so readers
never block the writer, and waits up to 30 s for a lock instead of failing with "database is locked". A forked
child (a worker's job process) never reuses its parent's connection: it opens its own.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

BUSY_TIMEOUT_S = 30.0


class ThreadConnections:
    """The connection of the calling thread to one SQLite file, opened on first use (after a fork as well).

    `synchronous` sets `PRAGMA synchronous` on each connection (e.g. "NORMAL"); None keeps SQLite's default.
    The file's folder is created when a connection is opened, not before: a store that is never used leaves
    nothing behind.
    """

    def __init__(self, path: str | Path, synchronous: str | None = None) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        """This thread's connection (rows as sqlite3.Row); a new one in a new thread or a forked process."""
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            if self.synchronous is not None:
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        """Close this thread's connection, if it has one (the next `get` opens a new one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


@contextlib.contextmanager
def immediate_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on `db` (autocommit mode) that takes the write lock at once, so a read followed by a
    write inside it is atomic; committed on exit, rolled back on any exception (which propagates)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
