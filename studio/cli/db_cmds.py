"""`studio db status|copy` and `studio storage gc`: the records database and the object storage of a studio.

`studio db copy --to postgresql://... --storage-to s3://bucket/prefix` moves a studio's whole history (jobs, events,
artifacts, users, vectors, models) from the configured database and storage (by default the embedded SQLite file and
local folder) to servers; then point STUDIO_DATABASE_URL and STUDIO_STORAGE_URL at them. Stop the studio first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from studio.cli.common import print_json
from studio.errors import InputError, clip

db_app = typer.Typer(help="The records database: status, and copying a studio's history to another server.",
                     no_args_is_help=True)
storage_app = typer.Typer(help="The object storage of artifacts, vectors and weights.", no_args_is_help=True)

LIVE_WORKER_S = 60.0  # a worker seen this recently is taken to be running


def _target_database(url: str):  # noqa: ANN202 - studio.db.Database, imported lazily
    from studio.db import Database, redacted

    try:
        return Database(url)
    except InputError:
        raise InputError(f"--to {redacted(url)!r} is not a supported database URL: use postgresql://user:pass@host:"
                         "5432/db (or sqlite:///PATH)") from None


def _target_storage(url: str | None, endpoint: str | None, settings):  # noqa: ANN001, ANN202 - lazily imported types
    from studio.storage import LocalStorage, S3Storage, redact, storage_for

    if url is None:
        return storage_for(settings)
    if url.startswith("s3://"):
        return S3Storage(url, settings.s3_endpoint_url if endpoint is None else endpoint)
    if url.startswith("/"):
        return LocalStorage(Path(url))
    raise InputError(f"--storage-to {redact(url)!r} is not supported: use s3://bucket/prefix or an absolute folder "
                     "path")


class _Progress:
    """One progress line on stderr, rewritten in place on a terminal (one line per finished stage otherwise)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, what: str, done: int, total: int) -> None:
        line = f"copying {what}: {done}/{total}"
        if self.tty:
            sys.stderr.write(f"\r{line:<60}" + ("\n" if done >= total else ""))
            sys.stderr.flush()
        elif done >= total:
            sys.stderr.write(line + "\n")


@db_app.command("status")
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The records database (password hidden), its schema version, rows per table, and the storage."""
    from studio.config import load_settings
    from studio.db import Database
    from studio.dbcopy import table_counts
    from studio.storage import storage_for

    settings = load_settings()
    db = Database.for_settings(settings)
    counts = table_counts(db)
    info = {"database": db.shown, "schema_version": db.schema_version(), "tables": counts,
            "storage": storage_for(settings).url}
    if as_json:
        print_json(info)
        return
    print(f"database  {info['database']}  (schema version {info['schema_version']})")
    print(f"storage   {info['storage']}")
    for name, n in counts.items():
        print(f"  {name:<10} {n}")


@db_app.command("copy")
def copy(to: Annotated[str, typer.Option("--to", help="The target database URL (postgresql://user:pass@host:5432/db)"
                                                      "; it must be empty.")],
         storage_to: Annotated[str | None, typer.Option("--storage-to", help="The target storage: s3://bucket/prefix "
                                                                             "(or an absolute folder). Default: "
                                                                             "records only, objects stay where they "
                                                                             "are.")] = None,
         s3_endpoint_url: Annotated[str | None, typer.Option("--s3-endpoint-url", help="The target S3 server "
                                                                                       "(MinIO, R2...); default: "
                                                                                       "STUDIO_S3_ENDPOINT_URL.")]
         = None) -> None:
    """Copy this studio's records (and, with --storage-to, its artifacts, vectors and weights) to another database.
    Stop the studio (UI, clients, workers) first: queued and running jobs are copied as they are."""
    from studio.config import load_settings
    from studio.db import Database
    from studio.dbcopy import check_target, copy_records, live_workers
    from studio.storage import storage_for

    settings = load_settings()
    source = Database.for_settings(settings)
    target = _target_database(to)
    target_storage = _target_storage(storage_to, s3_endpoint_url, settings)
    check_target(source, target)
    target_storage.exists("studio-db-copy-probe")  # a missing bucket or an unreachable server: one line, at once
    live = live_workers(source, LIVE_WORKER_S)
    if live:
        sys.stderr.write(f"warning: {live} worker(s) reported in the last minute: stop the studio first, or jobs "
                         "they finish now are not in the copy\n")
    try:
        result = copy_records(source, target, storage_for(settings), target_storage, progress=_Progress())
    finally:
        target.dispose()
    for name, n in result["tables"].items():
        print(f"  {name:<10} {n}")
    print(f"copied {sum(result['tables'].values())} records to {target.shown} and {result['objects']} objects to "
          f"{target_storage.url}")
    if result["missing"]:
        print(f"warning: {len(result['missing'])} object(s) named by a record were missing from the source storage "
              f"(e.g. {clip(result['missing'][0])!r})", file=sys.stderr)
    print(f"now set STUDIO_DATABASE_URL={target.shown}" + (f" and STUDIO_STORAGE_URL={target_storage.url}"
                                                           if storage_to and storage_to.startswith("s3://") else ""))


@storage_app.command("gc")
def gc(older_than: Annotated[float, typer.Option("--older-than", help="Seconds: only uploads older than this "
                                                                      "go (a worker may still be uploading a "
                                                                      "younger one).")] = 3600.0) -> None:
    """Remove uploads no job record names (attempts that lost their lease or died mid-upload)."""
    from studio.config import load_settings
    from studio.queue.jobstore import JobStore
    from studio.queue.store import ArtifactStore

    if not older_than >= 0:
        raise InputError(f"--older-than must be 0 or more seconds, got {older_than}")
    settings = load_settings()
    store = ArtifactStore.from_settings(settings)
    removed = store.collect_orphans(JobStore.from_settings(settings), older_than)
    print(f"removed {removed} orphaned object(s) from {store.storage.url}")


def register(app: typer.Typer) -> None:
    """Mount `studio db` and `studio storage` on the main app."""
    app.add_typer(db_app, name="db")
    app.add_typer(storage_app, name="storage")
