"""UMAP cold start: `studio run project --method umap --limit 10000` in a new process, against the same command run
again in the same process.

Three measurements, under one throw-away STUDIO_HOME (its dataset cache filled first by a PCA run, so only UMAP
differs):
- first: a new process, numba's cache (`<STUDIO_HOME>/cache/numba`) empty: umap compiles everything;
- cold: another new process, the cache filled by the first: umap loads its compiled code;
- warm: the same command again in that second process (everything already in memory).
Each run is the real CLI command (typer, in-process); the projection cache is removed before each, so every run
encodes and projects. Reported per run: wall seconds and CPU seconds (user + sys of the process: less sensitive to
other load on the machine), and the cold/warm ratios. Also the whole cold process's wall time (imports included).

    .venv/bin/python bench/bench_umap_cold.py                # 10000 images, vae
    .venv/bin/python bench/bench_umap_cold.py --limit 2000 --backend vae
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _command(method: str, args: argparse.Namespace, out: Path) -> list[str]:
    return ["run", "project", "--backend", args.backend, "--method", method, "--limit", str(args.limit),
            "--dataset", args.dataset, "--out", str(out), "--json"]


def child(args: argparse.Namespace) -> None:
    """Run the command `args.runs` times in this process; print one JSON line of [wall, cpu] per run."""
    import contextlib
    import io

    from studio import cli
    from studio.config import load_settings

    cli._register()  # what `studio` does before it parses a command line (studio.cli.main, which then exits)

    home = load_settings().cache_path
    times = []
    for i in range(args.runs):
        shutil.rmtree(home / "projections", ignore_errors=True)
        wall, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            cli.app(_command(args.method, args, Path(args.out) / f"run{i}"), standalone_mode=False)
        times.append([time.perf_counter() - wall, time.process_time() - cpu])
    print(json.dumps(times))


def _spawn(args: argparse.Namespace, env: dict[str, str], runs: int, method: str = "umap") -> tuple[list, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", "--runs", str(runs), "--method", method,
                           "--limit", str(args.limit), "--backend", args.backend, "--dataset", args.dataset,
                           "--out", str(Path(env["STUDIO_HOME"]) / "out")],
                          env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"the child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=10000)
    parser.add_argument("--backend", default="vae")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--method", default="umap")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", default="")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    home = Path(tempfile.mkdtemp(prefix="bench-umap-"))
    env = {**os.environ, "STUDIO_HOME": str(home), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("NUMBA_CACHE_DIR", None)
    try:
        _spawn(args, env, 1, method="pca")  # fills the dataset cache: the runs below differ only by UMAP
        (first,), first_process = _spawn(args, env, 1)
        (cold, warm), cold_process = _spawn(args, env, 2)
        cache_mb = sum(p.stat().st_size for p in (home / "cache" / "numba").rglob("*") if p.is_file()) / 2**20
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"studio run project --backend {args.backend} --method umap --limit {args.limit}  "
          f"(python {platform.python_version()}, {os.cpu_count()} cores, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())})")
    print(f"{'run':<36}{'wall s':>10}{'cpu s':>10}")
    for name, (wall, cpu) in (("first (empty numba cache)", first), ("cold (new process, cache filled)", cold),
                              ("warm (same process, second run)", warm)):
        print(f"{name:<36}{wall:>10.2f}{cpu:>10.2f}")
    print(f"{'cold / warm':<36}{cold[0] / warm[0]:>10.2f}{cold[1] / warm[1]:>10.2f}")
    print(f"{'first / warm':<36}{first[0] / warm[0]:>10.2f}{first[1] / warm[1]:>10.2f}")
    print(f"whole processes, wall s: first {first_process:.1f}, cold + warm {cold_process:.1f}; "
          f"numba cache {cache_mb:.1f} MB")


if __name__ == "__main__":
    main()
