"""Reliability under faults and hostile input: the figures of docs/BENCHMARKS.md's "Reliability" table.

Every scenario runs real worker processes (studio.queue.testing.QueueHarness, the shared toy backend) on the
embedded Redis, injects one fault mid-batch, and counts what a user would: jobs lost (never ended and no longer
queued or running), duplicated (more than one success recorded for a job), stalled (not ended by the deadline),
innocent jobs failed, and worker crashes. Then 1000 fuzzed specs are submitted (rejections and failures must be one
clear line), and the worst upload (a 164 KB PNG claiming 13000x13000 pixels) is sent to a served UI three at once
while its peak memory is read.

    .venv/bin/python bench/bench_reliability.py                 # everything (about 4 minutes on 2 cores)
    .venv/bin/python bench/bench_reliability.py --only kill,fuzz --fuzz 300
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import random
import re
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from studio.errors import StudioError
from studio.queue.testing import QueueHarness, install_toy_plugin
from studio.ui.testing import bomb_png, bomb_png_bytes, free_port, peak_mb, served_ui, ui_env

FINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>|at 0x[0-9a-fA-F]{6,}")
SCENARIOS = ("kill", "restart", "malformed", "hang", "exit", "batch", "fuzz", "upload", "login")


def _sample(seed: int, delay_ms: int = 150, **options: object) -> dict:
    return {"op": "sample", "backend": "toy", "n": 1, "seed": seed, "options": {"delay_ms": delay_ms, **options}}


def _tally(client, ids: list[str], timeout: float, guilty: set[str] = frozenset()) -> dict:  # noqa: ANN001
    """Wait for `ids` (up to `timeout` s in all) and count what happened to them."""
    deadline = time.monotonic() + timeout
    finals: dict[str, dict] = {}
    while time.monotonic() < deadline and len(finals) < len(ids):
        for job_id in ids:
            if job_id not in finals:
                job = client.status(job_id)
                if job["state"] in FINAL:
                    finals[job_id] = job
        time.sleep(0.1)
    states = Counter(client.status(j)["state"] for j in ids)
    duplicated = sum(1 for j in finals if sum(e["kind"] == "succeeded" for e in client.status(j)["events"]) > 1)
    unclear_errors = [job["error"] or "" for job in finals.values()
                      if job["state"] == "FAILED" and not _clear(job["error"] or "")]
    unclear = len(unclear_errors)
    innocent_failed = sum(1 for j, job in finals.items() if job["state"] == "FAILED" and j not in guilty)
    stalled = len(ids) - len(finals)  # not ended by the deadline
    lost = sum(1 for j in ids if j not in finals and client.status(j)["attempts"] == 0)  # and never picked up
    return {"jobs": len(ids), "succeeded": states.get("SUCCEEDED", 0), "failed": states.get("FAILED", 0),
            "lost": lost, "duplicated": duplicated, "stalled": stalled, "innocent_failed": innocent_failed,
            "unclear_messages": unclear, "unclear_examples": [e[:400] for e in unclear_errors[:3]]}


def _clear(message: str) -> bool:
    """One line, under 300 characters, no Python repr."""
    return bool(message) and "\n" not in message and len(message) < 300 and not REPR.search(message)


def _alive(workers: list[subprocess.Popen]) -> int:
    return sum(w.poll() is None for w in workers)


@contextlib.contextmanager
def _harness(root: Path, **settings: object):
    h = QueueHarness(root / uuid.uuid4().hex[:6], **settings)
    try:
        with h.active():
            yield h
    finally:
        h.close()


def kill(root: Path, jobs: int) -> dict:
    """SIGKILL one of two workers mid-batch (its machine died)."""
    with _harness(root) as h:
        workers = [h.start_worker(), h.start_worker()]
        client = h.client()
        ids = [client.submit(_sample(i)) for i in range(jobs)]
        while sum(client.status(j)["state"] == "SUCCEEDED" for j in ids) < 3:
            time.sleep(0.05)
        h.kill_worker(workers[0])
        out = _tally(client, ids, 180)
        out["worker_crashes"] = 1 - _alive(workers[1:])  # the one we killed does not count
        return out


def restart(root: Path, jobs: int) -> dict:
    """Stop the embedded broker for 6 s mid-batch (longer than redis-py's retries: in-flight acks fail)."""
    from studio.queue.broker import start_embedded

    with _harness(root, batch_max_images=1) as h:
        workers = [h.start_worker(), h.start_worker()]
        client = h.client()
        ids = [client.submit(_sample(i, delay_ms=300)) for i in range(jobs)]
        while sum(client.status(j)["state"] == "SUCCEEDED" for j in ids) < 2:
            time.sleep(0.05)
        h.embedded.stop()
        time.sleep(6)
        h.embedded = start_embedded(h.settings)
        out = _tally(client, ids, 240)
        out["worker_crashes"] = 2 - _alive(workers)
        out["failed_acks"] = sum(h.worker_log(w).count("Couldn't ack") for w in workers)  # the fault happened
        return out


def _envelope(body: str, **headers: object) -> bytes:
    tag = str(uuid.uuid4())
    return json.dumps({"body": body, "content-encoding": "utf-8", "content-type": "application/json",
                       "headers": {"lang": "py", "task": "studio.run_job", "id": tag, **headers},
                       "properties": {"delivery_tag": tag, "body_encoding": "base64", "priority": 0,
                                      "delivery_info": {"exchange": "", "routing_key": "x"}}}).encode()


def malformed(root: Path, jobs: int) -> dict:
    """Push 10 kinds of malformed envelope into the worker's queue between real jobs."""
    from studio.queue.broker import redis_client

    args = base64.b64encode(json.dumps([["0" * 12], {}, {}]).encode()).decode()
    bad = [b"not json", b"[1, 2, 3]", b'"a string"', b"\xff\xfe not utf-8", _envelope("%%% not base64 %%%"),
           json.dumps({"body": "e30=", "headers": {}}).encode(), _envelope(base64.b64encode(b"nope").decode()),
           json.dumps({"body": 5, "properties": {"delivery_tag": "t"}}).encode(), _envelope(args, timelimit="x"),
           _envelope(args, task=["x"])]
    with _harness(root) as h:
        workers = [h.start_worker()]
        client = h.client()
        ids = [client.submit(_sample(i, delay_ms=20)) for i in range(jobs // 2)]
        redis = redis_client(h.settings.broker_url or h.embedded.url, timeout=5)
        for item in bad:
            redis.lpush(f"{h.prefix}:{h.prefix}.any.toy", item)
        ids += [client.submit(_sample(100 + i, delay_ms=20)) for i in range(jobs - jobs // 2)]
        out = _tally(client, ids, 120)
        out["worker_crashes"] = 1 - _alive(workers)
        out["malformed_rejected"] = h.worker_log(workers[0]).count("rejected a malformed message")
        return out


def _guilty_run(root: Path, jobs: int, guilty_options: dict, **settings: object) -> dict:
    with _harness(root, **settings) as h:
        workers = [h.start_worker()]
        client = h.client()
        guilty = client.submit(_sample(9999, delay_ms=0, **guilty_options))
        ids = [guilty] + [client.submit(_sample(i, delay_ms=20)) for i in range(jobs - 1)]
        out = _tally(client, ids, 240, guilty={guilty})
        out["guilty_state"] = client.status(guilty)["state"]
        out["guilty_error"] = client.status(guilty)["error"]
        out["worker_crashes"] = 1 - _alive(workers)
        return out


def hang(root: Path, jobs: int) -> dict:
    """A backend that never returns and never reports progress, first in the queue (time limit 3 s)."""
    return _guilty_run(root, jobs, {"hang": True}, job_time_limit_s=3)


def exit_(root: Path, jobs: int) -> dict:
    """A backend that ends its own process (os._exit) on one job."""
    return _guilty_run(root, jobs, {"exit": 3}, max_retries=1)


def batch(root: Path, jobs: int) -> dict:
    """One job whose seed makes the backend raise, micro-batched with the others."""
    with _harness(root) as h:
        client = h.client()
        guilty_seed = 7
        ids = [client.submit(_sample(i, delay_ms=5, fail_seed=guilty_seed)) for i in range(jobs)]
        guilty = {ids[guilty_seed]}
        workers = [h.start_worker()]  # started after the submits: the jobs wait together and are batched
        out = _tally(client, ids, 120, guilty=guilty)
        out["worker_crashes"] = 1 - _alive(workers)
        out["ran_batched"] = sum(any("batched with" in e["message"] for e in client.status(j)["events"])
                                 for j in ids)  # followers of a batch leader (the fault hit a real batch)
        return out


def _fuzzed_spec(rng: random.Random) -> object:
    """A spec as a careless or hostile client would send it."""
    junk = [None, True, -1, 0, 2**70, 1e308, float("nan"), "", "x" * rng.choice([5, 300, 100_000]), [], {}, [1] * 3,
            list(range(rng.choice([10, 5000]))), {"a": {"b": {"c": 1}}}]
    bomb = _bomb_b64() if rng.random() < 0.02 else None
    base = rng.choice([
        {"op": "sample", "backend": "toy", "n": 1, "seed": rng.randrange(100)},
        {"op": "interpolate", "backend": "toy", "start": {"seed": 1}, "end": {"seed": 2}, "steps": 3},
        {"op": "traverse", "backend": "toy", "source": {"seed": 3}, "dims": [0, 1], "steps": 3},
        {"op": "roundtrip", "backend": "toy", "images": [{"png_b64": bomb or _small_b64()}], "bits": 8},
        {"op": "fit_vector", "backend": "toy", "name": "v", "with_seeds": [1, 2], "without_seeds": [3, 4]},
    ])
    spec = dict(base)
    for _ in range(rng.randrange(0, 4)):
        key = rng.choice(list(base) + ["options", "extra", "with_seeds", "model", "priority"])
        spec[key] = rng.choice(junk + [base.get(key)])
    if rng.random() < 0.05:
        return rng.choice(junk)
    return spec


_SMALL: list[str] = []
_BOMB: list[str] = []


def _small_b64() -> str:
    if not _SMALL:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("L", (8, 8), 3).save(buf, format="PNG")
        _SMALL.append(base64.b64encode(buf.getvalue()).decode())
    return _SMALL[0]


def _bomb_b64() -> str:
    """A small PNG whose header claims 13000x13000 grey pixels (all zero: it compresses to ~160 KB)."""
    if not _BOMB:
        _BOMB.append(base64.b64encode(bomb_png_bytes(13000, 13000)).decode())
    return _BOMB[0]


def fuzz(root: Path, n: int) -> dict:
    """`n` fuzzed specs at a live worker: every rejection and every failure must be one clear line."""
    rng = random.Random(0)
    with _harness(root) as h:
        workers = [h.start_worker()]
        client = h.client()
        accepted, rejected, unclear, examples = [], 0, 0, []
        for _ in range(n):
            spec = _fuzzed_spec(rng)
            try:
                accepted.append(client.submit(spec, priority=rng.randrange(10)))
            except StudioError as exc:
                rejected += 1
                if not _clear(str(exc)):
                    unclear += 1
                    examples.append(str(exc)[:400])
            except Exception as exc:  # anything but a StudioError is an unclear message (a crash of the client path)
                rejected += 1
                unclear += 1
                examples.append(f"{type(exc).__name__}: {str(exc)[:300]}")
        out = _tally(client, accepted, 600)
        return {"specs": n, "rejected_at_submit": rejected, "accepted": len(accepted),
                "unclear_messages": unclear + out["unclear_messages"], "stalled": out["stalled"],
                "lost": out["lost"], "worker_crashes": 1 - _alive(workers),
                "unclear_examples": (examples + out["unclear_examples"])[:3]}


def upload(root: Path, copies: int = 3) -> dict:
    """Three 13000x13000 PNG uploads at once to a served UI's /compress: its peak memory before and after."""
    from gradio_client import Client, handle_file

    plugins = install_toy_plugin(root / "plugins")
    env = ui_env(root, plugins, plugins="toy", queue_prefix=f"rel{os.getpid()}")
    bomb = bomb_png(root / "bomb.png", 13000, 13000)
    with served_ui(env, free_port()) as ui:
        api = Client(ui.url, verbose=False)
        small = root / "small.png"
        from PIL import Image

        Image.new("L", (40, 40), 9).save(small)
        with contextlib.suppress(Exception):  # warm the upload path
            api.predict(backend="missing", source="Upload", upload=handle_file(str(small)), bits=6,
                        api_name="/compress")
        before = peak_mb(ui.pid)
        messages: list[str] = []

        def send() -> None:
            try:
                api.predict(backend="toy", source="Upload", upload=handle_file(str(bomb)), bits=6,
                            api_name="/compress")
                messages.append("accepted")
            except Exception as exc:
                messages.append(str(exc))

        threads = [threading.Thread(target=send) for _ in range(copies)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        after = peak_mb(ui.pid)
        return {"upload_bytes": bomb.stat().st_size, "uploads_at_once": copies, "peak_mb_before": round(before),
                "peak_mb_after": round(after), "growth_mb": round(after - before, 1),
                "refused_clearly": sum("pixels; the limit is" in m and _clear(m) for m in messages)}


def login(root: Path, attempts: int = 200) -> dict:
    """`attempts` wrong passwords for one user over HTTP from 127.0.0.1, then the right one from there and from
    127.0.0.2 (another address): how long the guesses took and who gets in."""
    import httpx

    from studio.config import load_settings
    from studio.users import UserStore

    env = ui_env(root, queue_prefix=f"rel{os.getpid()}")
    UserStore.from_settings(load_settings(env)).add("alice", "alice-password")

    def post(url: str, password: str, address: str = "127.0.0.1") -> int:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60) as http:
            return http.post(f"{url}login", data={"username": "alice", "password": password}).status_code

    with served_ui(env, free_port()) as ui:
        started = time.monotonic()
        codes = Counter(post(ui.url, f"guess-{i}") for i in range(attempts))
        seconds = time.monotonic() - started
        same_address = post(ui.url, "alice-password")
        other_address = post(ui.url, "alice-password", "127.0.0.2")
    store = UserStore.from_settings(load_settings(env))
    return {"wrong_attempts": attempts, "refused": codes.get(400, 0), "accepted": codes.get(200, 0),
            "seconds_for_all": round(seconds, 2), "checked_failures_counted": store.failures("pair", "alice 127.0.0.1"),
            "right_password_same_address": "in" if same_address == 200 else "refused (throttled)",
            "right_password_other_address": "in" if other_address == 200 else "refused"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=30, help="jobs per fault scenario")
    parser.add_argument("--fuzz", type=int, default=1000, help="fuzzed specs")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: " + ",".join(SCENARIOS))
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    runs = {"kill": lambda r: kill(r, args.jobs), "restart": lambda r: restart(r, args.jobs),
            "malformed": lambda r: malformed(r, args.jobs), "hang": lambda r: hang(r, 10),
            "exit": lambda r: exit_(r, 10), "batch": lambda r: batch(r, 16), "fuzz": lambda r: fuzz(r, args.fuzz),
            "upload": lambda r: upload(r), "login": lambda r: login(r)}
    print(f"# machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        for name in chosen:
            started = time.monotonic()
            result = runs[name](Path(tmp) / name)
            result["seconds"] = round(time.monotonic() - started, 1)
            print(json.dumps({"scenario": name, **result}), flush=True)


if __name__ == "__main__":
    main()
