"""`python -m studio_workers [--queues Q] [--concurrency N] [--pool P]`: the same as `studio worker`."""

from __future__ import annotations

import sys

from studio.cli import main

if __name__ == "__main__":
    main(["worker", *sys.argv[1:]])
