"""Click-to-first-preview (issue 14): a 20-step sd job on a real worker, timed from submit to its first non-null
live preview (the job status' `preview_png_b64`) and to its end, with their ratio.

    .venv/bin/python bench/bench_preview.py                                   # shipped mnist-fashion, 3 runs
    .venv/bin/python bench/bench_preview.py --model MODEL --n 4 --runs 5 --op img2img

The worker is a real `python -m studio.queue` process (studio.queue.testing.QueueHarness: embedded Redis, its own
STUDIO_HOME, OOD check off); the model is loaded by a warm-up job first, so the runs time the job, not the load.
The status is polled every 10 ms, as a page following the job would (the UI polls every 100 ms). Then, in
process, the same decode with previews on and off (alternating): what the previews cost (budget: about 10%).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import tempfile
import time


def _image_b64() -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((12, 8, 52, 56), fill=(230, 230, 230))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def spec_for(args: argparse.Namespace, seed: int) -> dict:
    options = {"prompt": args.prompt, "steps": args.steps}
    spec = {"op": args.op, "backend": "sd", "model": args.model, "n": args.n, "seed": seed, "options": options}
    if args.op == "img2img":  # strength 1: all `steps` steps run
        spec.update(image={"png_b64": _image_b64()}, options={**options, "strength": 1.0})
    return spec


def one_run(client, spec: dict, poll_s: float) -> dict:  # noqa: ANN001 - a StudioClient
    """Submit `spec`, poll its status; seconds to the first preview and to the end, and the previews seen."""
    started = time.perf_counter()
    job_id = client.submit(spec)
    first = None
    seen: set[str] = set()
    while True:
        status = client.status(job_id)
        now = time.perf_counter() - started
        preview = status.get("preview_png_b64")
        if preview and status["state"] == "RUNNING":
            seen.add(preview)
            if first is None:
                first = now
        if status["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            if status["state"] != "SUCCEEDED":
                raise SystemExit(f"job {job_id} {status['state']}: {status.get('error')}")
            return {"first_preview_s": first, "end_s": now, "previews_seen": len(seen),
                    "ratio": round(first / now, 3) if first is not None else None,
                    "job_s": round(float(status["finished"]) - float(status["started"]), 3)}
        time.sleep(poll_s)


def preview_cost(args: argparse.Namespace) -> dict:
    """In-process: the same decode with previews on (a progress callback that keeps them) and off (budget 0),
    alternating `runs` times; the median seconds of each and the overhead."""
    import studio_sd.previews as previews
    import torch

    from studio.config import load_settings
    from studio.executor import Runtime

    torch.set_num_threads(1)
    runtime = Runtime(load_settings(env={"STUDIO_HOME": tempfile.mkdtemp(prefix="bench-preview-home-"),
                                         "STUDIO_DEVICE": args.device}))
    backend = runtime.get_backend("sd", args.model)
    o = backend.parse_options({"prompt": args.prompt, "steps": args.steps})
    point = {"noise": backend.sample_prior("noise", list(range(args.n)), o)}
    kept: list = []

    def keep(step: int, total: int, message: str = "", preview: object = None) -> None:
        if preview is not None:
            kept.append(step)

    times: dict[str, list[float]] = {"on": [], "off": []}
    backend.decode(point, o, progress=keep)  # warm-up
    budget = previews.PREVIEW_BUDGET
    for _ in range(max(args.runs, 5)):
        for mode in ("on", "off"):
            previews.PREVIEW_BUDGET = budget if mode == "on" else 0.0
            started = time.perf_counter()
            backend.decode(point, o, progress=keep)
            times[mode].append(time.perf_counter() - started)
    previews.PREVIEW_BUDGET = budget
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    return {"decode_s_with_previews": round(on, 4), "decode_s_without": round(off, 4),
            "overhead": round(on / off - 1, 3), "previews_per_decode": round(len(kept) / (max(args.runs, 5) + 1), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-fashion")
    parser.add_argument("--op", choices=["sample", "img2img"], default="sample")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt", default="a shirt")
    parser.add_argument("--poll-ms", type=float, default=10.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-cost", action="store_true", help="skip the in-process cost of previews")
    args = parser.parse_args()

    from studio.queue.testing import QueueHarness

    root = tempfile.mkdtemp(prefix="bench-preview-")
    with QueueHarness.running(root, plugins="sd", ood_check="off", device=args.device) as harness:
        client = harness.client()
        try:
            warm = client.submit(spec_for(args, 10_000))
            assert client.wait(warm, timeout=600)["state"] == "SUCCEEDED"
            runs = [one_run(client, spec_for(args, seed), args.poll_ms / 1000) for seed in range(args.runs)]
        finally:
            client.close()
    firsts = [r["first_preview_s"] for r in runs if r["first_preview_s"] is not None]
    ends = [r["end_s"] for r in runs]
    summary = {
        "op": args.op, "model": args.model, "steps": args.steps, "n": args.n, "device": args.device,
        "runs": runs, "median_first_preview_s": round(statistics.median(firsts), 3) if firsts else None,
        "median_end_s": round(statistics.median(ends), 3),
        "median_ratio": round(statistics.median(firsts) / statistics.median(ends), 3) if firsts else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if not args.no_cost:
        summary["in_process_cost"] = preview_cost(args)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
