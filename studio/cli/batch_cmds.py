"""`studio batch FILE --out DIR`: one job per line of a JSONL or CSV file, resumable after an interruption.

A JSONL line is a job spec (`op` and `backend` may come from --op and --backend). A CSV file has a header: the
columns `op`, `backend` and `model` are themselves, a column named like a field of the op sets that field, and any
other column (or `options.NAME`) sets a backend option; values are parsed as JSON when they parse (1, 0.5, true),
empty cells are left out. Line numbers are the file's own (a CSV's header is line 1).

Each line's outputs go to DIR/<line>/. DIR/batch-progress.json records every line's state as it changes, so
running the same command again after Ctrl+C or a kill resumes: finished lines are skipped, a line whose job was
queued (--submit) is followed, never submitted again, and lines that failed or never ran are run. A bad line is
one error line naming its number; the other lines still run, and the exit status is 1 when any line failed.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from studio.errors import InputError, StudioError, clip

PROGRESS = "batch-progress.json"
DONE, QUEUED, FAILED = "done", "queued", "failed"


def read_lines(path: Path, op: str | None = None, backend: str | None = None) -> Iterator[tuple[int, dict | str]]:
    """(line number, spec dict) per job of a JSONL or CSV file, or (line number, error text) for a bad line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {clip(path)}: {clip(exc, 120)}") from None
    defaults = {k: v for k, v in {"op": op, "backend": backend}.items() if v}
    if path.suffix.lower() == ".csv":
        yield from _csv_lines(text, defaults)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            spec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON ({exc.msg} at column {exc.colno})"
            continue
        yield (number, {**defaults, **spec}) if isinstance(spec, dict) else (number, "a line is a JSON object")


def _csv_lines(text: str, defaults: dict) -> Iterator[tuple[int, dict | str]]:
    from studio.builtin_ops.grid import parse_value
    from studio.registry import get_op

    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        return
    fields_of: dict[str, set[str]] = {}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, f"not CSV ({exc})"
            continue
        number = reader.line_num
        if None in row:
            yield number, f"{len(row[None]) + len(reader.fieldnames)} cells, the header has {len(reader.fieldnames)}"
            continue
        values = {k.strip(): v for k, v in row.items() if k and v is not None and v.strip() != ""}
        spec: dict[str, Any] = {**defaults}
        for key in ("op", "backend", "model"):
            if key in values:
                spec[key] = values.pop(key).strip()
        name = spec.get("op")
        if not isinstance(name, str):
            yield number, "no op (give an `op` column or --op)"
            continue
        if name not in fields_of:
            try:
                fields_of[name] = set(get_op(name).model_fields)
            except StudioError as exc:
                yield number, str(exc)
                continue
        options: dict[str, Any] = {}
        for key, raw in values.items():
            value = parse_value(raw)
            if key.startswith("options."):
                options[key.removeprefix("options.")] = value
            elif key in fields_of[name]:
                spec[key] = value
            else:
                options[key] = value
        if options:
            spec["options"] = {**(spec.get("options") or {}), **options}
        yield number, spec


