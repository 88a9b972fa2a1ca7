"""Running UI actions as jobs: submit through the client, follow progress, turn failures into one line.

The UI never runs a model: every action builds a job spec, submits it, and polls the job's status while
Gradio shows the progress. Failures reach the page (and API clients) as `gr.Error` with the job's one-line
message, never a stack trace.
"""

from __future__ import annotations

import contextvars
import functools
import html
import inspect
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from studio.errors import InputError, NotFound, StudioError

if TYPE_CHECKING:
    from studio.ui.artifacts import ArtifactShelf

log = logging.getLogger("studio.ui")

FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
MAX_MESSAGE = 400
MAX_SHOWN = 299  # what reaches the page or an API client: one line under 300 characters, after escaping
REPR = re.compile(r"<[^<>\n]*? at 0x[0-9A-Fa-f]+>")
F = TypeVar("F", bound=Callable[..., Any])


class QueueClient(Protocol):
    """The part of `studio.queue.client.StudioClient` the UI uses."""

    def submit(self, spec: dict, priority: int = 5) -> str: ...
    def status(self, job_id: str) -> dict: ...
    def cancel(self, job_id: str) -> dict: ...
    def retry(self, job_id: str) -> str: ...
    def replay_job(self, job_id: str, priority: int | None = None) -> str: ...
    def jobs(self, state: str | None = None, limit: int = 100) -> list[dict]: ...
    def result(self, job_id: str) -> dict: ...
    def artifact_bytes(self, job_id: str, name: str) -> bytes: ...
    def artifact_path(self, job_id: str, name: str) -> Path: ...
    def workers(self) -> list[dict]: ...


def scrub(text: str) -> str:
    """`text` without Python object reprs such as `<_io.BytesIO object at 0x7f...>` (they mean nothing to users)."""
    return REPR.sub("<object>", text)


