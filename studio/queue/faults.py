"""How a worker survives faults of its broker and of the messages on it.

- **A consumer that stops fetching is restarted in-process.** With prefetch 1 and late acks, a failed ack (the
  broker restarted while a job ran) keeps the delivered message counted against the prefetch window, so kombu
  never fetches again while the worker looks alive and idle. `Liveness.restart_consumer` raises a connection
  error inside Celery's event loop, which takes Celery's own reconnect path: a new connection and channel, and the
  unacknowledged message restored to its queue (a no-op when it runs again: the job store says it ended).
  It is triggered at once by a failed ack (`watch_acks`) and, for any other cause, by the stall watchdog
  (`Liveness.check`, run by the worker's maintenance thread): idle, nothing received for `stall_s`, while jobs of
  its queues have been QUEUED in the job store for longer than that. Without an event loop to restart, the
  worker exits with EXIT_STALLED so that its supervisor (`studio up`, compose's restart policy) starts it again.
- **Malformed envelopes are rejected, not fatal.** A Redis queue item that is not JSON, not an object, or whose
  body does not decode is logged and dropped (kombu would raise it out of the event loop), and a message whose
  Celery headers break the task handler is rejected (`StudioConsumer`, any transport); the worker goes on.
- **Unrecoverable errors never exit 0** (see `exit_status`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from vine import promise

from studio.config import Settings

log = logging.getLogger("studio.worker")
EXIT_FAILURE = 1  # Celery's "Unrecoverable error"
EXIT_STALLED = 75  # EX_TEMPFAIL: the consumer could not be restarted in-process; start the worker again
DEFAULT_STALL_S = 60.0
MAX_BACKOFF_S = 600.0
QUEUED_SCAN = 500  # newest QUEUED jobs looked at by the watchdog
RUNNING_SCAN = 5000  # RUNNING jobs (of all workers) it looks at to tell whether this worker is busy


class ConsumerStalled(ConnectionError):
    """Raised in Celery's event loop to make it reconnect (a ConnectionError: every transport retries on it)."""


class MalformedMessage(ValueError):
    """A broker message that is not a valid envelope."""


def stall_seconds(settings: Settings) -> float:
    """The watchdog's threshold (STUDIO_STALL_S, at least 1 s)."""
    return max(1.0, float(settings.stall_s))


class Liveness:
    """This process's consumer, when it last received a message, and whether it looks stalled."""

    def __init__(self, stall_s: float = DEFAULT_STALL_S) -> None:
        self.stall_s = stall_s
        self.consumer: Any = None
        self.last_received = time.monotonic()
        self.stalled_since: float | None = None  # wall-clock time, for the worker's advertisement
        self.restarts = 0
        self.stall_attempts = 0  # restarts asked for since the last message arrived
        self.exit_code: int | None = None  # set when the worker must exit non-zero
        self._next_restart = 0.0
        self._backoff = stall_s
        self._lock = threading.Lock()

    def configure(self, stall_s: float) -> None:
        """Set the watchdog's threshold (and the first restart backoff)."""
        self.stall_s = self._backoff = stall_s

    def attach(self, consumer: Any) -> None:
        """Celery's consumer (from the worker_ready signal)."""
        self.consumer = consumer
        self.last_received = time.monotonic()

    def received(self) -> None:
        """A message arrived: the consumer works."""
        with self._lock:
            self.last_received = time.monotonic()
            self.stalled_since = None
            self._backoff = self.stall_s
            self.stall_attempts = 0

    def restart_consumer(self, reason: str) -> bool:
        """Make Celery's event loop reconnect (thread-safe); False when there is no event loop to restart."""
        hub = getattr(self.consumer, "hub", None)
        if hub is None:
            return False

        def reconnect() -> None:
            raise ConsumerStalled(f"restarting the consumer: {reason}")

        log.warning("restarting the broker consumer: %s", reason)
        self.restarts += 1
        hub.call_soon(reconnect)
        return True

    def request_exit(self, code: int, reason: str) -> None:
        """Stop the worker (warm shutdown) and make it exit with `code`."""
        log.error("stopping the worker (exit status %d): %s", code, reason)
        self.exit_code = code
        os.kill(os.getpid(), signal.SIGTERM)

    def check(self, busy: bool, oldest_waiting: float | None, now: float | None = None,
              republish: Callable[[float], int] | None = None) -> bool:
        """The watchdog: True when the consumer looks stalled (and a restart was asked for when due).

        `busy`: a job runs here; `oldest_waiting`: creation time (Unix) of the oldest QUEUED job of this worker's
        queues, or None. `republish(older_than)`: publishes a message again for each QUEUED job of this worker's
        queues created before `older_than` (Unix); called when a restart is due and the last one did not help —
        the broker lost those messages (a restart of a broker without persistence). Messages are tokens for the
        job store's claims, so a spare one is a no-op: nothing runs twice.
        """
        mono = time.monotonic()
        now = now or time.time()
        silent = mono - self.last_received
        if busy or silent < self.stall_s or oldest_waiting is None or now - oldest_waiting < self.stall_s:
            if busy:
                self.stalled_since = None
            return False
        with self._lock:
            if self.stalled_since is None:
                self.stalled_since = now
            if mono < self._next_restart:
                return True
            self._next_restart = mono + self._backoff
            self._backoff = min(MAX_BACKOFF_S, self._backoff * 2)  # e.g. QUEUED jobs whose messages were lost
            self.stall_attempts += 1
            attempt = self.stall_attempts
        reason = (f"idle and nothing received for {silent:.0f} s while jobs of its queues have waited "
                  f"{now - oldest_waiting:.0f} s")
        if attempt > 1 and republish is not None:  # a restart did not bring their messages back: they are lost
            try:
                count = republish(now - self.stall_s)
                log.warning("published %d message(s) again for jobs whose messages the broker lost", count)
            except Exception:
                log.warning("could not publish the lost messages again", exc_info=True)
        if not self.restart_consumer(reason):
            self.request_exit(EXIT_STALLED, reason)
        return True


