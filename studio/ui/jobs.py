"""Running UI actions as jobs: submit through the client, follow progress, turn failures into one line.

The UI never runs a model: every action builds a job spec, submits it, and polls the job's status while
Gradio shows the progress. Failures reach the page (and API clients) as `gr.Error` with the job's one-line
message, never a stack trace.
"""

from __future__ import annotations

import functools
import html
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from studio.errors import StudioError

log = logging.getLogger("studio.ui")

FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
MAX_MESSAGE = 400
F = TypeVar("F", bound=Callable[..., Any])


class QueueClient(Protocol):
    """The part of `studio.client.StudioClient` the UI uses."""

    def submit(self, spec: dict, priority: int = 5) -> str: ...
    def status(self, job_id: str) -> dict: ...
    def cancel(self, job_id: str) -> dict: ...
    def retry(self, job_id: str) -> str: ...
    def replay(self, source: str) -> str: ...
    def jobs(self, state: str | None = None, limit: int = 100) -> list[dict]: ...
    def result(self, job_id: str) -> dict: ...
    def workers(self) -> list[dict]: ...


def one_line(exc: BaseException) -> str:
    """A user-facing, single-line message for an exception (no traceback)."""
    if isinstance(exc, StudioError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first if len(first) <= MAX_MESSAGE else first[:MAX_MESSAGE - 1] + "…"


def ui_errors(fn: F) -> F:
    """Wrap an event handler so any failure reaches the user as gr.Error with one line."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            if not isinstance(exc, StudioError):
                log.exception("UI handler %s failed", getattr(fn, "__name__", fn))
            raise gr.Error(html.escape(one_line(exc), quote=False), print_exception=False) from None

    return wrapper  # type: ignore[return-value]


class JobFailed(StudioError):
    """A job ended FAILED or CANCELLED; the message is the job's own one-line error."""


@dataclass
class Finished:
    """A SUCCEEDED job: its status, metrics and artifacts by name."""

    job_id: str
    status: dict
    metrics: dict = field(default_factory=dict)
    artifacts: dict[str, dict] = field(default_factory=dict)

    def path(self, name: str) -> str | None:
        """The stored file of artifact `name`, or None when the job did not write it."""
        a = self.artifacts.get(name)
        return str(a["path"]) if a and Path(a["path"]).is_file() else None

    def images(self, prefix: str = "") -> list[str]:
        """Paths of image artifacts whose names start with `prefix`, in name order."""
        return [str(a["path"]) for name, a in sorted(self.artifacts.items())
                if a.get("kind") == "image" and name.startswith(prefix) and Path(a["path"]).is_file()]

    def seconds(self) -> float | None:
        st = self.status
        if st.get("started") and st.get("finished"):
            return round(float(st["finished"]) - float(st["started"]), 2)
        return self.metrics.get("seconds")

    def summary(self) -> str:
        """One line for the page: job id, op and time."""
        secs = self.seconds()
        took = f" in {secs:.2f} s" if isinstance(secs, (int, float)) else ""
        return f"✓ job `{self.job_id}` ({self.status.get('op', '?')}) finished{took}"


ProgressFn = Callable[..., Any]


def _describe(status: dict) -> str:
    state = status.get("state", "?")
    message = status.get("message") or ""
    if state == "QUEUED":
        return f"queued · {message}" if message else "queued · waiting for a worker"
    eta = status.get("eta_s")
    eta_text = f" · about {eta:.0f} s left" if isinstance(eta, (int, float)) and eta >= 1 else ""
    return f"{state.lower()} · {message}{eta_text}" if message else f"{state.lower()}{eta_text}"


class JobRunner:
    """Submit specs and follow them to the end."""

    def __init__(self, client: QueueClient, poll_s: float = 0.1, timeout_s: float | None = None) -> None:
        self.client = client
        self.poll_s = poll_s
        self.timeout_s = timeout_s

    def submit(self, spec: dict, priority: int = 5) -> str:
        clean = {k: v for k, v in spec.items() if v is not None}
        return self.client.submit(clean, priority=priority)

    def follow(self, job_id: str, progress: ProgressFn | None = None) -> dict:
        """Poll a job until it ends, reporting progress; returns its final status."""
        started = time.monotonic()
        while True:
            status = self.client.status(job_id)
            if progress is not None:
                try:
                    progress(float(status.get("progress") or 0.0), desc=_describe(status))
                except Exception:  # a progress display must never fail the job's follow-up
                    pass
            if status.get("state") in FINAL_STATES:
                return status
            if self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
                raise JobFailed(f"job {job_id} is still {status.get('state')} after {self.timeout_s:.0f} s; "
                                "see the Queue tab")
            time.sleep(self.poll_s)

    def run(self, spec: dict, progress: ProgressFn | None = None, priority: int = 5) -> Finished:
        """Submit, follow, and return the finished job; JobFailed with the job's message otherwise."""
        job_id = self.submit(spec, priority)
        status = self.follow(job_id, progress)
        if status["state"] == "FAILED":
            raise JobFailed(status.get("error") or f"job {job_id} failed")
        if status["state"] == "CANCELLED":
            raise JobFailed(f"job {job_id} was cancelled")
        result = self.client.result(job_id)
        artifacts = {a["name"]: a for a in result.get("artifacts", [])}
        return Finished(job_id, status, result.get("metrics") or {}, artifacts)
