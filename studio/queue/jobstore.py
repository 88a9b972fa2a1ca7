"""Durable job records in the records database (studio.db: the embedded SQLite file, or PostgreSQL), shared by
clients, workers and the UI on any machine.

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
Every claim takes one QUEUED job in one write transaction, so a job still runs once at a time (SQLite: the
write lock; PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent claims pass each other's rows).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, RowMapping

from studio.db import SCHEMA_VERSION, Database, retrying, shared
from studio.db import artifacts as T_ART
from studio.db import events as T_EV
from studio.db import favourites as T_FAV
from studio.db import jobs as T_JOBS
from studio.db import workers as T_WORKERS
from studio.errors import MAX_MESSAGE_CHARS, InputError, NotFound, clip

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ID_RE = re.compile(r"^[0-9a-f]{4,32}$")
TIME_LIMIT_GRACE_S = 30.0
J = T_JOBS.c

# The hot path's statements, built once (SQLAlchemy then reuses their compiled form: no per-call construction)
_ID = bindparam("job_id")
_EVENT = insert(T_EV)
_ROW = select(T_JOBS).where(J.id == _ID)
_ROW_LOCKED = _ROW.with_for_update()
_STATE = select(J.state).where(J.id == _ID)
_PEEK = select(J.state, J.lease_expires, J.queue, J.started).where(J.id == _ID)
_ARTIFACTS_OF = select(T_ART).where(T_ART.c.job_id == _ID).order_by(T_ART.c.name)
_EVENTS_OF = select(T_EV.c.ts, T_EV.c.kind, T_EV.c.message).where(T_EV.c.job_id == _ID).order_by(T_EV.c.ts, T_EV.c.seq)
_ANY_QUEUED = select(J.id).where(J.queue == bindparam("queue"), J.state == QUEUED).limit(1)
_LEASE_OF = select(J.lease_owner, J.state, J.staging).where(J.id == _ID).with_for_update()
_HELD = select(J.id, J.cancel_requested).where(J.lease_owner == bindparam("owner"), J.state == RUNNING)
_TAKE = update(T_JOBS).where(J.id == _ID).values(
    state=RUNNING, lease_owner=bindparam("t_lease_owner"), lease_expires=bindparam("t_expires"),
    worker=bindparam("t_worker"), attempts=bindparam("t_attempts"),
    started=func.coalesce(J.started, bindparam("t_now")), attempt_started=bindparam("t_now"),
    leader=bindparam("t_leader"), progress=0, step=0, total=0, eta_s=None, message=bindparam("t_message"))
_WAITING = [J.queue == bindparam("queue"), J.state == QUEUED]
_SWEEPABLE = select(J.id, J.attempts, J.cancel_requested).where(
    *_WAITING, or_(J.cancel_requested == 1, J.attempts >= J.max_attempts)).with_for_update(skip_locked=True)
_TOP = select(func.max(J.priority)).where(*_WAITING)
_AT_TOP = [*_WAITING, J.priority == bindparam("top")]
_OWNERS = select(J.owner, func.min(J.created).label("oldest")).where(*_AT_TOP).group_by(J.owner)
_THEIRS = [*_AT_TOP, J.owner.is_not_distinct_from(bindparam("owner"))]
_OWN_IF_THEIRS = select(J.id, J.attempts).where(J.id == _ID, *_THEIRS).with_for_update(skip_locked=True)
_OLDEST_OF_THEIRS = select(J.id, J.attempts).where(*_THEIRS).order_by(J.created, J.id).limit(1) \
    .with_for_update(skip_locked=True)


class QuotaExceeded(InputError):
    """A user already has as many queued jobs as STUDIO_MAX_QUEUED_PER_USER allows."""


def output_count(spec: dict) -> int:
    """How many images a (validated) spec renders, by its op's declaration; 0 for an op not installed here."""
    from studio.registry import load_registry

    op = load_registry().ops.get(str(spec.get("op")))
    try:
        return op.model_validate(spec).output_count() if op is not None else 0
    except ValueError:
        return 0


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
    images: int | None = None  # how many images it renders (None: its op's output_count); a micro-batch's room


@dataclass(frozen=True)
class Ending:
    """How one held job ends (see JobStore.finish_many). `artifacts`: [{name, kind, key, size}] already in storage
    under the attempt prefix `staging`."""

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


def _database(where: Database | str | Path) -> Database:
    if isinstance(where, Database):
        return where
    text = str(where)
    return shared(text if "://" in text else f"sqlite:///{Path(text).expanduser()}")


