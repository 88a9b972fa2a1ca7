"""`GET /api/jobs/{id}/events`: a job followed as Server-Sent Events, on the UI's server and behind its login.

Events (each `data:` is one JSON object):

- `state` {"state"}: the job's state, when it changes (first on a new stream);
- `progress` {"step", "total", "progress" (0..1), "message", "eta_s"}: while the job runs (once it reported a
  step), when it changes;
- `preview` {"png_b64"}: the latest preview image, when it changes;
- `event` {"seq", "ts", "kind", "message"}: each new row of the job's events (retries, cancel requests, webhook
  attempts...);
- `end`: the job's public summary (studio.ui.app.public_job), once the job ended (and its webhook, if any, was
  delivered or given up, for at most a minute or two, so that its outcome shows); then the stream closes.

Comments (`: keep-alive`) go out every HEARTBEAT_S without data. Every event has an `id:`, increasing: the last
event row's `seq` times 10^6, plus the state (1-5, or 9 for `end`) times 10^5, plus a counter. A client resumes
with the `Last-Event-ID` header (or `?last_event_id=`): it gets only event rows newer than that id, the state only
when it changed, `end` only when not seen yet (a stream resumed after its `end` answers 204); `progress` and
`preview` are sent afresh (they are the job's current values, never history).

Who sees what: the same login as the page (a session cookie, or an API token in `Authorization: Bearer` /
`X-Studio-Token`, see studio.ui.security.AuthContext), scoped like the named API (studio.ui.jobs.scoped): a user
sees their own jobs; another user's job, like an unknown one, answers 404 with a one-line JSON error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from studio.config import Settings
from studio.errors import InputError, NotFound, StudioError, clip

ROUTE = "/api/jobs/{job_id}/events"
POLL_S = 0.25
HEARTBEAT_S = 10.0
SEQ, STATE_STEP = 10**6, 10**5
STATE_CODES = {"QUEUED": 1, "RUNNING": 2, "SUCCEEDED": 3, "FAILED": 4, "CANCELLED": 5}
END_CODE = 9
MAX_WEBHOOK_WAIT_S = 120.0


def event_id(seq: int, code: int, n: int) -> int:
    """The SSE id of an event: after event row `seq`, in state `code` (END_CODE for end), the n-th there."""
    return seq * SEQ + code * STATE_STEP + n


def split_id(value: object) -> tuple[int, int, int]:
    """(seq, state code, n) of a Last-Event-ID; (0, 0, 0) for none or garbage."""
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return 0, 0, 0
    if number <= 0 or number > 2**62:
        return 0, 0, 0
    seq, rest = divmod(number, SEQ)
    code, n = divmod(rest, STATE_STEP)
    return seq, code, n


def frame(name: str, ident: int, data: dict) -> bytes:
    return f"event: {name}\nid: {ident}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


def webhook_wait_s(settings: Settings) -> float:
    """How long after a job's end its stream waits for the webhook's outcome (every attempt and backoff)."""
    from studio.queue.webhooks import backoff_s

    attempts = max(1, int(settings.webhook_attempts))
    total = sum(backoff_s(settings, a) for a in range(1, attempts)) + attempts * (settings.webhook_timeout_s + 1)
    return min(MAX_WEBHOOK_WAIT_S, total + 10.0)


class Follow:
    """One stream's position: what the client has (from its Last-Event-ID) and what was sent since."""

    def __init__(self, last_id: object) -> None:
        self.seq, code, self.n = split_id(last_id)
        self.resumed = self.seq > 0
        self.state = next((s for s, c in STATE_CODES.items() if c == code), None)
        self.code = code
        self.ended = code == END_CODE
        self.progress: tuple | None = None
        self.preview: str | None = None

    def next_id(self, code: int) -> int:
        if code != self.code:
            self.code, self.n = code, 0
        self.n = min(self.n + 1, STATE_STEP - 1)
        return event_id(self.seq, code, self.n)

    def frames(self, job: dict, rows: list[dict]) -> list[bytes]:
        """What to send for the job as read now and its new event rows (read before it)."""
        out = []
        for row in rows:
            self.seq, self.code, self.n = int(row["seq"]), 0, 0
            self.ended = False
            out.append(frame("event", event_id(self.seq, 0, 0), {"seq": row["seq"], "ts": row["ts"],
                                                                  "kind": row["kind"], "message": row["message"]}))
        state = job["state"]
        code = STATE_CODES.get(state, 0)
        if state != self.state:
            self.state = state
            out.append(frame("state", self.next_id(code), {"state": state}))
        progress = (job.get("step"), job.get("total"), job.get("message"), job.get("eta_s"))
        if state == "RUNNING" and job.get("total") and progress != self.progress and self.n < STATE_STEP - 1:
            self.progress = progress
            out.append(frame("progress", self.next_id(code), {
                "step": job.get("step"), "total": job.get("total"), "progress": job.get("progress"),
                "message": job.get("message"), "eta_s": job.get("eta_s")}))
        png = job.get("preview_png_b64")
        digest = hashlib.sha256(png.encode()).hexdigest() if png else None
        if digest is not None and digest != self.preview and self.n < STATE_STEP - 1:
            self.preview = digest
            out.append(frame("preview", self.next_id(code), {"png_b64": png}))
        return out

    def end(self, job: dict) -> bytes:
        from studio.ui.app import public_job

        self.ended = True
        self.code, self.n = END_CODE, 0
        return frame("end", self.next_id(END_CODE), public_job(job))


