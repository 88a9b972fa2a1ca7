"""Queue commands: submit <op>, status, wait, cancel, jobs, result, replay, retry, workers, worker, up.

`studio submit <op>` takes exactly the arguments of `studio run <op>` (the op commands are defined once in
studio.cli.ops) plus --priority, --wait and --json.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from studio.cli import ops
from studio.cli.common import Bar, print_json

submit_app = typer.Typer(help="Queue an operation for a worker; prints the job id at once.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(help="Job id (or a unique prefix of at least 4 characters).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Priority = Annotated[int, typer.Option(min=0, max=9, help="0-9, 9 most urgent.")]


def _client():  # noqa: ANN202 - imported lazily so `--help` stays fast
    from studio.config import load_settings
    from studio.queue.client import StudioClient
    from studio.users import user_from_env

    settings = load_settings()
    return StudioClient(settings, user=user_from_env(settings))  # with users: STUDIO_TOKEN or STUDIO_USER


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _duration(job: dict) -> str:
    if not job.get("started"):
        return "-"
    end = job.get("finished") or time.time()
    return f"{end - job['started']:.2f}s"


def describe(job: dict) -> str:
    """A human summary of a status dict."""
    lines = [f"{job['id']}  {job['state']}  {job['op']} on {job['backend']}"
             + (f" ({job['model']})" if job.get("model") else "")
             + f"  priority {job['priority']}  attempts {job['attempts']}/{job['max_attempts']}"]
    if job["state"] == "RUNNING":
        eta = f"  eta {job['eta_s']:.1f}s" if job.get("eta_s") is not None else ""
        lines.append(f"progress {job['progress'] * 100:.0f}% (step {job['step']}/{job['total']}) {job['message']}{eta}")
    elif job.get("message"):
        lines.append(f"message: {job['message']}")
    if job.get("error"):
        lines.append(f"error: {job['error']}")
    lines += [f"warning: {w}" for w in (job.get("metrics") or {}).get("warnings") or []]
    queued = (job["started"] or time.time()) - job["created"] if job["state"] != "CANCELLED" or job["started"] else 0
    lines.append(f"created {_when(job['created'])}  started {_when(job['started'])}  finished {_when(job['finished'])}"
                 f"  (waited {queued:.2f}s, ran {_duration(job)})")
    if job.get("worker"):
        lines.append(f"worker {job['worker']}" + (f"  batch led by {job['batch_leader']}"
                                                   if job.get("batch_leader") else ""))
    for e in job.get("events", []):  # retries, and webhook attempts that failed, gave up or delivered
        if e["kind"] == "retry":
            lines.append(f"retry: {e['message']}")
        elif e["kind"] in ("webhook_failed", "webhook_gave_up", "webhook_delivered"):
            lines.append(e["message"])
    if job.get("artifacts"):
        lines.append(f"artifacts ({len(job['artifacts'])}): " + ", ".join(a["name"] for a in job["artifacts"][:8])
                     + (" ..." if len(job["artifacts"]) > 8 else ""))
    return "\n".join(lines)


def _follow(client: object, job_id: str, timeout: float | None = None) -> dict:
    """Wait for a job, drawing its progress on stderr when that is a terminal."""
    from studio.queue.client import WaitTimeout

    bar = Bar(job_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            step = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            try:
                return client.wait(job_id, timeout=step)  # type: ignore[attr-defined]
            except WaitTimeout:
                if deadline is not None and time.monotonic() >= deadline:  # name the timeout given, not the last step
                    state = client.store.state(job_id)  # type: ignore[attr-defined]
                    given = int(timeout) if float(timeout).is_integer() else round(timeout, 3)
                    raise WaitTimeout(f"job {job_id} is still {state}: not finished after {given} s") from None
            job = client.store.get(job_id, events=False, preview=False,  # type: ignore[attr-defined]
                                   viewer=client.viewer)  # type: ignore[attr-defined]
            if job["total"]:
                bar(job["step"], job["total"], job["message"])
    finally:
        bar.close()


def _end(job: dict, as_json: bool) -> None:
    if as_json:
        print_json(job)
    else:
        print(describe(job))
    if job["state"] != "SUCCEEDED":
        raise typer.Exit(1)


def submit_spec(spec: dict, priority: int = 5, wait: bool = False, as_json: bool = False) -> None:
    """Queue `spec`; print its id (or {"id": ...}); with --wait, follow it and exit 0 only if it succeeded."""
    client = _client()
    job_id = client.submit(spec, priority=priority)
    if not wait:
        print_json({"id": job_id}) if as_json else print(job_id, flush=True)
        return
    if not as_json:
        print(job_id, flush=True)
    _end(_follow(client, job_id), as_json)


def _param(name: str, default: object, annotation: object) -> inspect.Parameter:
    return inspect.Parameter(name, ops.PARAM, default=default, annotation=annotation)


ops.mount(submit_app, [_param("priority", 5, Priority),
                       _param("wait", False, Annotated[bool, typer.Option("--wait", help="Wait for the end; exit 0 "
                                                                                          "only if it succeeded.")]),
                       ops.json_param()], submit_spec)


def status(job_id: JobId, as_json: Json = False) -> None:
    """State, progress, ETA, timings, retries and artifacts of a job."""
    job = _client().status(job_id)
    if as_json:
        print_json(job)
    else:
        print(describe(job))


def wait(job_id: JobId, timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
         as_json: Json = False) -> None:
    """Wait for a job to end; exit 0 when it succeeded, 1 when it failed or was cancelled."""
    client = _client()
    _end(_follow(client, client.store.resolve(job_id, client.viewer), timeout), as_json)


def cancel(job_id: JobId, as_json: Json = False) -> None:
    """Cancel a job: a queued job never runs; a running job stops at its next step."""
    job = _client().cancel(job_id)
    if as_json:
        print_json(job)
    else:
        print(f"{job['id']}  {job['state']}  {job['message']}")


def jobs(state: Annotated[str | None, typer.Option(help="Only jobs in this state (QUEUED, RUNNING, SUCCEEDED, "
                                                        "FAILED, CANCELLED).")] = None,
         limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
         as_json: Json = False) -> None:
    """Job history, newest first (it survives restarts of the UI, the workers and the broker)."""
    rows = _client().jobs(state, limit)
    if as_json:
        print_json(rows)
        return
    if not rows:
        print("no jobs yet: queue one with `studio submit sample -b vae`")
    for j in rows:
        note = j["error"] or (j["message"] if j["state"] in ("QUEUED", "RUNNING") else "")
        print(f"{j['id']}  {j['state']:<9}  {j['op']:<11} {j['backend']:<8} p{j['priority']}  "
              f"{_when(j['created'])}  {_duration(j):>8}  {len(j['artifacts'])} files  {note}".rstrip())


def result(job_id: JobId,
           out: Annotated[Path | None, typer.Option(help="Download the artifacts into this folder.")] = None,
           as_json: Json = False) -> None:
    """A finished job's artifacts and metrics; --out DIR downloads the files from storage (any machine)."""
    client = _client()
    res = client.result(job_id)
    if out is not None:
        paths = client.copy_result(res["id"], out)
        res = {**res, "copied": [str(p) for p in paths]}
    if as_json:
        print_json(res)
        return
    for warning in (res.get("metrics") or {}).get("warnings") or []:
        sys.stderr.write(f"warning: {warning}\n")
    if res.get("copied"):
        for p in res["copied"]:
            print(p)
        return
    for a in res["artifacts"]:
        print(f"{a['name']}  {a['kind']}  {a['size']} bytes  (--out DIR downloads it)")


