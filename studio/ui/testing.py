"""Helpers to test and measure a served UI (as studio.queue.testing is for the queue).

- `bomb_png_bytes(width, height)` / `bomb_png(path, width, height)`: a tiny PNG whose header claims a huge image
  (13000x13000 grey zeros is ~164 KB on disk, 169 MB once decoded).
- `peak_mb(pid)`: a process's peak resident memory (VmHWM), in MB.
- `free_port()`: a free TCP port on 127.0.0.1.
- `ui_env(root, plugin_dir, **settings)` and `served_ui(env, port)`: the UI served by a separate process (its
  memory can be measured alone), stopped afterwards.
- `served_in_process(harness)`: a worker, a client and the UI served in this process, on a
  studio.queue.testing.QueueHarness.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from studio.testing_services import free_port, stop_process_group

if TYPE_CHECKING:
    from studio.queue.testing import QueueHarness

UI_SCRIPT = """
import sys, time
from studio.config import load_settings
from studio.ui import serve
demo, url = serve(load_settings(), port=int(sys.argv[1]))
print("URL", url, flush=True)
while True:
    time.sleep(1)
"""


def bomb_png_bytes(width: int, height: int) -> bytes:
    """A valid grey PNG of width x height zeros, compressed row by row: tiny on disk, huge once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def bomb_png(path: str | Path, width: int, height: int) -> Path:
    """Write `bomb_png_bytes(width, height)` to `path` and return it."""
    path = Path(path)
    path.write_bytes(bomb_png_bytes(width, height))
    return path


def peak_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of process `pid` so far, in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def ui_env(root: str | Path, plugin_dir: str | Path | None = None, **settings: object) -> dict[str, str]:
    """The environment of a UI process: os.environ plus STUDIO_HOME and GRADIO_TEMP_DIR under `root`, no Gradio
    analytics, `plugin_dir` first on PYTHONPATH, and each setting as STUDIO_<NAME> (e.g. plugins="toy")."""
    root = Path(root)
    path = [str(plugin_dir)] if plugin_dir is not None else []
    env = {**os.environ, "STUDIO_HOME": str(root / "home"), "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(root / "gradio"),
           "PYTHONPATH": os.pathsep.join(p for p in (*path, os.environ.get("PYTHONPATH", "")) if p)}
    env.update({f"STUDIO_{name.upper()}": str(value) for name, value in settings.items()})
    return env


class ServedUI(NamedTuple):
    """A UI served by a separate process: its URL (ending in '/') and its pid."""

    url: str
    pid: int


@contextlib.contextmanager
def served_ui(env: dict[str, str], port: int, timeout: float = 120.0) -> Iterator[ServedUI]:
    """Serve the UI (UI_SCRIPT) in a new process group with `env` on 127.0.0.1:`port`; stop it afterwards.

    Raises RuntimeError when it does not print its URL within `timeout` seconds.
    """
    proc = subprocess.Popen([sys.executable, "-c", UI_SCRIPT, str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("URL"):
            raise RuntimeError(f"the UI did not start (exit code {proc.poll()})")
        yield ServedUI(f"http://127.0.0.1:{port}/", proc.pid)
    finally:
        stop_process_group(proc, 20.0)
        proc.stdout.close()


class LocalUI(NamedTuple):
    """The UI served in this process: the Gradio app, its URL and the queue client it submits with."""

    demo: Any
    url: str
    client: Any


@contextlib.contextmanager
def served_in_process(harness: QueueHarness) -> Iterator[LocalUI]:
    """Inside `harness.active()`: start one worker and a client, and serve the UI here on a free port.

    Stops the UI and closes the client afterwards; the worker and the harness stay the caller's (harness.close()).
    """
    from studio.ui import serve

    harness.start_worker()
    client = harness.client()
    try:
        demo, url = serve(harness.settings, port=free_port(), client=client)
        try:
            yield LocalUI(demo, url, client)
        finally:
            demo.close()
    finally:
        client.close()