class Progress:
    """The batch's progress file: line number -> {"state", "job", "error"}; every change is written at once
    (a temporary file renamed over it, so a kill never leaves half a file)."""

    def __init__(self, out: Path, source: Path) -> None:
        self.path = out / PROGRESS
        self.lines: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.lines = data.get("lines", {}) if isinstance(data, dict) else {}
            except (OSError, json.JSONDecodeError):
                raise InputError(f"{clip(self.path)} is not a batch progress file: remove it to start over") from None
        self.source = str(source)

    def get(self, number: int) -> dict:
        return self.lines.get(str(number), {})

    def set(self, number: int, **entry: Any) -> None:
        self.lines[str(number)] = {k: v for k, v in entry.items() if v is not None}
        tmp = self.path.with_name(self.path.name + ".part")
        tmp.write_text(json.dumps({"file": self.source, "lines": self.lines}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def _fail(progress: Progress, number: int, message: str) -> None:
    text = clip(message, 250)
    progress.set(number, state=FAILED, error=text)
    sys.stderr.write(f"error: line {number}: {text}\n")


def run_batch(file: Path, out: Path, op: str | None = None, backend: str | None = None, submit: bool = False,
              priority: int = 5) -> dict[str, int]:
    """Run (or with `submit`, queue and follow) every line of `file`, resuming from DIR's progress file; returns
    how many lines were done now, skipped as done before, and failed."""
    from studio.config import load_settings
    from studio.spec import parse_spec
    from studio.users import user_from_env

    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(out, file)
    settings = load_settings()
    counts = {"done": 0, "skipped": 0, "failed": 0}
    client = runtime = None
    pending: list[tuple[int, str]] = []
    for number, spec in read_lines(file, op, backend):
        before = progress.get(number)
        if before.get("state") == DONE:
            counts["skipped"] += 1
            continue
        if before.get("state") == QUEUED and before.get("job"):
            pending.append((number, before["job"]))  # queued by an earlier run: follow it, never submit again
            continue
        if isinstance(spec, str):
            _fail(progress, number, spec)
            counts["failed"] += 1
            continue
        try:
            parse_spec(spec, settings)
            if submit:
                if client is None:
                    from studio.queue.client import StudioClient

                    client = StudioClient(settings, user=user_from_env(settings))
                job_id = client.submit(spec, priority=priority)
                progress.set(number, state=QUEUED, job=job_id)
                pending.append((number, job_id))
                continue
            from studio.executor import Runtime, execute

            runtime = runtime or Runtime(settings)
            result = execute(spec, runtime, owner=user_from_env(settings))
            result.write(out / str(number))
        except StudioError as exc:
            _fail(progress, number, str(exc))
            counts["failed"] += 1
            continue
        progress.set(number, state=DONE)
        counts["done"] += 1
        print(f"line {number}: {len(result.artifacts)} files in {out / str(number)}", flush=True)
    if pending and client is None:
        from studio.queue.client import StudioClient

        client = StudioClient(settings, user=user_from_env(settings))
    for number, job_id in pending:
        try:
            job = client.wait(job_id)
            if job["state"] != "SUCCEEDED":
                raise InputError(f"job {job_id} {job['state']}: {job.get('error') or job.get('message') or ''}")
            written = client.copy_result(job_id, out / str(number))
        except StudioError as exc:
            _fail(progress, number, str(exc))
            counts["failed"] += 1
            continue
        progress.set(number, state=DONE, job=job_id)
        counts["done"] += 1
        print(f"line {number}: job {job_id}, {len(written)} files in {out / str(number)}", flush=True)
    return counts


def batch(file: Annotated[Path, typer.Argument(help="A JSONL file (one job spec a line) or a CSV file (a header of "
                                                    "op fields and backend options).")],
          out: Annotated[Path, typer.Option(help="Output folder: DIR/<line>/ per line, and the progress file.")],
          op: Annotated[str | None, typer.Option(help="The op of lines that name none.")] = None,
          backend: Annotated[str | None, typer.Option("--backend", "-b", help="The backend of lines that name none.")]
          = None,
          submit: Annotated[bool, typer.Option("--submit", help="Queue every line for the workers and follow them "
                                                                "(default: run them in this process).")] = False,
          priority: Annotated[int, typer.Option(min=0, max=9, help="Priority of queued lines (0-9).")] = 5) -> None:
    """Run one job per line of a JSONL or CSV file; run it again after an interruption to resume (lines already
    done are skipped, queued ones followed)."""
    counts = run_batch(file, out, op, backend, submit, priority)
    print(f"{counts['done']} lines done, {counts['skipped']} done before, {counts['failed']} failed "
          f"(progress: {out / PROGRESS})")
    if counts["failed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("batch")(batch)
