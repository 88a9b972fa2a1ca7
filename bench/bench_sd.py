"""P4 and P5 for the Stable Diffusion backend.

P4: the overhead of the studio backend. A `SDBackend.decode` call against a raw diffusers pipeline call on
    the same pipeline object, same options, same noise, timed in alternation (goal: at most 3%). The
    studio call is timed "cold" (prompt embeddings recomputed, as the raw call does) and "warm" (the
    backend's embedding cache hit, its steady state in a walk or batch).
P5: the optimised runtime path (`choose_runtime(device, "auto")`: fp16, channels_last, VAE slicing/tiling,
    optional torch.compile via STUDIO_SD_COMPILE=1) through the studio, against raw diffusers in fp32 with
    default settings (goal on a GPU: at least 1.5x). On the CPU the runtime is fp32 by design: about 1x.

Architectures: `tiny` (the test pipeline) or `sd15` (the full SD-1.5 architecture with random weights;
speed does not depend on the weight values), or `--model DIR` for a real diffusers folder.

    .venv/bin/python bench/bench_sd.py                                   # tiny, CPU, 1 thread
    .venv/bin/python bench/bench_sd.py --arch sd15 --device cuda --size 512 --steps 20 --json sd.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from studio_sd.backend import SDBackend
from studio_sd.optimise import choose_runtime
from studio_sd.tiny import build_sd_pipeline

PROMPT = "a portrait painting of a smiling cat"
NEGATIVE = "blurry"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(calls: dict[str, Callable[[], object]], repeats: int, warmup: int, device: str,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, list]:
    """Seconds per call for each entry, measured in alternation (order reversed every round).

    `clock`: wall time by default; `time.process_time` (this process's CPU time) on a shared CPU, where
    other processes' load makes wall time swing by tens of percent."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            start = clock()
            calls[name]()
            _sync(device)
            times[name].append(clock() - start)
    return times


def _clock(device: str) -> Callable[[], float]:
    return time.perf_counter if device.startswith("cuda") else time.process_time


def _pipe(args: argparse.Namespace):  # -> StableDiffusionPipeline on the CPU, float32
    if args.model:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline.from_pretrained(args.model, local_files_only=True)
    return build_sd_pipeline(args.arch, seed=0)


def _options(backend: SDBackend, args: argparse.Namespace):
    size = {"width": args.size, "height": args.size} if args.size else {}
    return backend.parse_options({"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": args.steps,
                                  "guidance": 7.5, "scheduler": "ddim", **size})


def raw_call(pipe, noise: torch.Tensor, args: argparse.Namespace, h: int, w: int) -> torch.Tensor:
    """What a user of diffusers writes: the same config, the same noise, the images brought to the CPU."""
    out = pipe(prompt=[PROMPT] * noise.shape[0], negative_prompt=[NEGATIVE] * noise.shape[0], height=h, width=w,
               num_inference_steps=args.steps, guidance_scale=7.5, output_type="pt",
               latents=noise.to(pipe.device, pipe.unet.dtype), generator=torch.Generator("cpu").manual_seed(0))
    return out.images.float().cpu() * 2 - 1


def p4(args: argparse.Namespace, device: str) -> dict:
    runtime = choose_runtime(device, args.dtype)
    backend = SDBackend.from_pipeline(_pipe(args), "p4", runtime)
    o = _options(backend, args)
    h, w = backend.size(o)
    noise = backend.sample_prior("noise", list(range(args.batch)), o)

    def studio_cold() -> torch.Tensor:
        backend._embeddings.clear()
        return backend.decode({"noise": noise}, o)

    calls = {"raw": lambda: raw_call(backend.pipe, noise, args, h, w), "studio_cold": studio_cold,
             "studio_warm": lambda: backend.decode({"noise": noise}, o)}
    times = alternate(calls, args.repeats, args.warmup, device, _clock(device))
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = float((studio_cold() - calls["raw"]()).abs().max())
    return {"runtime": runtime.describe(), "size": [h, w], "clock": _clock(device).__name__, "median_s": med,
            "all_s": times, "overhead_cold_pct": 100 * (med["studio_cold"] / med["raw"] - 1),
            "overhead_warm_pct": 100 * (med["studio_warm"] / med["raw"] - 1), "max_abs_pixel_diff": diff}


def p5(args: argparse.Namespace, device: str) -> dict:
    baseline = _pipe(args).to(device)  # fp32, diffusers defaults (SDPA attention on torch 2)
    baseline.set_progress_bar_config(disable=True)
    runtime = choose_runtime(device, "auto")
    start = time.perf_counter()
    optimised = SDBackend.from_pipeline(_pipe(args), "p5", runtime)
    o = _options(optimised, args)
    h, w = optimised.size(o)
    noise = optimised.sample_prior("noise", list(range(args.batch)), o)
    first = optimised.decode({"noise": noise}, o)  # includes compilation when STUDIO_SD_COMPILE=1
    first_call_s = time.perf_counter() - start
    times = alternate({"raw_fp32_defaults": lambda: raw_call(baseline, noise, args, h, w),
                       "studio_optimised": lambda: optimised.decode({"noise": noise}, o)},
                      args.repeats, args.warmup, device, _clock(device))
    med = {k: statistics.median(v) for k, v in times.items()}
    mse = float(((first - raw_call(baseline, noise, args, h, w)) ** 2).mean())
    return {"runtime": runtime.describe(), "size": [h, w], "clock": _clock(device).__name__, "median_s": med,
            "all_s": times, "speedup": med["raw_fp32_defaults"] / med["studio_optimised"], "first_call_s": first_call_s,
            "psnr_optimised_vs_fp32_db": 10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))).item()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="SD backend benchmarks P4 (overhead) and P5 (optimised path)")
    parser.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--model", help="a local diffusers folder instead of --arch")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", help="P4's dtype for both sides (auto: fp16 on CUDA)")
    parser.add_argument("--size", type=int, default=None, help="pixels (default: the model's native size)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 1 on the CPU, fastest on a busy 2-core box; torch's own on CUDA)")
    parser.add_argument("--only", choices=["p4", "p5"], default=None)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    device = choose_runtime(args.device, "auto").device
    if args.threads or device == "cpu":
        torch.set_num_threads(args.threads or 1)
    import diffusers

    env = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
           "torch": torch.__version__, "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
           "load_average": os.getloadavg(), "arch": args.model or args.arch, "steps": args.steps,
           "batch": args.batch, "repeats": args.repeats, "command": " ".join(sys.argv)}
    results: dict = {"env": env}
    if args.only in (None, "p4"):
        results["p4"] = p4(args, device)
        r = results["p4"]
        print(f"P4 {env['arch']} {r['size'][0]}x{r['size'][1]} {args.steps} steps on {env['device']} "
              f"({r['runtime']['dtype']}, {r['clock']}, median of {args.repeats}): "
              f"raw {r['median_s']['raw'] * 1000:.1f} ms, studio cold "
              f"{r['median_s']['studio_cold'] * 1000:.1f} ms ({r['overhead_cold_pct']:+.2f}%), warm "
              f"{r['median_s']['studio_warm'] * 1000:.1f} ms ({r['overhead_warm_pct']:+.2f}%); "
              f"max pixel diff {r['max_abs_pixel_diff']:.2e}")
    if args.only in (None, "p5"):
        results["p5"] = p5(args, device)
        r = results["p5"]
        print(f"P5 {env['arch']} {r['size'][0]}x{r['size'][1]} on {env['device']} ({r['clock']}): raw fp32 defaults "
              f"{r['median_s']['raw_fp32_defaults'] * 1000:.1f} ms, studio optimised ({r['runtime']['dtype']}, "
              f"channels_last={r['runtime']['channels_last']}, compile={r['runtime']['compile_unet']}) "
              f"{r['median_s']['studio_optimised'] * 1000:.1f} ms: {r['speedup']:.2f}x; "
              f"PSNR vs fp32 {r['psnr_optimised_vs_fp32_db']:.1f} dB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    main()
