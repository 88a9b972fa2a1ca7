"""Sweeps benchmark (issue 14): a 3x3 grid of 16-image VAE sample cells (seed x temperature) as ONE queued grid job,
against the same 9 sample jobs submitted one by one to the same real worker (all queued, then all awaited).

Prints the median wall time of each (submit to the end), and their ratio grid / separate (goal <= 1.5x: a grid
costs no more than its cells as jobs, labels included). The two are run alternately so load hits both alike.

    .venv/bin/python bench/bench_grid.py                 # embedded Redis, CPU, 5 runs each
    .venv/bin/python bench/bench_grid.py --runs 10 --broker redis://127.0.0.1:6379/9

The worker is a real `python -m studio.queue` process (studio.queue.testing.QueueHarness) in a temporary STUDIO_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SEEDS = [0, 16, 32]
TEMPERATURES = [0.5, 1.0, 1.5]


def grid_spec(n: int) -> dict:
    return {"op": "grid", "backend": "vae", "base": {"op": "sample", "n": n},
            "x": {"param": "seed", "values": SEEDS}, "y": {"param": "temperature", "values": TEMPERATURES}}


def cell_specs(n: int) -> list[dict]:
    return [{"op": "sample", "backend": "vae", "n": n, "seed": s, "temperature": t}
            for t in TEMPERATURES for s in SEEDS]


def run_grid(client, n: int) -> float:  # noqa: ANN001 - a StudioClient
    t0 = time.perf_counter()
    job = client.wait(client.submit(grid_spec(n)), timeout=600)
    took = time.perf_counter() - t0
    assert job["state"] == "SUCCEEDED", job.get("error")
    return took


def run_separate(client, n: int) -> float:  # noqa: ANN001 - a StudioClient
    t0 = time.perf_counter()
    ids = [client.submit(spec) for spec in cell_specs(n)]
    jobs = [client.wait(i, timeout=600) for i in ids]
    took = time.perf_counter() - t0
    assert all(j["state"] == "SUCCEEDED" for j in jobs), [j.get("error") for j in jobs]
    return took


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, default=16, help="Images per cell.")
    parser.add_argument("--broker", default=None, help="A Redis URL (default: the embedded Redis).")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads of the worker.")
    args = parser.parse_args(argv)
    from studio.queue.testing import QueueHarness

    root = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    h = QueueHarness(root, broker_url=args.broker, plugins="vae", lease_s=30, device="cpu",
                     torch_threads=args.threads, max_images=max(64, 9 * args.n))
    report: dict = {"command": "python bench/bench_grid.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "load_avg_at_start": round(os.getloadavg()[0], 2), "cores": os.cpu_count()}
    try:
        with h.active():
            h.start_worker()
            client = h.client()
            run_grid(client, args.n)  # warm: model loaded, code paths hot
            run_separate(client, args.n)
            grid, separate = [], []
            for _ in range(args.runs):
                grid.append(run_grid(client, args.n))
                separate.append(run_separate(client, args.n))
            client.close()
    finally:
        h.close()
    g, s = statistics.median(grid), statistics.median(separate)
    report.update(grid_s=round(g, 3), separate_s=round(s, 3), ratio=round(g / s, 3),
                  grid_runs=[round(x, 3) for x in grid], separate_runs=[round(x, 3) for x in separate],
                  load_avg_at_end=round(os.getloadavg()[0], 2))
    print(json.dumps(report, indent=2))
    print(f"3x3 grid of {args.n}-image VAE cells: one grid job {g:.3f} s, 9 separate jobs {s:.3f} s, "
          f"ratio {g / s:.2f}x (goal <= 1.5x)")
    return report


if __name__ == "__main__":
    main()
