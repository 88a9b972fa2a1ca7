"""Webhooks: when a job whose spec carries `webhook` ends, POST its summary there, signed, with bounded retries.

Who delivers: every worker process keeps one delivery thread (`Deliveries`). It is woken after each job the
worker ran and by the worker's maintenance tick, so a job that ended anywhere (on a worker, cancelled while
queued by a client, swept, reaped) is found by the next sweep of any live worker: `sweep` lists the jobs that
ended in the last hour (created in the last week) with a webhook and no `webhook` event yet, and
`JobStore.add_event_once` lets exactly one worker take each (the `webhook` event says which). Delivery never
runs on the worker's task thread or in its job process, and every failure is caught and recorded: it never blocks
or crashes a worker.

Each POST carries the JSON summary (`summary`: public fields and artifact names, no server paths), with the
header `X-Studio-Signature: sha256=<hex HMAC-SHA256 of the exact body, keyed with STUDIO_WEBHOOK_SECRET>`. The
target is checked against STUDIO_WEBHOOK_ALLOW again at each attempt and the connection goes to the address that
was checked (studio.webhook_policy: no DNS rebinding); redirects are never followed (a 3xx is a failure). A 2xx
answer is a delivery. Otherwise the attempt is recorded as a `webhook_failed` event and retried after
STUDIO_WEBHOOK_BACKOFF_MS, doubled each time (at most 5 minutes), up to STUDIO_WEBHOOK_ATTEMPTS attempts, then a
`webhook_gave_up` event. Pending retries live in the worker's memory: a worker stopped meanwhile drops them.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from studio.errors import InputError, clip
from studio.webhook_policy import Target, resolve_target

log = logging.getLogger("studio.webhooks")
SIGNATURE_HEADER = "X-Studio-Signature"
SCHEDULED, DELIVERED, FAILED_ATTEMPT, GAVE_UP = "webhook", "webhook_delivered", "webhook_failed", "webhook_gave_up"
OUTCOMES = frozenset({DELIVERED, GAVE_UP})
SWEEP_WINDOW_S = 3600.0  # jobs that ended longer ago than this are not picked up by a sweep
CREATED_WINDOW_S = 7 * 86400.0  # ... nor jobs created longer ago than this (bounds the sweep's scan)
SWEEP_EVERY_S = 5.0
MAX_BACKOFF_S = 300.0
MARKER = '"webhook": "'  # how a spec with a webhook reads in the job store (json.dumps, sort_keys)
SUMMARY_FIELDS = ("id", "state", "op", "backend", "model", "progress", "error", "message", "priority", "created",
                  "started", "finished", "attempts", "max_attempts", "parent", "metrics")


class WebhookError(Exception):
    """One delivery attempt failed (the message says why, on one line)."""


def sign(body: bytes, secret: str) -> str:
    """The X-Studio-Signature value of `body`: "sha256=" + hex HMAC-SHA256 keyed with `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str | None, secret: str) -> bool:
    """Whether `signature` (the header's value) signs `body` with `secret` (constant-time comparison)."""
    return bool(signature) and hmac.compare_digest(str(signature), sign(body, secret))


def summary(job: dict) -> dict:
    """What a webhook receives: the job's public fields, its spec and its artifacts by name, kind and size."""
    out: dict[str, Any] = {"event": "job.ended", **{k: job.get(k) for k in SUMMARY_FIELDS}, "spec": job.get("spec")}
    out["artifacts"] = [{"name": a.get("name"), "kind": a.get("kind"), "size": a.get("size")}
                        for a in job.get("artifacts") or []]
    return out


def body_of(job: dict) -> bytes:
    return json.dumps(summary(job), sort_keys=True, separators=(",", ":"), default=str).encode()


def backoff_s(settings: Any, attempt: int) -> float:
    """The wait after failed attempt number `attempt` (1-based): STUDIO_WEBHOOK_BACKOFF_MS doubled each time."""
    base = max(0.0, float(settings.webhook_backoff_ms) / 1000.0)
    return min(MAX_BACKOFF_S, base * (2 ** max(0, attempt - 1)))


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand, with the URL's host name for SNI and certificate checks."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self.address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


def post(url: str, body: bytes, headers: dict[str, str], allow: str, timeout: float) -> int:
    """POST `body` to `url` (checked against the allow-list `allow` now, connecting to the address checked);
    returns the 2xx status, else WebhookError (one line). Redirects are not followed."""
    try:
        target = resolve_target(url, allow)
    except InputError as exc:
        raise WebhookError(str(exc)) from None
    conn_cls = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    conn = conn_cls(target, timeout)
    try:
        host = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
        conn.request("POST", target.path, body=body,
                     headers={"Host": host, "Content-Type": "application/json", "User-Agent": "latent-studio-webhook",
                              **headers})
        response = conn.getresponse()
        response.read(65536)
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        raise WebhookError(f"{type(exc).__name__}: {clip(exc, 160)}") from None
    finally:
        conn.close()
    if 300 <= status < 400:
        raise WebhookError(f"HTTP {status}: redirects are not followed")
    if not 200 <= status < 300:
        raise WebhookError(f"HTTP {status}")
    return status


@dataclass(order=True)
class _Pending:
    due: float
    order: int
    job_id: str = field(compare=False)
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(compare=False, default=1)


class Deliveries(threading.Thread):
    """One worker process's delivery thread: sweeps for ended jobs with a webhook, delivers, retries."""

    def __init__(self, store: Any, settings: Any, worker: str = "") -> None:
        super().__init__(name="studio-webhooks", daemon=True)
        self.store = store
        self.settings = settings
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.pending: list[_Pending] = []
        self.order = itertools.count()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.last_sweep = 0.0

    def poke(self) -> None:
        """Sweep soon (a job just ended somewhere)."""
        self.wake.set()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
            except Exception:  # never let delivery kill the thread (or the worker)
                log.warning("webhook delivery failed", exc_info=True)
            now = time.monotonic()
            due = self.pending[0].due if self.pending else now + SWEEP_EVERY_S
            self.wake.wait(max(0.0, min(due, self.last_sweep + SWEEP_EVERY_S) - now))

    def step(self) -> None:
        now = time.monotonic()
        if self.wake.is_set() or now - self.last_sweep >= SWEEP_EVERY_S:
            self.wake.clear()
            self.last_sweep = now
            self.sweep()
        while self.pending and self.pending[0].due <= time.monotonic():
            self.attempt(heapq.heappop(self.pending))

    def sweep(self) -> int:
        """Schedule the ended jobs with a webhook that no worker took yet; returns how many this one took."""
        taken = 0
        now = time.time()
        jobs = self.store.ended_unmarked(SCHEDULED, now - SWEEP_WINDOW_S, MARKER, now - CREATED_WINDOW_S)
        for job in jobs:
            url = (job.get("spec") or {}).get("webhook")
            if not isinstance(url, str) or not url:
                self.store.add_event_once(job["id"], SCHEDULED, "no webhook to deliver")
                continue
            if not self.store.add_event_once(job["id"], SCHEDULED, f"webhook delivery by worker {self.worker}"):
                continue  # another worker took it
            taken += 1
            heapq.heappush(self.pending, _Pending(time.monotonic(), next(self.order), job["id"], url, body_of(job)))
        return taken

    def attempt(self, item: _Pending) -> None:
        total = max(1, int(self.settings.webhook_attempts))
        secret = str(self.settings.webhook_secret or "")
        try:
            if not secret:
                raise WebhookError("this worker has no STUDIO_WEBHOOK_SECRET, so it cannot sign the delivery")
            status = post(item.url, item.body, {SIGNATURE_HEADER: sign(item.body, secret), "X-Studio-Job": item.job_id,
                                                "X-Studio-Attempt": str(item.attempt)},
                          str(self.settings.webhook_allow), float(max(1, self.settings.webhook_timeout_s)))
        except WebhookError as exc:
            if item.attempt >= total:
                self.store.add_event(item.job_id, GAVE_UP,
                                     f"webhook gave up after {item.attempt} attempts: {clip(exc, 200)}")
                return
            wait = backoff_s(self.settings, item.attempt)
            self.store.add_event(item.job_id, FAILED_ATTEMPT, f"webhook attempt {item.attempt} of {total} failed: "
                                 f"{clip(exc, 180)}; next in {wait:.1f} s")
            item.attempt += 1
            item.due = time.monotonic() + wait
            heapq.heappush(self.pending, item)
            return
        self.store.add_event(item.job_id, DELIVERED, f"webhook delivered (HTTP {status}, attempt {item.attempt})")


def deliver_now(url: str, job: dict, settings: Any, report: Any = log.warning) -> bool:
    """Deliver `job`'s summary to `url` from this process, retrying with backoff (`studio run --webhook`, where no
    worker delivers); `report(line)` hears every failed attempt. Returns whether it was delivered."""
    body, secret = body_of(job), str(settings.webhook_secret or "")
    total = max(1, int(settings.webhook_attempts))
    for attempt in range(1, total + 1):
        try:
            post(url, body, {SIGNATURE_HEADER: sign(body, secret), "X-Studio-Attempt": str(attempt)},
                 str(settings.webhook_allow), float(max(1, settings.webhook_timeout_s)))
            return True
        except WebhookError as exc:
            report(f"webhook attempt {attempt} of {total} failed: {clip(exc, 180)}")
            if attempt < total:
                time.sleep(backoff_s(settings, attempt))
    return False


_deliveries: dict[tuple[int, int], Deliveries] = {}
_lock = threading.Lock()


def deliveries(store: Any, settings: Any, worker: str = "") -> Deliveries:
    """The delivery thread of this process for this job store (started on first use; one per worker context)."""
    key = (os.getpid(), id(store))
    with _lock:
        thread = _deliveries.get(key)
        if thread is None or not thread.is_alive():
            thread = _deliveries[key] = Deliveries(store, settings, worker)
            thread.start()
        return thread


def job_ended(ctx: Any) -> None:
    """A worker ran a job (or was told of ends): wake its delivery thread; never raises."""
    try:
        deliveries(ctx.store, ctx.settings, os.environ.get("STUDIO_WORKER_ID", "")).poke()
    except Exception:
        log.warning("could not wake the webhook delivery thread", exc_info=True)


__all__ = ["DELIVERED", "FAILED_ATTEMPT", "GAVE_UP", "OUTCOMES", "SCHEDULED", "SIGNATURE_HEADER", "Deliveries",
           "WebhookError", "backoff_s", "body_of", "deliver_now", "deliveries", "job_ended", "post", "sign", "summary",
           "verify"]