class JobStore:
    """Job records in a records database (a Database, a URL, or the path of an SQLite file). Safe to use from
    several threads, processes and machines."""

    def __init__(self, where: Database | str | Path) -> None:
        self.db = _database(where)
        self.db.ensure_schema()

    @classmethod
    def from_settings(cls, settings) -> JobStore:  # noqa: ANN001 - Settings, imported lazily
        return cls(Database.for_settings(settings))

    def schema_version(self) -> int:
        return self.db.schema_version()

    def close(self) -> None:
        """Nothing to release per store: the process's engine pools connections (kept for callers)."""

    @staticmethod
    def _event(db: Connection, job_id: str, kind: str, message: str, now: float | None = None) -> None:
        db.execute(_EVENT, {"job_id": job_id, "ts": now or time.time(), "kind": kind,
                            "message": clip(message, MAX_MESSAGE_CHARS)})

    @staticmethod
    def _row(db: Connection, job_id: str, lock: bool = False) -> RowMapping | None:
        return db.execute(_ROW_LOCKED if lock else _ROW, {"job_id": job_id}).mappings().first()

    # ----- clients -----
    @retrying
    def create(self, job: NewJob, max_queued: int = 0) -> None:
        """Record a new QUEUED job. With `max_queued` > 0, QuotaExceeded when its owner already has that many
        QUEUED jobs (checked in the same transaction, so concurrent submits cannot overshoot)."""
        spec = job.spec
        images = job.images if job.images is not None else output_count(spec)
        now = time.time()
        with self.db.write() as db:
            if max_queued > 0:
                self.db.lock(db, f"quota:{job.owner}")
                queued = self._count_queued(db, job.owner)
                if queued >= max_queued:
                    who = f"user {job.owner}" if job.owner else "you"
                    raise QuotaExceeded(f"max_queued_per_user: {who} already {'has' if job.owner else 'have'} "
                                        f"{queued} queued jobs (STUDIO_MAX_QUEUED_PER_USER={max_queued}); wait for "
                                        "some to start or cancel some")
            same = db.execute(select(J.spec).where(J.id == job.id)).first()
            if same is not None:  # a retry of this create whose reply was lost: done already
                if same[0] == json.dumps(spec, sort_keys=True):
                    return
                raise InputError(f"job id {job.id} is already taken")
            db.execute(insert(T_JOBS).values(
                id=job.id, state=QUEUED, op=spec["op"], backend=spec["backend"], model=spec.get("model"),
                spec=json.dumps(spec, sort_keys=True), priority=job.priority, queue=job.queue,
                batch_key=job.batch_key, images=images, created=now, max_attempts=job.max_attempts,
                time_limit_s=job.time_limit_s, message="queued", parent=job.parent, owner=job.owner))
            self._event(db, job.id, "queued", f"queued on {job.queue} with priority {job.priority}", now)

    @retrying
    def delete(self, job_id: str) -> bool:
        """Remove a job record that was never published (a failed submit leaves nothing behind), only while it is
        still QUEUED: False when a worker already took it (with fair share a spare message can start any queued job
        of its queue), and then it is kept."""
        with self.db.write() as db:
            gone = db.execute(delete(T_JOBS).where(J.id == job_id, J.state == QUEUED)).rowcount > 0
            if gone:
                db.execute(delete(T_EV).where(T_EV.c.job_id == job_id))
        return gone

    @retrying
    def resolve(self, job_id: str, viewer: str | None = None) -> str:
        """A full job id from an id or a unique prefix of at least 4 characters (among `viewer`'s jobs when
        given: another user's job is "not found")."""
        key = str(job_id).strip().lower()
        if not ID_RE.match(key):
            raise InputError(f"{job_id!r} is not a job id (hex characters, e.g. from `studio jobs`)")
        mine = [J.owner == viewer] if viewer is not None else []
        with self.db.read() as db:
            if viewer is None:
                exact = db.execute(_STATE, {"job_id": key}).first()
                if exact is not None:
                    return key
            else:
                exact = db.execute(select(J.id).where(J.id == key, *mine)).first()
                if exact is not None:
                    return exact[0]
            rows = db.execute(select(J.id).where(J.id.startswith(key), *mine).limit(2)).all()
        if not rows:
            raise NotFound(f"no job {job_id!r}")
        if len(rows) > 1:
            raise InputError(f"job id prefix {job_id!r} is ambiguous; give more characters")
        return rows[0][0]

    @retrying
    def get(self, job_id: str, events: bool = True, preview: bool = True, viewer: str | None = None) -> dict:
        """The job's full record (the client's status dict); NotFound for another user's job."""
        job_id = self.resolve(job_id, viewer)
        with self.db.read() as db:
            row = self._row(db, job_id)
            if row is None:
                raise NotFound(f"no job {job_id!r}")
            out = self._record(row, preview)
            out["artifacts"] = [_artifact(a) for a in db.execute(_ARTIFACTS_OF, {"job_id": job_id}).mappings()]
            if events:
                out["events"] = [dict(e) for e in db.execute(_EVENTS_OF, {"job_id": job_id}).mappings()]
        return out

    @retrying
    def list(self, state: str | None = None, limit: int = 100, viewer: str | None = None) -> list[dict]:
        """History, newest first (previews left out); only `viewer`'s jobs when given."""
        if state is not None and state.upper() not in STATES:
            raise InputError(f"unknown state {state!r} (use one of {', '.join(STATES)})")
        if limit < 1:
            raise InputError(f"limit must be at least 1, got {limit}")
        conds = ([J.state == state.upper()] if state else []) + ([J.owner == viewer] if viewer is not None else [])
        with self.db.read() as db:
            rows = db.execute(select(T_JOBS).where(*conds).order_by(J.created.desc(), J.id.desc())
                              .limit(limit)).mappings().all()
            return self._with_artifacts(db, rows)

    @retrying
    def state(self, job_id: str) -> str:
        """Only the state of a job (a cheap read, for polling)."""
        with self.db.read() as db:
            row = db.execute(_STATE, {"job_id": job_id}).first()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return row[0]

    @retrying
    def artifacts(self, job_id: str) -> list[dict]:
        with self.db.read() as db:
            return [_artifact(a) for a in db.execute(_ARTIFACTS_OF, {"job_id": job_id}).mappings()]

    def _with_artifacts(self, db: Connection, rows: list[RowMapping]) -> list[dict]:
        """The job records of `rows` (previews left out), each with its artifacts."""
        arts = self._artifacts(db, [r["id"] for r in rows]) if rows else {}
        return [{**self._record(r, preview=False), "artifacts": arts.get(r["id"], [])} for r in rows]

    @staticmethod
    def _artifacts(db: Connection, ids: list[str]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for a in db.execute(select(T_ART).where(T_ART.c.job_id.in_(ids)).order_by(T_ART.c.job_id, T_ART.c.name)) \
                .mappings():
            out.setdefault(a["job_id"], []).append(_artifact(a))
        return out

    @retrying
    def committed_prefixes(self, job_ids: list[str]) -> dict[str, set[str]]:
        """{job id: the storage prefixes its committed artifacts lie under} (what orphan collection keeps)."""
        out: dict[str, set[str]] = {j: set() for j in job_ids}
        with self.db.read() as db:
            for start in range(0, len(job_ids), 1000):  # bounded IN lists, whatever the history's size
                chunk = job_ids[start:start + 1000]
                for job_id, key in db.execute(select(T_ART.c.job_id, T_ART.c.key).where(T_ART.c.job_id.in_(chunk))):
                    out.setdefault(job_id, set()).add(key.rsplit("/", 1)[0])
        return out

    @retrying
    def count_queued(self, owner: str | None) -> int:
        """How many QUEUED jobs `owner` has (None: the single-user default's)."""
        with self.db.read() as db:
            return self._count_queued(db, owner)

    @staticmethod
    def _count_queued(db: Connection, owner: str | None) -> int:
        return int(db.execute(select(func.count()).select_from(T_JOBS)
                              .where(J.owner.is_not_distinct_from(owner), J.state == QUEUED)).scalar() or 0)

    # ----- the gallery: every image of a user's finished jobs, and their stars -----
    def _prompt_of(self):  # noqa: ANN202 - a SQL expression
        """The spec's options.prompt as SQL text (NULL when the spec has none)."""
        if self.db.is_sqlite:
            return func.json_extract(J.spec, "$.options.prompt")
        from sqlalchemy import cast
        from sqlalchemy.dialects.postgresql import JSONB

        return func.jsonb_extract_path_text(cast(J.spec, JSONB), "options", "prompt")

    @retrying
    def gallery(self, viewer: str | None = None, favourites_of: str | None = None, *, backend: str | None = None,
                model: str | None = None, op: str | None = None, prompt: str | None = None,
                since: float | None = None, until: float | None = None, favourites_only: bool = False,
                offset: int = 0, limit: int = 48) -> tuple[list[dict], int]:
        """One page of the images of SUCCEEDED jobs, newest job first (then by name), and how many match in all:
        ([{job_id, name, kind, size, op, backend, model, created, favourite}], total). Only `viewer`'s jobs when
        given. `favourites_of` is the user whose stars are read (None: the single-user default); with
        `favourites_only` only their starred images are kept. backend, model and op are exact; `prompt` is a
        case-insensitive substring of the spec's options.prompt; since/until bound the job's creation time (Unix
        seconds, `until` excluded). A job's grid.png or strip.png (made of its other images) is left out when the
        job has other images. Everything is filtered and paged in the database: a page is two queries."""
        from sqlalchemy import and_, exists, not_

        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InputError(f"offset must be a whole number of at least 0, got {offset!r}"[:200])
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
            raise InputError(f"limit must be a whole number from 1 to 500, got {limit!r}"[:200])
        for what, value in (("backend", backend), ("model", model), ("op", op), ("prompt", prompt)):
            if value is not None and (not isinstance(value, str) or len(value) > 500):
                raise InputError(f"gallery filter {what} must be text of at most 500 characters")
        composites = ("grid.png", "strip.png")
        A, F = T_ART.c, T_FAV.c
        other = T_ART.alias("other")
        conds = [J.state == SUCCEEDED, A.kind == "image",
                 not_(and_(A.name.in_(composites),
                           exists(select(other.c.name).where(other.c.job_id == A.job_id, other.c.kind == "image",
                                                             other.c.name.not_in(composites)))))]
        if viewer is not None:
            conds.append(J.owner == viewer)
        conds += [col == value for col, value in ((J.backend, backend), (J.model, model), (J.op, op)) if value]
        if prompt and prompt.strip():
            conds.append(func.lower(self._prompt_of()).contains(prompt.strip().lower(), autoescape=True))
        if since is not None:
            conds.append(J.created >= float(since))
        if until is not None:
            conds.append(J.created < float(until))
        starred = and_(F.owner == (favourites_of or ""), F.job_id == A.job_id, F.name == A.name)
        joined = T_ART.join(T_JOBS, J.id == A.job_id)
        joined = joined.join(T_FAV, starred) if favourites_only else joined.outerjoin(T_FAV, starred)
        with self.db.read() as db:
            total = int(db.execute(select(func.count()).select_from(joined).where(*conds)).scalar() or 0)
            rows = db.execute(select(A.job_id, A.name, A.kind, A.size, J.op, J.backend, J.model, J.created,
                                     F.created.label("starred")).select_from(joined).where(*conds)
                              .order_by(J.created.desc(), J.id.desc(), A.name).offset(offset).limit(limit)) \
                .mappings().all()
        items = [{"job_id": r["job_id"], "name": r["name"], "kind": r["kind"], "size": r["size"], "op": r["op"],
                  "backend": r["backend"], "model": r["model"], "created": r["created"],
                  "favourite": r["starred"] is not None} for r in rows]
        return items, total

    @retrying
    def gallery_facets(self, viewer: str | None = None, limit: int = 200) -> dict[str, list[str]]:
        """The backends, models and ops of `viewer`'s SUCCEEDED jobs (all jobs for None), each sorted: the
        gallery's filter choices (at most `limit` of each)."""
        mine = [J.owner == viewer] if viewer is not None else []
        out: dict[str, list[str]] = {}
        with self.db.read() as db:
            for key, col in (("backend", J.backend), ("model", J.model), ("op", J.op)):
                rows = db.execute(select(col).where(J.state == SUCCEEDED, col.is_not(None), *mine).distinct()
                                  .order_by(col).limit(limit)).all()
                out[key] = [r[0] for r in rows]
        return out

    @retrying
    def set_favourite(self, owner: str | None, job_id: str, name: str, on: bool = True,
                      viewer: str | None = None) -> bool:
        """Star (`on`) or unstar image `name` of job `job_id` (one `viewer` sees) for user `owner` (None: the
        single-user default); returns whether it is starred now. NotFound for a job or an image they cannot see."""
        job_id = self.resolve(job_id, viewer)
        if not isinstance(name, str) or not name or len(name) > 200:
            raise InputError("favourite: name an image of the job")
        key = {"owner": owner or "", "job_id": job_id, "name": name}
        with self.db.write() as db:
            kind = db.execute(select(T_ART.c.kind).where(T_ART.c.job_id == job_id, T_ART.c.name == name)).first()
            if kind is None or kind[0] != "image":
                raise NotFound(f"job {job_id} has no image {clip(name, 80)!r}")
            if on:
                self.db.upsert(db, T_FAV, {**key, "created": time.time()}, list(key))
            else:
                db.execute(delete(T_FAV).where(*(T_FAV.c[k] == v for k, v in key.items())))
        return bool(on)

    @retrying
    def request_cancel(self, job_id: str, viewer: str | None = None) -> dict:
        """QUEUED: CANCELLED at once (it never runs). RUNNING: flagged; its worker stops at the next step."""
        job_id = self.resolve(job_id, viewer)
        now = time.time()
        with self.db.write() as db:
            row = self._row(db, job_id, lock=True)
            if row is None:
                raise NotFound(f"no job {job_id!r}")
            if row["state"] == QUEUED:
                db.execute(update(T_JOBS).where(J.id == job_id).values(
                    state=CANCELLED, finished=now, message="cancelled before it ran", cancel_requested=1))
                self._event(db, job_id, "cancelled", "cancelled while queued", now)
            elif row["state"] == RUNNING:
                db.execute(update(T_JOBS).where(J.id == job_id).values(cancel_requested=1, message="cancelling"))
                self._event(db, job_id, "cancel", "cancel requested while running", now)
        return self.get(job_id, viewer=viewer)

    # ----- push events and webhooks (studio.ui.events_api, studio.queue.webhooks) -----
    @retrying
    def events_after(self, job_id: str, after: int = 0, limit: int = 500) -> list[dict]:
        """The job's event rows newer than `after` (their `seq`, increasing), oldest first: {seq, ts, kind, message}."""
        with self.db.read() as db:
            rows = db.execute(select(T_EV.c.seq, T_EV.c.ts, T_EV.c.kind, T_EV.c.message)
                              .where(T_EV.c.job_id == job_id, T_EV.c.seq > int(after))
                              .order_by(T_EV.c.seq).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    @retrying
    def add_event(self, job_id: str, kind: str, message: str) -> None:
        """Record one event of a job (e.g. a webhook delivery attempt)."""
        with self.db.write(relaxed=True) as db:
            self._event(db, job_id, kind, message)

    @retrying
    def add_event_once(self, job_id: str, kind: str, message: str) -> bool:
        """Record an event of `kind` unless the job already has one; True when this call recorded it (so, of
        several workers, exactly one acts on it)."""
        with self.db.write() as db:
            if self._row(db, job_id, lock=True) is None:
                return False
            seen = db.execute(select(T_EV.c.seq).where(T_EV.c.job_id == job_id, T_EV.c.kind == kind).limit(1)).first()
            if seen is not None:
                return False
            self._event(db, job_id, kind, message)
        return True

    @retrying
    def ended_unmarked(self, marker: str, since: float, contains: str, created_since: float = 0.0,
                       limit: int = 50) -> list[dict]:
        """Jobs created at or after `created_since` (the index bounds the scan) that ended at or after `since`,
        whose stored spec text contains `contains`, and that have no event of kind `marker` yet (the webhook
        sweep: jobs whose delivery is not scheduled), oldest end first."""
        marked = select(T_EV.c.seq).where(T_EV.c.job_id == J.id, T_EV.c.kind == marker).exists()
        with self.db.read() as db:
            rows = db.execute(select(T_JOBS).where(J.created >= created_since, J.state.in_(sorted(FINAL)),
                                                   J.finished >= since,
                                                   J.spec.contains(contains, autoescape=True), ~marked)
                              .order_by(J.finished, J.id).limit(limit)).mappings().all()
            return self._with_artifacts(db, rows)

    # ----- workers: claims and leases -----
    @retrying
    def claim(self, job_id: str, owner: str, worker: str, lease_s: float) -> tuple[dict | None, str]:
        """Run one job for the message naming `job_id`: its own job if its lease expired (a lost worker), else the
        fairest eligible QUEUED job of its queue (see the module docstring). Returns (job, "") or (None, why
        nothing was claimed), the why being about the message's own job."""
        now = time.time()
        with self.db.read() as db:
            peek = db.execute(_PEEK, {"job_id": job_id}).mappings().first()
            if peek is None:
                return None, "unknown job"
            expired = peek["state"] == RUNNING and (peek["lease_expires"] or 0) <= now
            if peek["state"] != QUEUED and not expired:
                # the common no-op (a batched job's own message, a duplicate), decided without a write: a job
                # cancelled before it ever ran still holds its own message; any other message stands in for a job
                # that was run in its place, so it runs the fairest queued job of its queue when there is one
                never_ran = peek["state"] == CANCELLED and peek["started"] is None
                if never_ran or not self._any_queued(db, peek["queue"]):
                    return None, _why_not(peek["state"])
        with self.db.write() as db:
            now = self.db.now(db)  # leases are compared on one clock (the database's), whatever this machine's
            row = self._row(db, job_id, lock=True)
            if row is None:  # a failed submit removed it meanwhile
                return None, "unknown job"
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
                    return self._fetch(db, job_id), ""
            elif row["state"] == CANCELLED and row["started"] is None:
                return None, why
            swept = self._sweep(db, row["queue"], now)
            why = swept.get(job_id, why)
            pick = self._fairest(db, row["queue"], job_id)
            if pick is None and row["state"] == QUEUED and job_id not in swept:
                # every job ahead of it is being claimed by others (rows they hold are skipped): run its own job,
                # locked by this transaction, rather than leave it without a message
                pick = {"id": job_id, "attempts": row["attempts"]}
            if pick is None:
                return None, why
            self._take(db, pick["id"], owner, worker, pick["attempts"] + 1, now, lease_s, None)
            return self._fetch(db, pick["id"]), ""

    def _fetch(self, db: Connection, job_id: str) -> dict:
        rec = self._record(self._row(db, job_id), preview=False)
        rec["artifacts"] = []
        return rec

    @staticmethod
    def _any_queued(db: Connection, queue: str) -> bool:
        return db.execute(_ANY_QUEUED, {"queue": queue}).first() is not None

    def _sweep(self, db: Connection, queue: str, now: float) -> dict[str, str]:
        """End the QUEUED jobs of `queue` that must never run (cancel flagged, out of attempts); {id: why}."""
        out = {}
        rows = db.execute(_SWEEPABLE, {"queue": queue}).mappings().all()
        for r in rows:
            if r["cancel_requested"]:
                self._finish_row(db, r["id"], CANCELLED, now, message="cancelled")
                out[r["id"]] = "cancelled"
            else:
                why = f"gave up after {r['attempts']} attempts"
                self._finish_row(db, r["id"], FAILED, now, error=why, message=why)
                out[r["id"]] = why
        return out

    @staticmethod
    def _fairest(db: Connection, queue: str, own: str) -> RowMapping | None:
        """The next job of `queue`: highest priority present; within it, the user with the fewest RUNNING jobs
        (ties: whose last start is oldest, never-started first; then whose oldest job is oldest); that user's
        oldest job, or the message's own job `own` when it is one of that user's jobs at that priority (so
        messages mostly run their own jobs, in broker order). Rows another transaction holds are passed over."""
        top = db.execute(_TOP, {"queue": queue}).scalar()
        if top is None:
            return None
        owners = db.execute(_OWNERS, {"queue": queue, "top": top}).mappings().all()
        if len(owners) > 1:
            running = dict(db.execute(select(J.owner, func.count()).where(J.state == RUNNING).group_by(J.owner))
                           .all())
            last = dict(db.execute(select(J.owner, func.max(J.attempt_started))
                                   .where(J.owner.in_([o["owner"] for o in owners if o["owner"] is not None]))
                                   .group_by(J.owner)).all())
            if any(o["owner"] is None for o in owners):
                last[None] = db.execute(select(func.max(J.attempt_started)).where(J.owner.is_(None))).scalar()
            order = sorted(owners, key=lambda r: (running.get(r["owner"], 0), last.get(r["owner"]) or 0.0,
                                                  r["oldest"]))
        else:
            order = list(owners)
        for chosen in order:
            params = {"queue": queue, "top": top, "owner": chosen["owner"], "job_id": own}
            mine = db.execute(_OWN_IF_THEIRS, params).mappings().first()
            if mine is not None:
                return mine
            pick = db.execute(_OLDEST_OF_THEIRS, params).mappings().first()
            if pick is not None:
                return pick
        return None

    @retrying
    def claim_batch(self, leader: dict, owner: str, worker: str, lease_s: float, max_images: int,
                    limit: int = 256) -> list[dict]:
        """Claim QUEUED jobs compatible with `leader` (same batch key, same job owner) so they run in its forward
        pass. Never another user's job, whatever its key (a follower's record names its leader's job id)."""
        key = leader.get("batch_key")
        room = max_images - int(leader.get("images") or 0)
        if not key or room <= 0:
            return []
        same = [J.state == QUEUED, J.batch_key == key, J.id != leader["id"],
                J.owner.is_not_distinct_from(leader.get("owner"))]
        with self.db.read() as db:
            if db.execute(select(J.id).where(*same).limit(1)).first() is None:  # nothing to coalesce: no write
                return []
        now = time.time()
        taken: list[str] = []
        with self.db.write() as db:
            now = self.db.now(db)
            rows = db.execute(select(J.id, J.images, J.attempts, J.max_attempts)
                              .where(*same, J.cancel_requested == 0)
                              .order_by(J.priority.desc(), J.created, J.id).limit(limit)
                              .with_for_update(skip_locked=True)).mappings().all()
            for r in rows:
                if r["images"] > room or r["attempts"] >= r["max_attempts"]:
                    continue
                room -= r["images"]
                self._take(db, r["id"], owner, worker, r["attempts"] + 1, now, lease_s, leader["id"])
                taken.append(r["id"])
            return [self._fetch(db, j) for j in taken]

    def _take(self, db: Connection, job_id: str, owner: str, worker: str, attempts: int, now: float,
              lease_s: float, leader: str | None) -> None:
        db.execute(_TAKE, {"job_id": job_id, "t_lease_owner": owner, "t_expires": now + lease_s, "t_worker": worker,
                           "t_attempts": attempts, "t_now": now, "t_leader": leader,
                           "t_message": "running" if leader is None else f"running in a batch led by {leader}"})
        note = f"attempt {attempts} on {worker}" + (f", batched with {leader}" if leader else "")
        self._event(db, job_id, "started", note, now)

    @retrying
    def renew(self, owner: str, lease_s: float) -> dict[str, bool]:
        """Renew the leases `owner` holds; returns {job id: cancel requested} for the jobs it still holds."""
        now = time.time()
        with self.db.write(relaxed=True) as db:
            now = self.db.now(db)
            db.execute(update(T_JOBS).where(J.lease_owner == owner, J.state == RUNNING)
                       .values(lease_expires=now + lease_s))
            rows = db.execute(_HELD, {"owner": owner}).all()
        return {r[0]: bool(r[1]) for r in rows}

    @retrying
    def held(self, owner: str) -> dict[str, bool]:
        """{job id: cancel requested} for the jobs `owner` still holds (a read; no renewal)."""
        with self.db.read() as db:
            rows = db.execute(_HELD, {"owner": owner}).all()
        return {r[0]: bool(r[1]) for r in rows}

    @retrying
    def set_progress(self, owner: str, step: int, total: int, message: str, eta_s: float | None,
                     preview: str | None = None) -> None:
        progress = min(1.0, max(0.0, step / total)) if total > 0 else 0.0
        values = {"progress": progress, "step": step, "total": total, "message": message, "eta_s": eta_s}
        if preview is not None:
            values["preview"] = preview
        with self.db.write(relaxed=True) as db:
            db.execute(update(T_JOBS).where(J.lease_owner == owner, J.state == RUNNING).values(**values))

    def finish(self, job_id: str, owner: str, state: str, error: str | None = None, metrics: dict | None = None,
               artifacts: list[dict] | None = None, staging: str | None = None, message: str | None = None) -> bool:
        """End a job the caller holds; False (and no change) when its lease was lost meanwhile."""
        ending = Ending(job_id, state, error, metrics, artifacts, staging, message)
        return job_id in self.finish_many(owner, [ending])

    @retrying
    def finish_many(self, owner: str, endings: list[Ending]) -> set[str]:
        """End several held jobs in one transaction (a micro-batch), committing their artifact manifests; returns
        the ids that were still held (the others' artifacts are the caller's to remove)."""
        now = time.time()
        done: set[str] = set()
        with self.db.write() as db:
            for e in endings:
                cur = db.execute(_LEASE_OF, {"job_id": e.job_id}).first()
                if cur is not None and e.staging and cur[1] in FINAL and cur[2] == e.staging:
                    done.add(e.job_id)  # this very ending was committed by an attempt whose reply was lost
                    continue
                if cur is None or cur[0] != owner or cur[1] != RUNNING:
                    continue
                self._finish_row(db, e.job_id, e.state, now, error=e.error, metrics=e.metrics, staging=e.staging,
                                 message=e.message or e.state.lower())
                if e.artifacts:  # the first and only commit of this job (only a live lease holder gets here)
                    db.execute(insert(T_ART), [{"job_id": e.job_id, "name": a["name"], "kind": a["kind"],
                                                "key": a["key"], "size": a["size"]} for a in e.artifacts])
                done.add(e.job_id)
        return done

    def _finish_row(self, db: Connection, job_id: str, state: str, now: float, error: str | None = None,
                    metrics: dict | None = None, staging: str | None = None, message: str = "") -> None:
        # one line under 300 characters, whatever a worker, release or reap put together
        error = clip(error, MAX_MESSAGE_CHARS) if error is not None else None
        message = clip(message, MAX_MESSAGE_CHARS)
        values = {"state": state, "finished": now, "error": error, "staging": staging, "message": message,
                  "metrics": json.dumps(metrics, default=str) if metrics is not None else None,
                  "lease_owner": None, "lease_expires": None, "eta_s": None}
        if state == SUCCEEDED:
            values["progress"] = 1.0
        db.execute(update(T_JOBS).where(J.id == job_id).values(**values))
        self._event(db, job_id, state.lower(), error or message, now)

    @retrying
    def release(self, job_id: str, owner: str, reason: str) -> Requeued | None:
        """Put a held job back in the queue for a retry (bounded by max_attempts at the next claim)."""
        now = time.time()
        with self.db.write() as db:
            row = self._row(db, job_id, lock=True)
            if row is not None and row["state"] == QUEUED and row["lease_owner"] is None and \
                    row["message"].startswith("retrying: "):
                return Requeued(job_id, row["queue"], row["priority"])  # a retry of a release whose reply was lost
            if row is None or row["lease_owner"] != owner or row["state"] != RUNNING:
                return None
            if row["attempts"] >= row["max_attempts"]:
                why = f"{clip(reason, 240)} (gave up after {row['attempts']} attempts)"  # the count stays visible
                self._finish_row(db, job_id, FAILED, now, error=why, message=why)
                return None
            msg = f"retrying: {clip(reason, 220)} (attempt {row['attempts'] + 1} of {row['max_attempts']} next)"
            db.execute(update(T_JOBS).where(J.id == job_id).values(state=QUEUED, lease_owner=None, lease_expires=None,
                                                                   leader=None, message=msg))
            self._event(db, job_id, "retry", msg, now)
        return Requeued(job_id, row["queue"], row["priority"])

    @retrying
    def reap(self, now: float | None = None) -> list[Requeued]:
        """Reissue RUNNING jobs whose lease expired (their worker died); fail those past their time limit."""
        given = now
        out: list[Requeued] = []
        with self.db.write() as db:
            now = given or self.db.now(db)
            for row in db.execute(select(T_JOBS).where(J.state == RUNNING, J.lease_expires < now)
                                  .with_for_update(skip_locked=True)).mappings().all():
                if row["cancel_requested"]:
                    self._finish_row(db, row["id"], CANCELLED, now, message="cancelled (its worker was lost)")
                elif row["attempts"] >= row["max_attempts"]:
                    why = f"its worker was lost {row['attempts']} times; gave up"
                    self._finish_row(db, row["id"], FAILED, now, error=why, message=why)
                else:
                    msg = f"requeued: worker {row['worker']} was lost (attempt {row['attempts'] + 1} of " \
                          f"{row['max_attempts']} next)"
                    db.execute(update(T_JOBS).where(J.id == row["id"]).values(
                        state=QUEUED, lease_owner=None, lease_expires=None, leader=None, message=msg))
                    self._event(db, row["id"], "retry", msg, now)
                    out.append(Requeued(row["id"], row["queue"], row["priority"]))
            over = J.attempt_started + J.time_limit_s + TIME_LIMIT_GRACE_S < now
            for row in db.execute(select(J.id, J.time_limit_s).where(J.state == RUNNING, over)
                                  .with_for_update(skip_locked=True)).mappings().all():
                why = f"time limit of {row['time_limit_s']:.0f} s exceeded"
                self._finish_row(db, row["id"], FAILED, now, error=why, message=why)
        return out

    # ----- workers: advertisement -----
    @retrying
    def worker_seen(self, worker_id: str, info: dict, job_id: str | None = None) -> None:
        now = time.time()
        with self.db.write(relaxed=True) as db:
            exists = db.execute(select(T_WORKERS.c.id).where(T_WORKERS.c.id == worker_id)).first() is not None
            values = {"info": json.dumps(info, sort_keys=True), "last_seen": now, "job_id": job_id}
            if exists:
                db.execute(update(T_WORKERS).where(T_WORKERS.c.id == worker_id).values(**values))
            else:
                self.db.upsert(db, T_WORKERS, {"id": worker_id, "started": now, **values}, ["id"])

    @retrying
    def worker_gone(self, worker_id: str) -> None:
        with self.db.write() as db:
            db.execute(delete(T_WORKERS).where(T_WORKERS.c.id == worker_id))

    @retrying
    def workers(self, live_within_s: float) -> list[dict]:
        """Workers that reported within the last `live_within_s` seconds."""
        cutoff = time.time() - live_within_s
        with self.db.read() as db:
            rows = db.execute(select(T_WORKERS).where(T_WORKERS.c.last_seen >= cutoff)
                              .order_by(T_WORKERS.c.started)).mappings().all()
        return [{**json.loads(r["info"]), "id": r["id"], "started": r["started"], "last_seen": r["last_seen"],
                 "job_id": r["job_id"]} for r in rows]

    # ----- records -----
    @staticmethod
    def _record(row: RowMapping, preview: bool) -> dict:
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


def _artifact(row: RowMapping) -> dict:
    return {"name": row["name"], "kind": row["kind"], "key": row["key"], "size": row["size"]}


def _why_not(state: str) -> str:
    """Why a message's own job is not run by this message."""
    if state in FINAL:
        return f"already {state}"
    return "running elsewhere under a live lease" if state == RUNNING else "another job ran in its place"


__all__ = ["CANCELLED", "FAILED", "FINAL", "QUEUED", "RUNNING", "SCHEMA_VERSION", "STATES", "SUCCEEDED", "Ending",
           "JobStore", "NewJob", "QuotaExceeded", "Requeued"]
