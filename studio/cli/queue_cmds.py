"""Queue commands (submit, status, wait, cancel, jobs, result, replay, worker, up): see the job-queue issue."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount the queue commands on the main app."""