def replay(source: Annotated[str, typer.Argument(help="A job id, or a PNG written by the studio.")],
           priority: Annotated[int | None, typer.Option(min=0, max=9, help="0-9 (default: the original's).")] = None,
           wait_: Annotated[bool, typer.Option("--wait", help="Wait for the end.")] = False,
           as_json: Json = False) -> None:
    """Run a job again from its record (the spec stored with the job or inside the PNG)."""
    client = _client()
    job_id = client.replay(source, priority=priority)
    if not wait_:
        print_json({"id": job_id}) if as_json else print(job_id, flush=True)
        return
    if not as_json:
        print(job_id, flush=True)
    _end(_follow(client, job_id), as_json)


def retry(job_id: JobId, as_json: Json = False) -> None:
    """Submit a job's spec again as a new job."""
    new_id = _client().retry(job_id)
    print_json({"id": new_id}) if as_json else print(new_id)


def workers(as_json: Json = False) -> None:
    """Live workers: device, queues, backends served, warm models, current job."""
    rows = _client().workers()
    if as_json:
        print_json(rows)
        return
    if not rows:
        print("no live workers: start one with `studio worker` or `studio up`")
    for w in rows:
        warm = ", ".join(f"{m['backend']}/{m['model']}" for m in w.get("loaded", [])) or "none"
        stalled = ""
        if w.get("stalled"):
            since = w.get("stalled_since")
            for_s = f" for {max(0, time.time() - since):.0f} s" if isinstance(since, (int, float)) else ""
            stalled = f"  STALLED{for_s}: idle, receives nothing while jobs of its queues wait (restarting)"
        print(f"{w['id']}  {w['device']} ({w['dtype']}, {w['pool']} x{w['concurrency']})  backends "
              f"{', '.join(w['backends'])}  warm {warm}  job {w.get('job_id') or '-'}{stalled}")