def one_line(exc: BaseException) -> str:
    """A user-facing, single-line message for an exception (no traceback, no object reprs)."""
    if isinstance(exc, StudioError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    first = next((scrub(line.strip()) for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first if len(first) <= MAX_MESSAGE else first[:MAX_MESSAGE - 1] + "…"


def shown(exc: BaseException) -> str:
    """The message a user sees for `exc`: one line, HTML-escaped (the pop-up renders HTML), under 300 characters."""
    text = one_line(exc)
    escaped = html.escape(text, quote=False)
    if len(escaped) <= MAX_SHOWN:
        return escaped
    cut = text[:MAX_SHOWN - 1]
    while len(html.escape(cut, quote=False)) > MAX_SHOWN - 1:  # cut the text, never an escaped entity in half
        cut = cut[:-1]
    return html.escape(cut, quote=False) + "…"


def refused(exc: BaseException, outputs: int) -> tuple:
    """Tell the user `exc` (one line, in a warning pop-up) and leave the event's `outputs` as they are: for a
    request refused before anything was done (an error would mark every output with an "Error" badge)."""
    import gradio as gr

    gr.Warning(shown(exc), title="Not done")
    return (gr.skip(),) * outputs


def user_error(exc: BaseException) -> Exception:
    """`exc` as the gr.Error a user sees (one line, escaped, short)."""
    import gradio as gr

    return gr.Error(shown(exc), print_exception=False)


CURRENT_USER: contextvars.ContextVar[str | None] = contextvars.ContextVar("studio_ui_user", default=None)
# How the page's login was checked (recorded when the page was built for a launch; see studio.ui.security):
# "users" (the user store), "shared" (STUDIO_UI_AUTH or STUDIO_UI_TOKEN: the name proves nothing), "none".
AUTH_MODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("studio_ui_auth_mode", default=None)
_BUILD_MODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("studio_ui_build_mode", default=None)
AUTH_MODES = ("users", "shared", "none")
_IN_EVENT: contextvars.ContextVar[tuple[str | None, str | None] | None] = contextvars.ContextVar(
    "studio_ui_in_event", default=None)


def building_with(mode: str | None) -> contextvars.Token:
    """While a page is built: handlers wrapped by `ui_errors` remember `mode` as their login's auth mode (reset
    with `_BUILD_MODE.reset(token)`)."""
    if mode is not None and mode not in AUTH_MODES:
        raise ValueError(f"unknown auth mode {mode!r}")
    return _BUILD_MODE.set(mode)


def end_building(token: contextvars.Token) -> None:
    _BUILD_MODE.reset(token)


def current_user(settings: object) -> str | None:
    """The studio user of the current event, or None (the single-user default). Fails closed (InputError, one
    line) whenever the signed-in name cannot be trusted as a studio user:

    - the login was the user store ("users"): the name is that user, who must still exist;
    - the login was a shared password or token ("shared") or none: the name proves nothing, so with users defined
      it refuses, and without users it is None (jobs have no owner, as for the CLI);
    - unknown (a handler wrapped outside a page build): "users" when users exist, else None."""
    from studio.users import shared_store

    store = shared_store(settings)  # type: ignore[arg-type]
    users = store.any()
    mode = AUTH_MODE.get() or ("users" if users else "none")
    name = CURRENT_USER.get()
    if mode != "users":
        if users:
            raise InputError("this studio has users now: restart the UI so that it asks for a studio login")
        return None
    if name is None:
        if users:
            raise InputError("this studio has users: sign in (restart the UI if it did not ask for a login)")
        return None
    try:
        store.get(name)
    except StudioError:
        raise InputError(f"user {str(name)[:64]!r} no longer exists: sign in again as an existing user") from None
    return name


def scoped(client: QueueClient) -> QueueClient:
    """`client` scoped to the studio user of the current event (StudioClient.for_user, see `current_user`);
    unchanged for a client without users support. Fails closed with one line (`current_user`)."""
    for_user = getattr(client, "for_user", None)
    settings = getattr(client, "settings", None)
    if for_user is None or settings is None:
        return client
    return for_user(current_user(settings))


class ScopedClient:
    """A queue client whose every call is scoped to the current event's signed-in user (see `scoped`)."""

    def __init__(self, client: QueueClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(scoped(self.client), name)


def _as_user_error(fn: Any, exc: BaseException) -> BaseException:
    """What a handler's failure reaches the user as: gr.Error with one line (a gr.Error as it is)."""
    import gradio as gr

    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, RecursionError):  # an input nested too deeply for some parser: still one line
        return user_error(InputError("an input is nested too deeply"))
    if not isinstance(exc, StudioError):
        log.exception("UI handler %s failed", getattr(fn, "__name__", fn), exc_info=exc)
    return user_error(exc)


def ui_errors(fn: F) -> F:
    """Wrap an event handler so any failure reaches the user as gr.Error with one line. The signed-in user of
    the event (Gradio's `request.username`) is CURRENT_USER while it runs, and the auth mode of the page being
    built when it was wrapped is AUTH_MODE (see `current_user` and `scoped`). A generator handler (one that
    streams updates, e.g. a live preview) stays a generator: each of its steps runs with the event's user, and a
    failure in any step is one line too."""
    import gradio as gr

    mode = _BUILD_MODE.get()

    def event_of(args: tuple) -> tuple[str | None, str | None, tuple]:
        user, outer = None, _IN_EVENT.get()
        if args and isinstance(args[0], gr.Request):  # Gradio fills the leading `studio_request` parameter
            user, args, outer = getattr(args[0], "username", None), args[1:], None
        if outer is not None:  # called by another wrapped handler: its user and auth mode stay
            return outer[0], outer[1], args
        return user, mode, args

    def in_event(user: str | None, this_mode: str | None, step: Callable[[], Any]) -> Any:
        reset = CURRENT_USER.set(user)
        reset_mode = AUTH_MODE.set(this_mode)
        reset_event = _IN_EVENT.set((user, this_mode))
        try:
            return step()
        except StopIteration:
            raise
        except Exception as exc:
            raise _as_user_error(fn, exc) from None
        finally:
            _IN_EVENT.reset(reset_event)
            AUTH_MODE.reset(reset_mode)
            CURRENT_USER.reset(reset)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user, this_mode, args = event_of(args)
            # Gradio may run each step in another thread (and context): the event's user is set around each one
            steps = in_event(user, this_mode, lambda: fn(*args, **kwargs))
            while True:
                try:
                    value = in_event(user, this_mode, lambda: next(steps))
                except StopIteration:
                    return
                yield value
    else:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user, this_mode, args = event_of(args)
            return in_event(user, this_mode, lambda: fn(*args, **kwargs))

    try:  # declare a leading gr.Request parameter so that Gradio passes the request (direct calls pass none)
        sig = inspect.signature(fn)
        request = inspect.Parameter("studio_request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
        wrapper.__signature__ = sig.replace(parameters=[request, *sig.parameters.values()])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {"studio_request": gr.Request, **getattr(fn, "__annotations__", {})}
    except (TypeError, ValueError):
        pass
    return wrapper  # type: ignore[return-value]


def shown_artifact(client: QueueClient, shelf: ArtifactShelf | None, job_id: str, artifact: dict) -> str | None:
    """A local file to show for one artifact: its served copy (streamed from storage) when there is a shelf, else a
    local copy from the client; None when storage no longer has it."""
    name = artifact["name"]
    try:
        if shelf is not None:
            return shelf.put(job_id, name, lambda: client.artifact_bytes(job_id, name), artifact.get("size"))
        return str(client.artifact_path(job_id, name))
    except NotFound:
        return None


class JobFailed(StudioError):
    """A job ended FAILED or CANCELLED; the message is the job's own one-line error."""


@dataclass
class Finished:
    """A SUCCEEDED job: its status, metrics and artifacts by name."""

    job_id: str
    status: dict
    metrics: dict = field(default_factory=dict)
    artifacts: dict[str, dict] = field(default_factory=dict)
    shelf: ArtifactShelf | None = None
    client: QueueClient | None = None

    def path(self, name: str) -> str | None:
        """The file of artifact `name` to show (its served copy, streamed from storage, when the runner has a shelf;
        else a local copy), or None when the job did not write it."""
        a = self.artifacts.get(name)
        if not a or self.client is None:
            return None
        return shown_artifact(self.client, self.shelf, self.job_id, a)

    def images(self, prefix: str = "") -> list[str]:
        """Files of image artifacts whose names start with `prefix`, in name order."""
        paths = [self.path(name) for name, a in sorted(self.artifacts.items())
                 if a.get("kind") == "image" and name.startswith(prefix)]
        return [p for p in paths if p is not None]

    def seconds(self) -> float | None:
        st = self.status
        if st.get("started") and st.get("finished"):
            return round(float(st["finished"]) - float(st["started"]), 2)
        return self.metrics.get("seconds")

    def summary(self) -> str:
        """One line for the page: job id, op and time (tabs append to it), after the job's warnings (an input that
        looks unlike what the model was trained on), each a paragraph of its own."""
        secs = self.seconds()
        took = f" in {secs:.2f} s" if isinstance(secs, (int, float)) else ""
        warned = "".join(f"⚠️ **warning:** {w}\n\n" for w in self.warnings())
        return f"{warned}✓ job `{self.job_id}` ({self.status.get('op', '?')}) finished{took}"

    def warnings(self) -> list[str]:
        """The job's warnings (`metrics["warnings"]`), as strings."""
        found = self.metrics.get("warnings")
        return [str(w) for w in found] if isinstance(found, list) else []


ProgressFn = Callable[..., Any]


def _describe(status: dict) -> str:
    """The progress line of a job's status: its state, then its message unless that only repeats the state
    ("running · running" read as a stutter), then the time left."""
    state = status.get("state", "?")
    message = (status.get("message") or "").strip()
    if message.lower() == str(state).lower():
        message = ""
    if state == "QUEUED":
        return f"queued · {message}" if message else "queued · waiting for a worker"
    eta = status.get("eta_s")
    eta_text = f" · about {eta:.0f} s left" if isinstance(eta, (int, float)) and eta >= 1 else ""
    return f"{state.lower()} · {message}{eta_text}" if message else f"{state.lower()}{eta_text}"


class JobRunner:
    """Submit specs and follow them to the end."""

    def __init__(self, client: QueueClient, poll_s: float = 0.1, timeout_s: float | None = None,
                 shelf: ArtifactShelf | None = None) -> None:
        self.client = client
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.shelf = shelf  # where shown artifacts are copied (the only served folder); None: the stored files

    def submit(self, spec: dict, priority: int = 5) -> str:
        clean = {k: v for k, v in spec.items() if v is not None}
        return scoped(self.client).submit(clean, priority=priority)

    def watch(self, job_id: str, progress: ProgressFn | None = None) -> Iterator[dict]:
        """Poll a job until it ends, reporting progress; yields each status it reads (with its preview and ETA,
        see `live_line` and `preview_image`), the final one last."""
        started = time.monotonic()
        client = scoped(self.client)  # once: the event's user does not change while it waits
        while True:
            status = client.status(job_id)
            if progress is not None:
                try:
                    progress(float(status.get("progress") or 0.0), desc=_describe(status))
                except Exception:  # a progress display must never fail the job's follow-up
                    pass
            yield status
            if status.get("state") in FINAL_STATES:
                return
            if self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
                raise JobFailed(f"job {job_id} is still {status.get('state')} after {self.timeout_s:.0f} s; "
                                "see the Queue tab")
            time.sleep(self.poll_s)

    def follow(self, job_id: str, progress: ProgressFn | None = None) -> dict:
        """Poll a job until it ends, reporting progress; returns its final status."""
        final: dict = {}
        for final in self.watch(job_id, progress):  # noqa: B007 - the last status read is the final one
            continue
        return final

    def finish(self, job_id: str, status: dict) -> Finished:
        """The finished job of a final `status`; JobFailed with the job's message when it did not succeed."""
        if status.get("state") == "FAILED":
            raise JobFailed(status.get("error") or f"job {job_id} failed")
        if status.get("state") == "CANCELLED":
            raise JobFailed(f"job {job_id} was cancelled")
        result = scoped(self.client).result(job_id)
        artifacts = {a["name"]: a for a in result.get("artifacts", [])}
        return Finished(job_id, status, result.get("metrics") or {}, artifacts, self.shelf, scoped(self.client))

    def run(self, spec: dict, progress: ProgressFn | None = None, priority: int = 5) -> Finished:
        """Submit, follow, and return the finished job; JobFailed with the job's message otherwise."""
        job_id = self.submit(spec, priority)
        return self.finish(job_id, self.follow(job_id, progress))


def live_line(job_id: str, status: dict) -> str:
    """The status line of a running job: its id, state, message and time left (e.g. "running · step 3/20 · about
    4 s left")."""
    step, total = status.get("step"), status.get("total")
    counted = f" · step {step}/{total}" if isinstance(step, int) and isinstance(total, int) and total > 0 else ""
    return f"job `{job_id}` · {_describe(status)}{counted}"


def preview_image(status: dict) -> Any:
    """The job's live preview (a PIL image) from its status' `preview_png_b64`, or None (none, or unreadable)."""
    import base64
    import binascii
    import io

    data = status.get("preview_png_b64")
    if not isinstance(data, str) or not data:
        return None
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        return image
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError):  # a broken preview: none
        return None