def _settled(job: dict, store: Any, settings: Settings) -> bool:
    """Whether the stream may end: the job ended and its webhook (if any) has an outcome, or waited long enough."""
    from studio.queue.jobstore import FINAL
    from studio.queue.webhooks import OUTCOMES

    if job["state"] not in FINAL:
        return False
    if not (job.get("spec") or {}).get("webhook"):
        return True
    if time.time() - float(job.get("finished") or 0) > webhook_wait_s(settings):
        return True
    return any(r["kind"] in OUTCOMES for r in store.events_after(job["id"], 0, limit=10_000))


def _error(status: int, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": clip(message, 290)}, status_code=status)


def _user(request: Any) -> tuple[str | None, bool]:
    """(the signed-in user of the request's Gradio session, whether the app asks for a login)."""
    app = request.app
    cookie_id = getattr(app, "cookie_id", None)
    tokens = getattr(app, "tokens", None)
    user = None
    if cookie_id is not None and isinstance(tokens, dict):
        token = request.cookies.get(f"access-token-{cookie_id}") or \
            request.cookies.get(f"access-token-unsecure-{cookie_id}")
        user = tokens.get(token) if token else None
    needs_login = getattr(app, "auth", None) is not None or getattr(app, "auth_dependency", None) is not None
    return user, needs_login


def scoped_for(client: Any, user: str | None, mode: str | None) -> Any:
    """`client` scoped to `user` under the page's auth `mode`, exactly as the named API scopes an event
    (studio.ui.jobs.scoped); InputError (one line) when the login cannot be trusted as a studio user."""
    from studio.ui.jobs import AUTH_MODE, CURRENT_USER, scoped

    reset, reset_mode = CURRENT_USER.set(user), AUTH_MODE.set(mode)
    try:
        return scoped(client)
    finally:
        AUTH_MODE.reset(reset_mode)
        CURRENT_USER.reset(reset)


def make_endpoint(client: Any, settings: Settings, mode: str | None) -> Any:
    """The route's handler for a StudioClient-like `client` (it has `store` and, once scoped, `viewer`)."""
    from starlette.responses import Response, StreamingResponse

    async def endpoint(request: Any) -> Any:
        user, needs_login = _user(request)
        if needs_login and user is None:
            return _error(401, "sign in first: a session cookie, or an API token in 'Authorization: Bearer ...'")
        try:
            mine = await asyncio.to_thread(scoped_for, client, user, mode)
            store, viewer = mine.store, getattr(mine, "viewer", None)
            job_id = await asyncio.to_thread(store.resolve, request.path_params["job_id"], viewer)
            job = await asyncio.to_thread(store.get, job_id, False, True)
        except NotFound as exc:
            return _error(404, str(exc))
        except InputError as exc:
            return _error(404 if "not a job id" in str(exc) else 403, str(exc))
        except StudioError as exc:
            return _error(503, str(exc))
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        follow = Follow(last)
        if follow.ended and await asyncio.to_thread(_nothing_new, store, job, follow.seq, settings):
            return Response(status_code=204)  # it saw the end already: an SSE client stops reconnecting on 204
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(_stream(store, settings, job_id, follow), media_type="text/event-stream",
                                 headers=headers)

    return endpoint


def _nothing_new(store: Any, job: dict, seq: int, settings: Settings) -> bool:
    return not store.events_after(job["id"], seq, limit=1) and _settled(job, store, settings)


async def _stream(store: Any, settings: Settings, job_id: str, follow: Follow) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    quiet_since = time.monotonic()
    while True:
        def read() -> tuple[dict, list[dict], bool]:
            rows = store.events_after(job_id, follow.seq)  # the rows first: the job read after is at least as new
            job = store.get(job_id, events=False, preview=True)
            return job, rows, _settled(job, store, settings)

        try:
            job, rows, settled = await asyncio.to_thread(read)
        except NotFound:  # removed meanwhile (a submit that failed to queue it): nothing more will come
            return
        except StudioError as exc:  # e.g. the database is away for a moment: say so, and try again
            yield f": {clip(exc, 200)}\n\n".encode()
            await asyncio.sleep(1.0)
            continue
        frames = follow.frames(job, rows)
        if settled:
            frames.append(follow.end(job))
        for chunk in frames:
            yield chunk
        if settled:
            return
        now = time.monotonic()
        if frames:
            quiet_since = now
        elif now - quiet_since >= HEARTBEAT_S:
            quiet_since = now
            yield b": keep-alive\n\n"
        await asyncio.sleep(POLL_S)


def mount_events(app: Any, client: Any, settings: Settings, mode: str | None) -> None:
    """Add the route to the served FastAPI `app` (Gradio's), before Gradio's own routes. Nothing for a client
    without a job store (a test double): the route needs `client.store`."""
    from starlette.routing import Route

    if getattr(client, "store", None) is None:
        return
    app.router.routes.insert(0, Route(ROUTE, make_endpoint(client, settings, mode), methods=["GET"]))


__all__ = ["ROUTE", "Follow", "event_id", "make_endpoint", "mount_events", "scoped_for", "split_id"]
