"""Durable job records: one SQLite file (WAL) in the store, shared by clients, workers and the UI.

The broker only carries job ids; the truth about a job lives here, so history survives restarts of the
UI, the workers and the broker. A worker *claims* a job with a lease (AI Horde style) and renews it while
it runs; a job whose lease expires is reissued, and only the holder of the live lease may finish it. That
is what makes redelivery safe: however many messages name a job, it runs once at a time and ends with
exactly one result.

States: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED (RUNNING -> QUEUED again on a retry).

Users: every job has an `owner` (NULL in the single-user default). Reads and actions take an optional
`viewer`: None sees everything (the local user, admins, workers); a user name sees only that user's jobs,
and another user's job answers "not found", exactly like a job that does not exist.

Fair share: a broker message is a token to run one job of its queue. `claim` takes the fairest eligible
QUEUED job of that queue at the highest priority present: the oldest job of the user with the fewest RUNNING
jobs (ties: the user whose last start is oldest, i.e. round robin), not necessarily the message's own job.
Every claim takes one QUEUED job in one write transaction, so a job still runs once at a time.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from studio.errors import MAX_MESSAGE_CHARS, InputError, NotFound, clip
from studio.sqlite import ThreadConnections, immediate_transaction

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ID_RE = re.compile(r"^[0-9a-f]{4,32}$")
TIME_LIMIT_GRACE_S = 30.0

SCHEMA = """
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
    staging TEXT,
    owner TEXT
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
"""


SCHEMA_VERSION = 2  # PRAGMA user_version: 0/1 = before owners, 2 = jobs.owner
# indexes on columns that older databases gain by migration (created after it)
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, state);
CREATE INDEX IF NOT EXISTS jobs_by_owner_start ON jobs (owner, attempt_started);
CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (queue, state, priority, owner, created);
"""


class QuotaExceeded(InputError):
    """A user already has as many queued jobs as STUDIO_MAX_QUEUED_PER_USER allows."""


@dataclass(frozen=True)
class NewJob:
    """What a client records at submit time (the spec is already validated)."""

    id: str
    spec: dict
    priority: int
    queue: str
    max_attempts: int
    time_limit_s: float
    batch_key: str | None = None
    parent: str | None = None
    owner: str | None = None  # the user who submitted it (None: the single-user default)


@dataclass(frozen=True)
class Ending:
    """How one held job ends (see JobStore.finish_many)."""

    job_id: str
    state: str
    error: str | None = None
    metrics: dict | None = None
    artifacts: list[dict] | None = None
    staging: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Requeued:
    """A job put back in the queue: the caller publishes a new message for it."""

    id: str
    queue: str
    priority: int


