"""The records database: one SQLAlchemy Core schema for the embedded SQLite file and for PostgreSQL.

Job records, events, artifact manifests, workers, users, vector and model metadata all live here; the bytes they
describe live in storage (studio.storage). `STUDIO_DATABASE_URL` chooses the server: empty means the embedded
`<store>/jobs.sqlite` (WAL; a write transaction takes the write lock at once with BEGIN IMMEDIATE, so a read followed by
a write inside it is atomic); `postgresql://user:pass@host:5432/db` means PostgreSQL (row locks, `FOR UPDATE SKIP
LOCKED` claims, advisory locks where a count must not be overshot).

The schema is versioned (`studio_meta.schema_version`). A database made by an older version is migrated when it is
opened (SQLite files from before version 3 kept their version in PRAGMA user_version); one made by a newer version is
refused with one line. Every public operation of a store is a transaction that may be retried whole: `retrying`
re-runs it when the connection was lost (a restarted server, `pg_terminate_backend`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from studio.errors import InputError, StudioError, clip

if TYPE_CHECKING:
    from studio.config import Settings

SCHEMA_VERSION = 4  # 1-2: SQLite only, PRAGMA user_version (2 added jobs.owner); 3: SQLAlchemy schema, any server;
# 4: the favourites table (each user's starred images; made by create_all when a version-3 database is opened)
RETRIES = 6  # attempts of a transaction whose connection was lost
metadata = MetaData()

jobs = Table(
    "jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("op", String(64), nullable=False),
    Column("backend", String(64), nullable=False),
    Column("model", Text),
    Column("spec", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("queue", String(200), nullable=False),
    Column("batch_key", Text),
    Column("images", Integer, nullable=False, server_default="0"),
    Column("created", Float, nullable=False),
    Column("started", Float),
    Column("attempt_started", Float),
    Column("finished", Float),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("time_limit_s", Float, nullable=False),
    Column("progress", Float, nullable=False, server_default="0"),
    Column("step", Integer, nullable=False, server_default="0"),
    Column("total", Integer, nullable=False, server_default="0"),
    Column("message", Text, nullable=False, server_default=""),
    Column("eta_s", Float),
    Column("preview", Text),
    Column("error", Text),
    Column("metrics", Text),
    Column("cancel_requested", Integer, nullable=False, server_default="0"),
    Column("lease_owner", Text),
    Column("lease_expires", Float),
    Column("worker", Text),
    Column("leader", Text),
    Column("parent", Text),
    Column("staging", Text),  # the attempt prefix whose artifacts were committed
    Column("owner", Text),
    Index("jobs_by_created", "created"),
    Index("jobs_by_state", "state", "batch_key"),
    Index("jobs_by_owner", "owner", "state"),
    Index("jobs_by_owner_start", "owner", "attempt_started"),
    Index("jobs_by_queue", "queue", "state", "priority", "owner", "created"),
    Index("jobs_by_lease", "lease_owner", "state"),
)

events = Table(
    "events", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), nullable=False),
    Column("ts", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Index("events_by_job", "job_id"),
)

artifacts = Table(
    "artifacts", metadata,
    Column("job_id", String(32), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("key", Text, nullable=False),  # the storage key of its bytes
    Column("size", BigInteger, nullable=False),
)

workers = Table(
    "workers", metadata,
    Column("id", String(200), primary_key=True),
    Column("info", Text, nullable=False),
    Column("started", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("job_id", String(32)),
)

users = Table(
    "users", metadata,
    Column("name", String(64), primary_key=True),
    Column("admin", Integer, nullable=False, server_default="0"),
    Column("password", Text),
    Column("created", Float, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("hash", String(128), primary_key=True),
    Column("user", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("last_used", Float),
    Index("tokens_by_user", "user"),
)

failures = Table(
    "failures", metadata,
    Column("kind", String(16), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("last", Float, nullable=False),
    Column("locked_until", Float, nullable=False, server_default="0"),
)

vectors = Table(
    "vectors", metadata,
    Column("backend", String(64), primary_key=True),
    Column("weights", String(16), primary_key=True),  # the first 16 hex digits of the weights' sha256
    Column("name", String(64), primary_key=True),
    Column("owner", Text),
    Column("shared", Text, nullable=False, server_default="[]"),  # JSON list of user names ("*": everyone)
    Column("meta", Text, nullable=False),  # JSON: space, method, auc, shape, ...
    Column("key", Text, nullable=False),  # storage key of the safetensors tensor
    Column("created", Float, nullable=False),
)

models = Table(
    "models", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("backend", String(64), nullable=False),
    Column("name", String(64), nullable=False),
    Column("key", Text, nullable=False),  # storage key of the weights file (content-addressed)
    Column("size", BigInteger, nullable=False),
    Column("owner", Text),
    Column("source", Text, nullable=False, server_default=""),  # "import", "train job <id>", ...
    Column("meta", Text, nullable=False, server_default="{}"),
    Column("created", Float, nullable=False),
    Index("models_by_name", "backend", "name", unique=True),
)

favourites = Table(
    "favourites", metadata,
    Column("owner", String(64), primary_key=True),  # the user who starred it ("": the single-user default)
    Column("job_id", String(32), primary_key=True),
    Column("name", String(200), primary_key=True),  # the artifact's name
    Column("created", Float, nullable=False),
    Index("favourites_by_job", "job_id"),
)

studio_meta = Table(
    "studio_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


class DatabaseUnavailable(StudioError):
    """The database server cannot be reached (after retries), or refused the connection."""


def database_url(settings: Settings) -> str:
    """The records' URL: STUDIO_DATABASE_URL, or the embedded SQLite file in the store."""
    return settings.database_url or f"sqlite:///{settings.store_path / 'jobs.sqlite'}"


