"""The Python client of the job queue: submit, watch, cancel, list and fetch jobs.

Every job spec is validated here before anything is queued (a bad spec raises InputError and leaves no
record and no message). Records live in the job store (SQLite in the store), so status, history and
results need no broker; only submitting needs one (STUDIO_BROKER_URL, or the embedded Redis of `studio up`).

Status dicts have: id, state (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED), progress (0..1), step, total,
message, eta_s, preview_png_b64, error, spec, priority, created/started/finished (Unix seconds), attempts,
max_attempts, artifacts [{name, kind, path, size}], events [{ts, kind, message}] (retries are listed there),
and op, backend, model, queue, worker, batch_leader, parent, metrics.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from studio.config import Settings, load_settings
from studio.errors import InputError, NotFound, StudioError
from studio.queue.jobstore import FINAL, QUEUED, JobStore, NewJob
from studio.queue.store import ArtifactStore

if TYPE_CHECKING:
    from celery import Celery

    from studio.spec import OpSpec


class WaitTimeout(StudioError, TimeoutError):
    """wait() gave up before the job ended."""


def new_job_id() -> str:
    return secrets.token_hex(6)


def _poll_interval(elapsed: float, notified: bool) -> float:
    """How long wait() waits between reads of the job store. With 'job ended' announcements (Redis) it wakes
    at once anyway and polls only as a fallback; without, it polls every few ms at first (a read is ~50 us)."""
    if notified:
        return 0.25
    if elapsed < 10:
        return 0.003
    return 0.05 if elapsed < 120 else 0.25


def _close_quietly(pubsub: object) -> None:
    try:
        pubsub.close()  # type: ignore[attr-defined]
    except Exception:
        pass


def _live_window(settings: Settings) -> float:
    return max(3.0, float(settings.lease_s))


class StudioClient:
    """Submit and follow jobs. Connects to STUDIO_BROKER_URL or the embedded Redis when it first submits.

    `user` scopes every call to that user (studio.users): their submits are theirs, and they see and act on only
    their own jobs (another user's job is "not found"), unless they are an admin. None: the single-user default.
    """

    def __init__(self, settings: Settings | None = None, user: str | None = None) -> None:
        self.settings = settings or load_settings()
        self.store = JobStore.from_settings(self.settings)
        self.artifacts = ArtifactStore.from_settings(self.settings)
        self._app: Celery | None = None
        self._broker = ""
        self._lock = threading.Lock()
        self._listeners = threading.local()  # one 'job ended' subscription per thread, kept between waits
        self._scope(user)

    def _scope(self, user: str | None) -> None:
        from studio.users import viewer_for

        self.user = user
        self.viewer = viewer_for(self.settings, user)

    def for_user(self, user: str | None) -> StudioClient:
        """This client scoped to `user` (it shares the connection to the broker)."""
        import copy

        scoped = copy.copy(self)
        scoped._scope(user)
        return scoped

    # ----- submitting -----
    def validate(self, spec: dict) -> dict:
        """The canonical JSON form of a job spec, or InputError/NotFound (nothing is created)."""
        from studio.spec import spec_dict

        return spec_dict(self._parse(spec))

    def _parse(self, spec: dict) -> OpSpec:
        from studio.spec import parse_spec

        try:
            return parse_spec(spec, self.settings)
        except StudioError:
            raise
        except Exception as exc:  # a spec that trips a validator is still the user's input: one clean line
            raise InputError(f"invalid job spec: {type(exc).__name__}: {exc}".splitlines()[0][:290]) from None

    def _celery(self) -> Celery:
        with self._lock:
            if self._app is None:
                from studio.queue.app import make_app
                from studio.queue.broker import broker_kind, resolve_broker_url

                url = resolve_broker_url(self.settings)
                self._app = make_app(self.settings, url)
                self._broker = broker_kind(url)
            return self._app

    def submit(self, spec: dict, priority: int = 5, parent: str | None = None) -> str:
        """Validate and queue a job; returns its id at once. Priority 0-9, 9 most urgent."""
        from studio.queue.broker import BrokerUnavailable
        from studio.queue.routing import TASK_NAME, batch_key, broker_priority, check_priority, queue_name, task_id
        from studio.registry import get_backend_class
        from studio.spec import spec_dict
        from studio.webhook_policy import check_webhook

        check_priority(priority)
        parsed = self._parse(spec)
        check_webhook(parsed.webhook, self.settings)  # a secret is set and the host is allowed (studio.webhook_policy)
        clean = spec_dict(parsed)
        cls = get_backend_class(clean["backend"])
        queue = queue_name(self.settings.queue_prefix, cls.name, cls.devices)
        app = self._celery()
        job_id = new_job_id()
        self.store.create(NewJob(id=job_id, spec=clean, priority=priority, queue=queue,
                                 max_attempts=1 + max(0, self.settings.max_retries),
                                 time_limit_s=float(self.settings.job_time_limit_s),
                                 batch_key=batch_key(clean, self.settings.batch_max_images, self.user), parent=parent,
                                 owner=self.user, images=parsed.output_count()),
                          max_queued=max(0, int(self.settings.max_queued_per_user)))
        try:
            app.send_task(TASK_NAME, args=[job_id], queue=queue, priority=broker_priority(priority, self._broker),
                          task_id=task_id(job_id), retry=True,
                          retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})
        except Exception as exc:
            if not self.store.delete(job_id):  # a spare message (fair share) already took it: keep it, it runs
                return job_id
            raise BrokerUnavailable(f"could not queue the job: {type(exc).__name__}: {exc}") from None
        return job_id

    def retry(self, job_id: str) -> str:
        """Submit the same spec again (a new job id)."""
        job = self.store.get(job_id, events=False, preview=False, viewer=self.viewer)
        return self.submit(job["spec"], priority=job["priority"], parent=job["id"])

    def replay(self, source: str, priority: int | None = None) -> str:
        """Re-run a job from its record: a job id, or a PNG file written by the studio (its record holds the spec).

        For the CLI on the user's own machine: `source` may name a local file. Servers (the UI) must call
        `replay_job`, which never reads a path."""
        path = Path(source).expanduser()
        try:
            is_file = path.is_file()
        except OSError:  # e.g. a name too long to be a file: then it is a job id (or nothing)
            is_file = False
        if path.suffix.lower() == ".png" or is_file:
            return self.replay_file(path, priority)
        return self.replay_job(source, priority)

    def replay_job(self, job_id: str, priority: int | None = None) -> str:
        """Re-run the job `job_id` (one this client's user sees) with the same spec; returns the new job's id."""
        job = self.store.get(job_id, events=False, preview=False, viewer=self.viewer)
        return self.submit(job["spec"], priority=job["priority"] if priority is None else priority, parent=job["id"])

    def replay_file(self, source: str | Path, priority: int | None = None) -> str:
        """Re-run the job spec recorded in a local PNG written by the studio (size-checked before decoding)."""
        from studio.errors import clip
        from studio.images import check_image_header
        from studio.record import read_record

        path = Path(source).expanduser()
        try:
            is_file = path.is_file()
        except OSError:
            is_file = False
        if not is_file:
            raise NotFound(f"no file {clip(path)!r}")
        # the header first: a small PNG claiming huge dimensions is refused before its pixels are decoded
        check_image_header(path, self.settings.max_upload_pixels, self.settings.max_upload_bytes, "replay image")
        record = read_record(path)
        spec = record.get("spec")
        if not isinstance(spec, dict):
            raise InputError(f"the record in {path} has no job spec to replay")
        return self.submit(spec, priority=5 if priority is None else priority)

    # ----- following -----
    def status(self, job_id: str) -> dict:
        """The job's record: state, progress, ETA, preview, timings, attempts, artifacts, events."""
        job = self.store.get(job_id, viewer=self.viewer)
        if job["state"] == QUEUED:
            serving = [w for w in self.workers() if job["queue"] in w.get("queues", [])]
            if not serving:
                job["message"] = f"waiting: no live worker serves {job['queue']}"
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> dict:
        """Block until the job ends; returns its final status (WaitTimeout after `timeout` seconds)."""
        job_id = self.store.resolve(job_id, self.viewer)
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        listener = self._listener()
        while True:
            if self.store.state(job_id) in FINAL:
                return self.status(job_id)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise WaitTimeout(f"job {job_id} is still {self.store.state(job_id)} after {timeout} s")
            delay = _poll_interval(now - start, listener is not None)
            delay = delay if deadline is None else max(0.0, min(delay, deadline - now))
            if listener is None:
                time.sleep(delay)
            else:
                try:
                    listener.get_message(ignore_subscribe_messages=True, timeout=delay)
                except Exception:  # the broker went away: keep polling the job store
                    self._drop_listener()
                    listener = None

    def _listener(self):  # noqa: ANN202 - a redis PubSub or None
        """This thread's subscription, opened once and kept (a new one costs a connection per wait), with what
        arrived since the last wait drained: a wait checks the job's state before it sleeps anyway."""
        listener = getattr(self._listeners, "pubsub", None)
        if listener is None:
            listener = self._listeners.pubsub = self._listen()
            return listener
        try:
            for _ in range(100_000):
                if listener.get_message(ignore_subscribe_messages=True, timeout=0) is None:
                    break
        except Exception:  # dropped by the broker while idle: one new subscription
            self._drop_listener()
            listener = self._listeners.pubsub = self._listen()
        return listener

    def _drop_listener(self) -> None:
        listener = getattr(self._listeners, "pubsub", None)
        self._listeners.pubsub = None
        if listener is not None:
            _close_quietly(listener)

    def _listen(self):  # noqa: ANN202 - a redis PubSub or None
        """A subscription to 'job ended' announcements (Redis brokers); None means poll only."""
        try:
            from studio.queue.broker import broker_kind, ended_channel, redis_client, resolve_broker_url

            url = resolve_broker_url(self.settings)
            if broker_kind(url) != "redis":
                return None
            pubsub = redis_client(url, timeout=5.0).pubsub()
            pubsub.subscribe(ended_channel(self.settings.queue_prefix))
            return pubsub
        except Exception:
            return None

    def cancel(self, job_id: str) -> dict:
        """QUEUED: it never runs. RUNNING: it stops at its next progress step."""
        return self.store.request_cancel(job_id, viewer=self.viewer)

    def jobs(self, state: str | None = None, limit: int = 100) -> list[dict]:
        """History, newest first (durable across restarts); previews are left out."""
        return self.store.list(state, limit, viewer=self.viewer)

    def result(self, job_id: str) -> dict:
        """{id, metrics, artifacts: [{name, kind, path, size}]} of a SUCCEEDED job."""
        job = self.store.get(job_id, events=False, preview=False, viewer=self.viewer)
        if job["state"] != "SUCCEEDED":
            detail = f": {job['error']}" if job.get("error") else ""
            raise InputError(f"job {job['id']} is {job['state']}{detail}; only a SUCCEEDED job has a result")
        return {"id": job["id"], "metrics": job["metrics"] or {}, "artifacts": job["artifacts"]}

    def _job(self, job_id: str) -> dict:
        return self.store.get(job_id, events=False, preview=False, viewer=self.viewer)

    def artifact_bytes(self, job_id: str, name: str) -> bytes:
        """The bytes of one artifact, read from storage (any machine)."""
        return self.artifacts.read(self._job(job_id), name)

    def artifact_path(self, job_id: str, name: str) -> Path:
        """A local file holding one artifact (downloaded from storage into this machine's cache once)."""
        return self.artifacts.path(self._job(job_id), name)

    def artifact_url(self, job_id: str, name: str, expires_s: int = 3600) -> str | None:
        """A presigned URL of one artifact (S3 storage), or None (a local folder: use artifact_bytes)."""
        return self.artifacts.url(self._job(job_id), name, expires_s)

    def copy_result(self, job_id: str, out: str | Path) -> list[Path]:
        """Download a SUCCEEDED job's artifacts into `out`."""
        self.result(job_id)
        return self.artifacts.copy_out(self._job(job_id), out)

    def gallery(self, offset: int = 0, limit: int = 48, **filters: object) -> dict:
        """One page of the images of this user's SUCCEEDED jobs, newest first, with this user's stars:
        {"items": [{job_id, name, kind, size, op, backend, model, created, favourite}], "total": matches}.
        `filters`: backend, model, op, prompt (substring of options.prompt, any case), since, until (Unix
        seconds), favourites_only (see JobStore.gallery)."""
        items, total = self.store.gallery(self.viewer, self.user, offset=offset, limit=limit, **filters)
        return {"items": items, "total": total}

    def gallery_facets(self) -> dict[str, list[str]]:
        """The backends, models and ops of this user's SUCCEEDED jobs (the gallery's filter choices)."""
        return self.store.gallery_facets(self.viewer)

    def favourite(self, job_id: str, name: str, on: bool = True) -> bool:
        """Star (or, with on=False, unstar) image `name` of a job this user sees; returns whether it is starred."""
        return self.store.set_favourite(self.user, job_id, name, on, viewer=self.viewer)

    def workers(self) -> list[dict]:
        """Live workers: id, hostname, pid, device, dtype, pool, queues, backends, loaded models, job_id."""
        return self.store.workers(_live_window(self.settings))

    def close(self) -> None:
        self._drop_listener()
        if self._app is not None:
            self._app.close()
            self._app = None


__all__ = ["StudioClient", "WaitTimeout", "new_job_id"]
