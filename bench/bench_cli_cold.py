"""Cold start of the thin CLI commands: `studio submit sample ... --json`, `studio plugins --json`, `studio --help`.

Each command runs in a fresh process (the venv's `studio` script, as a user runs it), several rounds, the commands
interleaved so that a change of machine load hits them alike. Reported per command: the median wall time, the median
CPU time (user + sys of the child: less sensitive to other load on the machine), both as ratios to `python -c pass`,
and whether torch was imported. `submit` queues on a real broker (a Redis URL, default the local server; `--embedded`
starts the embedded Redis instead) under a throw-away STUDIO_HOME and queue prefix; no worker runs, and the queued
jobs are removed at the end.

    .venv/bin/python bench/bench_cli_cold.py                 # 7 rounds
    .venv/bin/python bench/bench_cli_cold.py --rounds 11 --embedded
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PROBE = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('TORCH=%s\\n' % ('torch' in sys.modules))); "
         "sys.argv[0] = 'studio'; from studio.cli import main; main()")


def commands(studio: str) -> dict[str, list[str]]:
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "studio --help": [studio, "--help"],
        "studio plugins --json": [studio, "plugins", "--json"],
        "studio submit sample --backend vae --n 4 --seed 0 --json": [studio, "submit", "sample", "--backend", "vae",
                                                                      "--n", "4", "--seed", "0", "--json"],
        "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch"],
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one run; fails loudly when the command fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def imports_torch(argv: list[str], env: dict[str, str]) -> str:
    if Path(argv[0]).name != "studio":
        return "yes" if "torch" in argv[-1] else "no"
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv[1:]], env=env, capture_output=True, text=True,
                          timeout=300)
    return "yes" if "TORCH=True" in proc.stderr else "no"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="runs of each command (median reported)")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/14", help="broker for submit")
    parser.add_argument("--embedded", action="store_true", help="use the embedded Redis instead of --broker-url")
    args = parser.parse_args()

    from studio.queue.testing import QueueHarness

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as root:
        harness = QueueHarness(root, broker_url=None if args.embedded else args.broker_url)
        try:
            env = {**os.environ, **harness.env, "STUDIO_PLUGINS": ""}  # every installed plugin, as users have them
            env.pop("PYTHONPATH", None)  # the harness's toy plugin is not installed for users
            table = commands(str(BIN / "studio"))
            load_before = Path("/proc/loadavg").read_text().split()[:3]
            for argv in table.values():  # warm the OS file cache once, so every round is equally "cold" for Python
                timed(argv, env)
            walls: dict[str, list[float]] = {name: [] for name in table}
            cpus: dict[str, list[float]] = {name: [] for name in table}
            for i in range(args.rounds):
                for name, argv in table.items():
                    wall, cpu = timed(argv, env)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
                print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
            load_after = Path("/proc/loadavg").read_text().split()[:3]
            torch_used = {name: imports_torch(argv, env) for name, argv in table.items()}
        finally:
            harness.close()

    base_wall = statistics.median(walls["python -c pass"])
    base_cpu = statistics.median(cpus["python -c pass"])
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load average (1/5/15 min) {' '.join(load_before)} before, {' '.join(load_after)} after; "
          f"median of {args.rounds} cold runs\n")
    print("| command | wall (s) | wall / `python -c pass` | CPU (s) | CPU / `python -c pass` | imports torch |")
    print("|---|---:|---:|---:|---:|---|")
    for name in table:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        print(f"| `{name}` | {wall:.2f} | {wall / base_wall:.1f}x | {cpu:.2f} | {cpu / base_cpu:.1f}x | "
              f"{torch_used[name]} |")


if __name__ == "__main__":
    main()