def redacted(url: str) -> str:
    """`url` without its password (for messages and listings); never any part of a URL it cannot parse."""
    try:
        return _parsed(url).render_as_string(hide_password=True)
    except InputError:
        return "<a database URL that does not parse>"


_BAD_URL = ("STUDIO_DATABASE_URL is not a database URL (use postgresql://user:pass@host:5432/db with '@', ':' and '/' "
            "in the password percent-encoded, or leave it empty for the embedded SQLite file)")


def _parsed(url: str) -> URL:
    scheme, sep, rest = url.partition("://")
    if not sep or rest.split("/", 1)[0].count("@") > 1:  # an '@' in a password would move the host into it
        raise InputError(_BAD_URL)
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a bad port raises here, with the URL's text in its message
    except (ArgumentError, ValueError):
        raise InputError(_BAD_URL) from None
    return parsed


def _driver_url(url: str) -> str:
    parsed = _parsed(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if backend == "sqlite":
        return url
    raise InputError(f"database {redacted(url)!r} is not supported: use postgresql://... or sqlite:///PATH "
                     "(empty: the embedded SQLite file)")


class Database:
    """One records database: an engine per process (a forked or spawned child opens its own) and its schema."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._driver_url = _driver_url(url)
        self.dialect = "postgresql" if self._driver_url.startswith("postgresql") else "sqlite"
        self._engine: Engine | None = None
        self._pid = 0
        self._lock = threading.RLock()
        self._ready = False

    @classmethod
    def for_settings(cls, settings: Settings) -> Database:
        """The process's Database for these settings (engines and their pools are shared)."""
        return shared(database_url(settings))

    @property
    def shown(self) -> str:
        return redacted(self.url)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def is_absent(self) -> bool:
        """Whether this is an embedded SQLite file that does not exist yet (a read then finds nothing, and must not
        create it)."""
        path = self.sqlite_path
        return path is not None and str(path) not in ("", ":memory:") and not path.exists()

    @property
    def sqlite_path(self) -> Path | None:
        return Path(make_url(self._driver_url).database or "") if self.is_sqlite else None

    # ----- connections -----
    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    if self._engine is not None:
                        self._engine.dispose(close=False)  # the parent's connections stay the parent's
                    self._engine, self._pid = self._make_engine(), os.getpid()
        return self._engine

    def _make_engine(self) -> Engine:
        if self.is_sqlite:
            path = self.sqlite_path
            if path is not None and str(path) not in ("", ":memory:"):
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(self._driver_url, connect_args={"timeout": 30, "check_same_thread": False},
                                   pool_size=8, max_overflow=32)

            @event.listens_for(engine, "connect")
            def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None  # transactions are explicit (BEGIN IMMEDIATE below)
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            @event.listens_for(engine, "begin")
            def _sqlite_begin(conn: Connection) -> None:
                if not conn.get_execution_options().get("studio_read"):
                    conn.exec_driver_sql("BEGIN IMMEDIATE")

            return engine
        # no pre-ping (a round trip per checkout): a dead pooled connection fails its statement, and `retrying`
        # runs the whole transaction again on a fresh pool
        return create_engine(self._driver_url, pool_size=8, max_overflow=32, pool_recycle=1800,
                             connect_args={"connect_timeout": 5})

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads (SQLite: autocommit statements, no lock; PostgreSQL: one read transaction)."""
        self.ensure_schema()
        with self.engine.connect() as conn:
            yield conn.execution_options(studio_read=True)

    @contextlib.contextmanager
    def write(self, relaxed: bool = False) -> Iterator[Connection]:
        """A write transaction, committed on exit and rolled back on an exception (SQLite: holds the write lock
        from its start; PostgreSQL: lock rows with `with_for_update`, counts with `lock`). `relaxed`: a write whose
        loss in a server crash costs nothing (heartbeats, progress) does not wait for PostgreSQL's WAL flush."""
        self.ensure_schema()
        with self.engine.begin() as conn:
            if relaxed and not self.is_sqlite:
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield conn

    def lock(self, conn: Connection, key: str) -> None:
        """Serialise transactions on `key` until this one ends (PostgreSQL advisory lock; SQLite already has)."""
        if not self.is_sqlite:
            number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
            conn.execute(select(func.pg_advisory_xact_lock(number)))

    def now(self, conn: Connection) -> float:
        """The time leases are measured in (Unix seconds): PostgreSQL's clock, so that workers on machines whose
        clocks disagree still agree on when a lease expires; this machine's clock for the embedded SQLite file."""
        if self.is_sqlite:
            return time.time()
        return float(conn.execute(select(func.extract("epoch", func.clock_timestamp()))).scalar())

    def upsert(self, conn: Connection, table: Table, values: dict, keys: list[str]) -> None:
        """Insert `values`, or update the row with the same `keys` to them."""
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(table).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=keys,
                                          set_={k: stmt.excluded[k] for k in values if k not in keys})
        conn.execute(stmt)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # ----- schema -----
    def ensure_schema(self) -> None:
        """Create the tables, or migrate an older database; refuse a newer one. Once per process."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            run_retrying(self, self._ensure_schema)
            self._ready = True

    def _ensure_schema(self) -> None:
        with self.engine.begin() as conn:
            if not self.is_sqlite:  # (SQLite: this transaction began with BEGIN IMMEDIATE)
                conn.execute(select(func.pg_advisory_xact_lock(0x57D10)))  # one migrator at a time
            version = self._version(conn)
            if version > SCHEMA_VERSION:
                raise StudioError(f"database {self.shown} has schema version {version}, newer than this Latent "
                                  f"Studio knows ({SCHEMA_VERSION}): upgrade latent-studio to use it")
            if version == SCHEMA_VERSION:
                return
            if version > 0 or inspect(conn).has_table("jobs"):
                from studio.migrations import migrate_sqlite_to_v3

                try:
                    migrate_sqlite_to_v3(conn, self)
                except (DBAPIError, OSError, ValueError) as exc:
                    if isinstance(exc, DBAPIError) and _lost_connection(exc):
                        raise
                    raise StudioError(f"database {self.shown} (schema version {version}) could not be migrated to "
                                      f"version {SCHEMA_VERSION} ({type(getattr(exc, 'orig', None) or exc).__name__}); "
                                      "it was left unchanged: repair or move it aside") from None
            metadata.create_all(conn)
            for table in metadata.sorted_tables:  # indexes added since a table was made (create_all skips them)
                for index in table.indexes:
                    index.create(conn, checkfirst=True)
            self._set_version(conn, SCHEMA_VERSION)

    def _version(self, conn: Connection) -> int:
        if inspect(conn).has_table("studio_meta"):
            row = conn.execute(select(studio_meta.c.value).where(studio_meta.c.key == "schema_version")).first()
            if row is not None:
                return int(row[0])
        if self.is_sqlite:
            return int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
        return 0

    def _set_version(self, conn: Connection, version: int) -> None:
        self.upsert(conn, studio_meta, {"key": "schema_version", "value": str(version)}, ["key"])

    def schema_version(self) -> int:
        with self.read() as conn:
            return self._version(conn)


_shared: dict[str, Database] = {}
_shared_lock = threading.Lock()


def shared(url: str) -> Database:
    """One Database per URL in this process."""
    with _shared_lock:
        db = _shared.get(url)
        if db is None:
            db = _shared[url] = Database(url)
        return db


def _lost_connection(exc: BaseException) -> bool:
    """Whether a transaction may succeed when run again: a lost or refused server connection (PostgreSQL's
    OperationalError, which also covers serialisation failures and deadlocks), or SQLite busy past its timeout.
    Not SQLite's other OperationalErrors (no such column, a read-only file): running again gives the same."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    if type(exc.orig).__module__.startswith("sqlite3"):
        text = str(exc.orig).lower()
        return "locked" in text or "busy" in text
    return True


