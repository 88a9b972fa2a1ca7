"""`python -m studio.queue [--queues Q] [--concurrency N] [--pool P] [--loglevel L]`: run a worker, as `studio worker`
does, without loading the CLI (what `studio up` and the test harness start)."""

from __future__ import annotations

import argparse
import sys

from studio.errors import StudioError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studio.queue", description=__doc__)
    parser.add_argument("--queues", default=None, help="comma-separated queues (default: every backend it can run)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--pool", default=None, choices=("solo", "prefork", "threads"))
    parser.add_argument("--loglevel", default="WARNING")
    args = parser.parse_args(argv)
    from studio.config import load_settings
    from studio.queue.worker import run_worker

    queues = [q for q in args.queues.split(",") if q.strip()] if args.queues else None
    try:
        run_worker(load_settings(), queues, args.concurrency, args.pool, args.loglevel)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