def worker(queues: Annotated[str | None, typer.Option(help="Comma-separated queues, e.g. any.vae,gpu.sd "
                                                           "(default: every backend this device can run).")] = None,
           concurrency: Annotated[int, typer.Option(min=1, help="Jobs at once (1: one process, solo pool).")] = 1,
           pool: Annotated[str | None, typer.Option(help="solo, prefork or threads (default: solo for 1, "
                                                         "else prefork).")] = None,
           loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "WARNING") -> None:
    """Run a worker here: it serves the installed backends on this machine's device until stopped."""
    from studio.config import load_settings
    from studio.queue.worker import run_worker

    chosen = [q for q in queues.split(",") if q.strip()] if queues else None
    run_worker(load_settings(), chosen, concurrency, pool, loglevel)


def up(host: Annotated[str | None, typer.Option(help="UI host (default STUDIO_UI_HOST).")] = None,
       port: Annotated[int | None, typer.Option(help="UI port (default STUDIO_UI_PORT).")] = None,
       no_ui: Annotated[bool, typer.Option("--no-ui", help="Broker and worker only.")] = False,
       no_worker: Annotated[bool, typer.Option("--no-worker", help="No worker here (they run elsewhere).")] = False,
       concurrency: Annotated[int, typer.Option(min=1, help="Worker concurrency.")] = 1) -> None:
    """Start the studio here: embedded Redis (unless STUDIO_BROKER_URL), one worker, and the UI."""
    from studio.config import load_settings
    from studio.queue.up import run_up

    settings = load_settings()
    launch = None
    if not no_ui and importlib.util.find_spec("studio.ui") is not None:
        from studio.ui.security import launch_auth

        launch_auth(settings, host or settings.ui_host, False)  # refuse an unsafe address before anything starts
        launch = find_ui()
    run_up(settings, host, port, launch=launch, concurrency=concurrency, worker=not no_worker)


def find_ui() -> Callable[..., None] | None:
    """`studio.ui.launch`, or None when the UI fails to load (a broken UI must not stop the queue from serving)."""
    try:
        module = importlib.import_module("studio.ui")
    except Exception as exc:
        sys.stderr.write(f"studio up: the UI failed to load ({type(exc).__name__}: {exc}); serving without it\n")
        return None
    return getattr(module, "launch", None)


COMMANDS = (status, wait, cancel, jobs, result, replay, retry, workers, worker, up)
NAMES = frozenset({"submit", *(fn.__name__ for fn in COMMANDS)})  # every command this module mounts


def register(app: typer.Typer) -> None:
    """Mount the queue commands on the main app."""
    app.add_typer(submit_app, name="submit")
    for fn in COMMANDS:
        app.command(fn.__name__)(fn)