def run_retrying(db: Database, fn: Callable[[], T]) -> T:
    """Run the transaction `fn`, again (whole, with a backoff) when the connection to the records was lost;
    DatabaseUnavailable (one line) when it stays lost."""
    delay = 0.1
    for attempt in range(RETRIES):
        try:
            return fn()
        except DBAPIError as exc:
            if not _lost_connection(exc):
                raise
            if attempt == RETRIES - 1:
                reason = clip(str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else
                              type(exc).__name__, 160)
                raise DatabaseUnavailable(f"database {db.shown} is unavailable ({reason}); check "
                                          "the database URL (STUDIO_DATABASE_URL) and that the server runs") from None
            with contextlib.suppress(Exception):
                db.engine.dispose()  # every pooled connection may be dead: start afresh
            time.sleep(delay)
            delay = min(2.0, delay * 2)
    raise AssertionError("unreachable")


T = TypeVar("T")


def retrying(method: Callable[..., T]) -> Callable[..., T]:
    """Decorate a store method that is one transaction: it runs again (whole) when its connection was lost."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        return run_retrying(self.db, lambda: method(self, *args, **kwargs))

    return wrapper



__all__ = ["SCHEMA_VERSION", "Database", "DatabaseUnavailable", "artifacts", "database_url", "events", "failures",
           "favourites", "jobs", "metadata", "models", "redacted", "retrying", "run_retrying", "shared", "studio_meta",
           "tokens", "users", "vectors", "workers"]