LIVENESS = Liveness()


def watch_acks() -> None:
    """Make a failed ack or reject (kombu logs "Couldn't ack" and goes on) restart the consumer, which would otherwise
    keep the message counted against prefetch and never fetch again. Idempotent; affects this process only."""
    from kombu.message import Message

    if getattr(Message, "_studio_watched", False):
        return

    def ack_log_error(self: Any, logger: Any, errors: tuple, multiple: bool = False) -> None:
        try:
            self.ack(multiple=multiple)
        except BrokenPipeError:  # kombu re-raises this one: the consumer restarts anyway
            logger.critical("Couldn't ack %r", self.delivery_tag, exc_info=True)
            raise
        except errors as exc:
            logger.critical("Couldn't ack %r, reason:%r", self.delivery_tag, exc, exc_info=True)
            LIVENESS.restart_consumer("an acknowledgement failed (the broker connection was lost)")

    def reject_log_error(self: Any, logger: Any, errors: tuple, requeue: bool = False) -> None:
        try:
            self.reject(requeue=requeue)
        except errors as exc:
            logger.critical("Couldn't reject %r, reason: %r", self.delivery_tag, exc, exc_info=True)
            LIVENESS.restart_consumer("a reject failed (the broker connection was lost)")

    Message.ack_log_error = ack_log_error
    Message.reject_log_error = reject_log_error
    Message._studio_watched = True


class StudioConsumer(Consumer):
    """Celery's consumer, except that a message that breaks the task handler (a malformed Celery header, e.g. a
    `timelimit` that is not a pair) is rejected and logged instead of stopping the worker ("Unrecoverable error",
    then a redelivery of the same message after every restart)."""

    def create_task_handler(self, promise: Any = promise) -> Any:
        handler = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            try:
                return handler(message)
            except Exception as exc:
                if isinstance(exc, self.connection_errors) or getattr(message, "acknowledged", True):
                    raise
                log.error("rejected a malformed message from the broker (%s); the worker goes on",
                          f"{type(exc).__name__}: {exc}"[:200])
                message.reject_log_error(log, self.connection_errors)
                return None

        return on_task_received


def running_on(store: Any, worker: str, limit: int = RUNNING_SCAN) -> bool:
    """Whether a job RUNNING in the store names `worker` (its prefork children and pool threads run jobs that the
    worker process itself never sees)."""
    return any(j["worker"] == worker for j in store.list("RUNNING", limit=limit))


def oldest_queued(store: Any, queues: list[str], limit: int = QUEUED_SCAN) -> float | None:
    """Creation time of the oldest QUEUED job of `queues` among the newest `limit` QUEUED jobs (None: none)."""
    wanted = set(queues)
    times = [j["created"] for j in store.list("QUEUED", limit=limit) if j["queue"] in wanted]
    return min(times) if times else None


# ----- malformed envelopes (Redis transport) -----
def _check_envelope(payload: object) -> None:
    if not isinstance(payload, dict):
        raise MalformedMessage(f"a JSON {type(payload).__name__}, not an object")
    properties = payload.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        raise MalformedMessage("no properties with a delivery tag")
    if not isinstance(payload.get("headers") or {}, dict):
        raise MalformedMessage("headers are not an object")
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        raise MalformedMessage("the body is not a string")


def harden_redis_transport() -> None:
    """Make kombu's Redis channel reject malformed queue items (log and drop them) instead of raising them out of
    the worker's event loop. Idempotent; affects this process only."""
    from kombu.transport import redis as kredis

    channel = kredis.Channel
    if getattr(channel, "_studio_hardened", False):
        return
    base_message = channel.Message

    class CheckedMessage(base_message):  # type: ignore[misc, valid-type]
        def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
            _check_envelope(payload)
            try:
                super().__init__(payload, channel=channel, **kwargs)
            except MalformedMessage:
                raise
            except Exception as exc:  # e.g. a body that is not base64
                raise MalformedMessage(f"its body does not decode ({type(exc).__name__})") from None

    read = channel._brpop_read

    def _brpop_read(self: Any, **options: Any) -> Any:
        try:
            return read(self, **options)
        except (MalformedMessage, json.JSONDecodeError, UnicodeDecodeError) as exc:
            why = str(exc) if isinstance(exc, MalformedMessage) else "not JSON"
            log.error("rejected a malformed message from the broker (%s); the worker goes on", why[:200])
            return True

    channel.Message = CheckedMessage
    channel._brpop_read = _brpop_read
    channel._studio_hardened = True


def exit_status(celery_code: object, liveness: Liveness = LIVENESS) -> int:
    """The worker's exit status: ours when the worker stopped itself, else Celery's (None counts as 0)."""
    if liveness.exit_code is not None:
        return liveness.exit_code
    if celery_code is None:
        return 0
    if isinstance(celery_code, int):
        return celery_code
    return EXIT_FAILURE


__all__ = ["EXIT_STALLED", "LIVENESS", "ConsumerStalled", "Liveness", "MalformedMessage", "StudioConsumer",
           "exit_status", "harden_redis_transport", "oldest_queued", "running_on", "stall_seconds", "watch_acks"]