class JobStore:
    """Job records in `<store>/jobs.sqlite`. Safe to use from several threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = ThreadConnections(self.path, synchronous="NORMAL")
        self._conn().executescript(SCHEMA)
        self._migrate()

    @classmethod
    def from_settings(cls, settings) -> JobStore:  # noqa: ANN001 - Settings, imported lazily
        return cls(settings.store_path / "jobs.sqlite")

    def _migrate(self) -> None:
        """Bring an older database up to SCHEMA_VERSION (adds jobs.owner when missing); safe to race."""
        db = self._conn()
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with self._tx() as db:
            columns = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
            if "owner" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
            for statement in INDEXES.strip().split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        """The database's schema version (PRAGMA user_version)."""
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    # ----- connections -----
    def _conn(self) -> sqlite3.Connection:
        return self._db.get()

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction that takes the write lock at once (so read-then-write is atomic)."""
        return immediate_transaction(self._conn())

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: str, kind: str, message: str, now: float | None = None) -> None:
        db.execute("INSERT INTO events (job_id, ts, kind, message) VALUES (?, ?, ?, ?)",
                   (job_id, now or time.time(), kind, clip(message, MAX_MESSAGE_CHARS)))

    # ----- clients -----
    def create(self, job: NewJob, max_queued: int = 0) -> None:
        """Record a new QUEUED job. With `max_queued` > 0, QuotaExceeded when its owner already has that many
        QUEUED jobs (checked in the same transaction, so concurrent submits cannot overshoot)."""
        spec = job.spec
        images = int(spec.get("n", 0)) if spec.get("op") == "sample" else 0
        now = time.time()
        with self._tx() as db:
            if max_queued > 0:
                queued = self.count_queued(job.owner)  # this thread's connection: inside the transaction
                if queued >= max_queued:
                    who = f"user {job.owner}" if job.owner else "you"
                    raise QuotaExceeded(f"max_queued_per_user: {who} already {'has' if job.owner else 'have'} "
                                        f"{queued} queued jobs (STUDIO_MAX_QUEUED_PER_USER={max_queued}); wait for "
                                        "some to start or cancel some")
            db.execute(
                "INSERT INTO jobs (id, state, op, backend, model, spec, priority, queue, batch_key, images, created, "
                "max_attempts, time_limit_s, message, parent, owner) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, QUEUED, spec["op"], spec["backend"], spec.get("model"), json.dumps(spec, sort_keys=True),
                 job.priority, job.queue, job.batch_key, images, now, job.max_attempts, job.time_limit_s, "queued",
                 job.parent, job.owner))
            self._event(db, job.id, "queued", f"queued on {job.queue} with priority {job.priority}", now)

    def delete(self, job_id: str) -> bool:
        """Remove a job record that was never published (a failed submit leaves nothing behind), only while it is
        still QUEUED: False when a worker already took it (with fair share a spare message can start any queued job
        of its queue), and then it is kept."""
        with self._tx() as db:
            gone = db.execute("DELETE FROM jobs WHERE id = ? AND state = ?", (job_id, QUEUED)).rowcount > 0
            if gone:
                db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
        return gone

    def resolve(self, job_id: str, viewer: str | None = None) -> str:
        """A full job id from an id or a unique prefix of at least 4 characters (among `viewer`'s jobs when
        given: another user's job is "not found")."""
        key = str(job_id).strip().lower()
        if not ID_RE.match(key):
            raise InputError(f"{job_id!r} is not a job id (hex characters, e.g. from `studio jobs`)")
        mine = "" if viewer is None else " AND owner = ?"
        rows = self._conn().execute(f"SELECT id FROM jobs WHERE id >= ? AND id < ?{mine} LIMIT 2",
                                    (key, key + "\x7f", *(() if viewer is None else (viewer,)))).fetchall()
        exact = [r["id"] for r in rows if r["id"] == key]
        if exact:
            return exact[0]
        if not rows:
            raise NotFound(f"no job {job_id!r}")
        if len(rows) > 1:
            raise InputError(f"job id prefix {job_id!r} is ambiguous; give more characters")
        return rows[0]["id"]

    def get(self, job_id: str, events: bool = True, preview: bool = True, viewer: str | None = None) -> dict:
        """The job's full record (the client's status dict); NotFound for another user's job."""
        job_id = self.resolve(job_id, viewer)
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        out = self._record(row, preview)
        out["artifacts"] = self.artifacts(job_id)
        if events:
            out["events"] = [dict(e) for e in self._conn().execute(
                "SELECT ts, kind, message FROM events WHERE job_id = ? ORDER BY ts, rowid", (job_id,))]
        return out

    def list(self, state: str | None = None, limit: int = 100, viewer: str | None = None) -> list[dict]:
        """History, newest first (previews left out); only `viewer`'s jobs when given."""
        if state is not None and state.upper() not in STATES:
            raise InputError(f"unknown state {state!r} (use one of {', '.join(STATES)})")
        if limit < 1:
            raise InputError(f"limit must be at least 1, got {limit}")
        conds = (["state = ?"] if state else []) + (["owner = ?"] if viewer is not None else [])
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        sql = f"SELECT * FROM jobs{where} ORDER BY created DESC, rowid DESC LIMIT ?"
        args = ((state.upper(),) if state else ()) + ((viewer,) if viewer is not None else ()) + (limit,)
        rows = self._conn().execute(sql, args).fetchall()
        arts: dict[str, list] = {}
        if rows:
            marks = ",".join("?" * len(rows))
            for a in self._conn().execute(f"SELECT * FROM artifacts WHERE job_id IN ({marks}) ORDER BY name",
                                          [r["id"] for r in rows]):
                arts.setdefault(a["job_id"], []).append(_artifact(a))
        out = []
        for r in rows:
            rec = self._record(r, preview=False)
            rec["artifacts"] = arts.get(r["id"], [])
            out.append(rec)
        return out

    def state(self, job_id: str) -> str:
        """Only the state of a job (a cheap read, for polling)."""
        row = self._conn().execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return row["state"]

    def artifacts(self, job_id: str) -> list[dict]:
        return [_artifact(a) for a in self._conn().execute(
            "SELECT * FROM artifacts WHERE job_id = ? ORDER BY name", (job_id,))]

    def count_queued(self, owner: str | None) -> int:
        """How many QUEUED jobs `owner` has (None: the single-user default's)."""
        return int(self._conn().execute("SELECT COUNT(*) FROM jobs WHERE owner IS ? AND state = ?",
                                        (owner, QUEUED)).fetchone()[0])

    def request_cancel(self, job_id: str, viewer: str | None = None) -> dict:
        """QUEUED: CANCELLED at once (it never runs). RUNNING: flagged; its worker stops at the next step."""
        job_id = self.resolve(job_id, viewer)
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row["state"] == QUEUED:
                db.execute("UPDATE jobs SET state = ?, finished = ?, message = 'cancelled before it ran', "
                           "cancel_requested = 1 WHERE id = ?", (CANCELLED, now, job_id))
                self._event(db, job_id, "cancelled", "cancelled while queued", now)
            elif row["state"] == RUNNING:
                db.execute("UPDATE jobs SET cancel_requested = 1, message = 'cancelling' WHERE id = ?", (job_id,))
                self._event(db, job_id, "cancel", "cancel requested while running", now)
        return self.get(job_id, viewer=viewer)

    # ----- workers: claims and leases -----
    def claim(self, job_id: str, owner: str, worker: str, lease_s: float) -> tuple[dict | None, str]:
        """Run one job for the message naming `job_id`: its own job if its lease expired (a lost worker), else the
        fairest eligible QUEUED job of its queue (see the module docstring). Returns (job, "") or (None, why
        nothing was claimed), the why being about the message's own job."""
        now = time.time()
        peek = self._conn().execute("SELECT state, lease_expires, queue, started FROM jobs WHERE id = ?",
                                    (job_id,)).fetchone()
        if peek is None:
            return None, "unknown job"
        expired = peek["state"] == RUNNING and (peek["lease_expires"] or 0) <= now
        if peek["state"] != QUEUED and not expired:
            # the common no-op (a batched job's own message, a duplicate), decided without the write lock: a job
            # cancelled before it ever ran still holds its own message; any other message stands in for a job
            # that was run in its place, so it runs the fairest queued job of its queue when there is one
            never_ran = peek["state"] == CANCELLED and peek["started"] is None
            if never_ran or not self._any_queued(self._conn(), peek["queue"]):
                return None, _why_not(peek["state"])
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            why = _why_not(row["state"])
            if row["state"] == RUNNING and (row["lease_expires"] or 0) <= now:
                attempts = row["attempts"] + 1
                if row["cancel_requested"]:
                    self._finish_row(db, job_id, CANCELLED, now, message="cancelled")
                    why = "cancelled"
                elif attempts > row["max_attempts"]:
                    why = f"gave up after {row['attempts']} attempts"
                    self._finish_row(db, job_id, FAILED, now, error=why, message=why)
                else:
                    self._event(db, job_id, "retry", f"worker {row['worker']} was lost (its lease expired); "
                                f"attempt {attempts} of {row['max_attempts']}", now)
                    self._take(db, job_id, owner, worker, attempts, now, lease_s, None)
                    return self.get(job_id, events=False, preview=False), ""
            elif row["state"] == CANCELLED and row["started"] is None:
                return None, why
            swept = self._sweep(db, row["queue"], now)
            why = swept.get(job_id, why)
            pick = self._fairest(db, row["queue"], job_id)
            if pick is None:
                return None, why
            self._take(db, pick["id"], owner, worker, pick["attempts"] + 1, now, lease_s, None)
        return self.get(pick["id"], events=False, preview=False), ""

    @staticmethod
    def _any_queued(db: sqlite3.Connection, queue: str) -> bool:
        return db.execute("SELECT 1 FROM jobs WHERE queue = ? AND state = ? LIMIT 1", (queue, QUEUED)).fetchone() \
            is not None

    def _sweep(self, db: sqlite3.Connection, queue: str, now: float) -> dict[str, str]:
        """End the QUEUED jobs of `queue` that must never run (cancel flagged, out of attempts); {id: why}."""
        out = {}
        for r in db.execute("SELECT id, attempts, cancel_requested FROM jobs WHERE queue = ? AND state = ? AND "
                            "(cancel_requested = 1 OR attempts >= max_attempts)", (queue, QUEUED)).fetchall():
            if r["cancel_requested"]:
                self._finish_row(db, r["id"], CANCELLED, now, message="cancelled")
                out[r["id"]] = "cancelled"
            else:
                why = f"gave up after {r['attempts']} attempts"
                self._finish_row(db, r["id"], FAILED, now, error=why, message=why)
                out[r["id"]] = why
        return out

    @staticmethod
    def _fairest(db: sqlite3.Connection, queue: str, own: str) -> sqlite3.Row | None:
        """The next job of `queue`: highest priority present; within it, the user with the fewest RUNNING jobs
        (ties: whose last start is oldest, never-started first; then whose oldest job is oldest); that user's
        oldest job, or the message's own job `own` when it is one of that user's jobs at that priority (so
        messages mostly run their own jobs, in broker order)."""
        top = db.execute("SELECT MAX(priority) FROM jobs WHERE queue = ? AND state = ?", (queue, QUEUED)).fetchone()[0]
        if top is None:
            return None
        owners = db.execute("SELECT owner, MIN(created) AS oldest FROM jobs WHERE queue = ? AND state = ? AND "
                            "priority = ? GROUP BY owner", (queue, QUEUED, top)).fetchall()
        if len(owners) > 1:
            running = {r["owner"]: r["n"] for r in db.execute(
                "SELECT owner, COUNT(*) AS n FROM jobs WHERE state = ? GROUP BY owner", (RUNNING,))}

            def key(r: sqlite3.Row) -> tuple:
                last = db.execute("SELECT MAX(attempt_started) FROM jobs WHERE owner IS ?", (r["owner"],)).fetchone()[0]
                return (running.get(r["owner"], 0), last or 0.0, r["oldest"])

            chosen = min(owners, key=key)["owner"]
        else:
            chosen = owners[0]["owner"]
        mine = db.execute("SELECT id, attempts FROM jobs WHERE id = ? AND queue = ? AND state = ? AND priority = ? AND "
                          "owner IS ?", (own, queue, QUEUED, top, chosen)).fetchone()
        if mine is not None:
            return mine
        return db.execute("SELECT id, attempts FROM jobs WHERE queue = ? AND state = ? AND priority = ? AND owner IS ? "
                          "ORDER BY created, rowid LIMIT 1", (queue, QUEUED, top, chosen)).fetchone()

    def claim_batch(self, leader: dict, owner: str, worker: str, lease_s: float, max_images: int,
                    limit: int = 256) -> list[dict]:
        """Claim QUEUED jobs compatible with `leader` (same batch key, same job owner) so they run in its forward
        pass. Never another user's job, whatever its key (a follower's record names its leader's job id)."""
        key = leader.get("batch_key")
        room = max_images - int(leader.get("images") or 0)
        if not key or room <= 0:
            return []
        same = "state = ? AND batch_key = ? AND id != ? AND owner IS (SELECT owner FROM jobs WHERE id = ?)"
        args = (QUEUED, key, leader["id"], leader["id"])
        peek = self._conn().execute(f"SELECT 1 FROM jobs WHERE {same} LIMIT 1", args).fetchone()
        if peek is None:  # nothing to coalesce: no write transaction
            return []
        now = time.time()
        taken: list[str] = []
        with self._tx() as db:
            rows = db.execute(
                f"SELECT id, images, attempts, max_attempts FROM jobs WHERE {same} "
                "AND cancel_requested = 0 ORDER BY priority DESC, created, rowid LIMIT ?", (*args, limit)).fetchall()
            for r in rows:
                if r["images"] > room or r["attempts"] >= r["max_attempts"]:
                    continue
                room -= r["images"]
                self._take(db, r["id"], owner, worker, r["attempts"] + 1, now, lease_s, leader["id"])
                taken.append(r["id"])
        return [self.get(j, events=False, preview=False) for j in taken]

    def _take(self, db: sqlite3.Connection, job_id: str, owner: str, worker: str, attempts: int, now: float,
              lease_s: float, leader: str | None) -> None:
        db.execute("UPDATE jobs SET state = ?, lease_owner = ?, lease_expires = ?, worker = ?, attempts = ?, "
                   "started = COALESCE(started, ?), attempt_started = ?, leader = ?, progress = 0, step = 0, "
                   "total = 0, eta_s = NULL, message = ? WHERE id = ?",
                   (RUNNING, owner, now + lease_s, worker, attempts, now, now, leader,
                    "running" if leader is None else f"running in a batch led by {leader}", job_id))
        note = f"attempt {attempts} on {worker}" + (f", batched with {leader}" if leader else "")
        self._event(db, job_id, "started", note, now)

    def renew(self, owner: str, lease_s: float) -> dict[str, bool]:
        """Renew the leases `owner` holds; returns {job id: cancel requested} for the jobs it still holds."""
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET lease_expires = ? WHERE lease_owner = ? AND state = ?",
                       (now + lease_s, owner, RUNNING))
            rows = db.execute("SELECT id, cancel_requested FROM jobs WHERE lease_owner = ? AND state = ?",
                              (owner, RUNNING)).fetchall()
        return {r["id"]: bool(r["cancel_requested"]) for r in rows}

    def held(self, owner: str) -> dict[str, bool]:
        """{job id: cancel requested} for the jobs `owner` still holds (a read; no renewal)."""
        rows = self._conn().execute("SELECT id, cancel_requested FROM jobs WHERE lease_owner = ? AND state = ?",
                                    (owner, RUNNING)).fetchall()
        return {r["id"]: bool(r["cancel_requested"]) for r in rows}

    def set_progress(self, owner: str, step: int, total: int, message: str, eta_s: float | None,
                     preview: str | None = None) -> None:
        progress = min(1.0, max(0.0, step / total)) if total > 0 else 0.0
        with self._tx() as db:
            if preview is None:
                db.execute("UPDATE jobs SET progress = ?, step = ?, total = ?, message = ?, eta_s = ? "
                           "WHERE lease_owner = ? AND state = ?", (progress, step, total, message, eta_s, owner,
                                                                   RUNNING))
            else:
                db.execute("UPDATE jobs SET progress = ?, step = ?, total = ?, message = ?, eta_s = ?, preview = ? "
                           "WHERE lease_owner = ? AND state = ?", (progress, step, total, message, eta_s, preview,
                                                                   owner, RUNNING))

    def finish(self, job_id: str, owner: str, state: str, error: str | None = None, metrics: dict | None = None,
               artifacts: list[dict] | None = None, staging: str | None = None, message: str | None = None) -> bool:
        """End a job the caller holds; False (and no change) when its lease was lost meanwhile."""
        ending = Ending(job_id, state, error, metrics, artifacts, staging, message)
        return job_id in self.finish_many(owner, [ending])

    def finish_many(self, owner: str, endings: list[Ending]) -> set[str]:
        """End several held jobs in one transaction (a micro-batch); returns the ids that were still held."""
        now = time.time()
        done: set[str] = set()
        with self._tx() as db:
            for e in endings:
                cur = db.execute("SELECT lease_owner, state FROM jobs WHERE id = ?", (e.job_id,)).fetchone()
                if cur is None or cur["lease_owner"] != owner or cur["state"] != RUNNING:
                    continue
                self._finish_row(db, e.job_id, e.state, now, error=e.error, metrics=e.metrics, staging=e.staging,
                                 message=e.message or e.state.lower())
                db.executemany("INSERT OR REPLACE INTO artifacts (job_id, name, kind, path, size) "
                               "VALUES (?, ?, ?, ?, ?)",
                               [(e.job_id, a["name"], a["kind"], a["path"], a["size"]) for a in e.artifacts or []])
                done.add(e.job_id)
        return done

    def _finish_row(self, db: sqlite3.Connection, job_id: str, state: str, now: float, error: str | None = None,
                    metrics: dict | None = None, staging: str | None = None, message: str = "") -> None:
        # one line under 300 characters, whatever a worker, release or reap put together
        error = clip(error, MAX_MESSAGE_CHARS) if error is not None else None
        message = clip(message, MAX_MESSAGE_CHARS)
        db.execute("UPDATE jobs SET state = ?, finished = ?, error = ?, metrics = ?, staging = ?, message = ?, "
                   "lease_owner = NULL, lease_expires = NULL, eta_s = NULL, "
                   "progress = CASE WHEN ? = 'SUCCEEDED' THEN 1.0 ELSE progress END WHERE id = ?",
                   (state, now, error, json.dumps(metrics, default=str) if metrics is not None else None, staging,
                    message, state, job_id))
        self._event(db, job_id, state.lower(), error or message, now)

    def release(self, job_id: str, owner: str, reason: str) -> Requeued | None:
        """Put a held job back in the queue for a retry (bounded by max_attempts at the next claim)."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["lease_owner"] != owner or row["state"] != RUNNING:
                return None
            if row["attempts"] >= row["max_attempts"]:
                why = f"{clip(reason, 240)} (gave up after {row['attempts']} attempts)"  # the count stays visible
                self._finish_row(db, job_id, FAILED, now, error=why, message=why)
                return None
            msg = f"retrying: {clip(reason, 220)} (attempt {row['attempts'] + 1} of {row['max_attempts']} next)"
            db.execute("UPDATE jobs SET state = ?, lease_owner = NULL, lease_expires = NULL, leader = NULL, "
                       "message = ? WHERE id = ?", (QUEUED, msg, job_id))
            self._event(db, job_id, "retry", msg, now)
        return Requeued(job_id, row["queue"], row["priority"])

    def reap(self, now: float | None = None) -> list[Requeued]:
        """Reissue RUNNING jobs whose lease expired (their worker died); fail those past their time limit."""
        now = now or time.time()
        out: list[Requeued] = []
        with self._tx() as db:
            for row in db.execute("SELECT * FROM jobs WHERE state = ? AND lease_expires < ?",
                                  (RUNNING, now)).fetchall():
                if row["cancel_requested"]:
                    self._finish_row(db, row["id"], CANCELLED, now, message="cancelled (its worker was lost)")
                elif row["attempts"] >= row["max_attempts"]:
                    why = f"its worker was lost {row['attempts']} times; gave up"
                    self._finish_row(db, row["id"], FAILED, now, error=why, message=why)
                else:
                    msg = f"requeued: worker {row['worker']} was lost (attempt {row['attempts'] + 1} of " \
                          f"{row['max_attempts']} next)"
                    db.execute("UPDATE jobs SET state = ?, lease_owner = NULL, lease_expires = NULL, leader = NULL, "
                               "message = ? WHERE id = ?", (QUEUED, msg, row["id"]))
                    self._event(db, row["id"], "retry", msg, now)
                    out.append(Requeued(row["id"], row["queue"], row["priority"]))
            for row in db.execute("SELECT id, time_limit_s FROM jobs WHERE state = ? AND attempt_started + "
                                  "time_limit_s + ? < ?", (RUNNING, TIME_LIMIT_GRACE_S, now)).fetchall():
                why = f"time limit of {row['time_limit_s']:.0f} s exceeded"
                self._finish_row(db, row["id"], FAILED, now, error=why, message=why)
        return out

    # ----- workers: advertisement -----
    def worker_seen(self, worker_id: str, info: dict, job_id: str | None = None) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO workers (id, info, started, last_seen, job_id) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT(id) DO UPDATE SET info = excluded.info, last_seen = excluded.last_seen, "
                       "job_id = excluded.job_id", (worker_id, json.dumps(info, sort_keys=True), now, now, job_id))

    def worker_gone(self, worker_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def workers(self, live_within_s: float) -> list[dict]:
        """Workers that reported within the last `live_within_s` seconds."""
        cutoff = time.time() - live_within_s
        rows = self._conn().execute("SELECT * FROM workers WHERE last_seen >= ? ORDER BY started", (cutoff,))
        return [{**json.loads(r["info"]), "id": r["id"], "started": r["started"], "last_seen": r["last_seen"],
                 "job_id": r["job_id"]} for r in rows]

    # ----- records -----
    @staticmethod
    def _record(row: sqlite3.Row, preview: bool) -> dict:
        return {
            "id": row["id"], "state": row["state"], "op": row["op"], "backend": row["backend"], "model": row["model"],
            "progress": row["progress"], "step": row["step"], "total": row["total"], "message": row["message"],
            "eta_s": row["eta_s"], "preview_png_b64": row["preview"] if preview else None, "error": row["error"],
            "spec": json.loads(row["spec"]), "priority": row["priority"], "queue": row["queue"],
            "created": row["created"], "started": row["started"], "finished": row["finished"],
            "attempts": row["attempts"], "max_attempts": row["max_attempts"], "worker": row["worker"],
            "batch_leader": row["leader"], "parent": row["parent"], "cancel_requested": bool(row["cancel_requested"]),
            "metrics": json.loads(row["metrics"]) if row["metrics"] else None, "staging": row["staging"],
            "batch_key": row["batch_key"], "images": row["images"], "time_limit_s": row["time_limit_s"],
            "owner": row["owner"],
        }


def _why_not(state: str) -> str:
    """Why a message's own job is not run by this message."""
    if state in FINAL:
        return f"already {state}"
    return "running elsewhere under a live lease" if state == RUNNING else "another job ran in its place"


def _artifact(row: sqlite3.Row) -> dict:
    return {"name": row["name"], "kind": row["kind"], "path": row["path"], "size": row["size"]}


__all__ = ["CANCELLED", "FAILED", "FINAL", "QUEUED", "RUNNING", "SCHEMA_VERSION", "STATES", "SUCCEEDED", "Ending",
           "JobStore", "NewJob", "QuotaExceeded", "Requeued"]
