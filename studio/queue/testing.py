"""Helpers to test queue setups without real weights (in the spirit of celery.contrib.testing).

`toy` is a tiny deterministic backend (8-d Gaussian latent, 8x8 grey images) whose options can slow it
down (`delay_ms` per image, with a progress step each), make it fail (`fail`; `fail_seed`: only when that seed
is drawn, so one job of a micro-batch is guilty), hang forever without progress (`hang`), or end its process
at once (`exit`: `os._exit(code)`); `toygpu` is the same backend declared GPU-only. `install_toy_plugin(dir)`
writes an entry-point declaration into `dir`; put `dir` on sys.path (or PYTHONPATH for worker processes) and the
registry finds them like any plugin. With STUDIO_TOY_TRACE=FILE every decode appends "pid n" to FILE (to count
how often work really ran; pid is the worker's, also when it runs jobs in a job process).

`QueueHarness` runs real worker processes against a broker (a Redis URL, or the embedded Redis) with an
isolated STUDIO_HOME, queue prefix and Redis key prefix, and cleans everything up afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from studio import contract
from studio.contract import CODEC, DECODE, ENCODE, SAMPLE, SEED, Backend, LatentSpace, ModelInfo, Point, Progress
from studio.contract import no_progress as _no_progress
from studio.errors import InputError

LATENT_DIM = 8
SIDE = 8


def _worker_pid() -> str:
    """The pid of the worker this runs in (STUDIO_WORKER_ID is host:pid:tag; a job process inherits it)."""
    parts = os.environ.get("STUDIO_WORKER_ID", "").split(":")
    return parts[1] if len(parts) >= 2 and parts[1].isdigit() else str(os.getpid())


class ToyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay_ms: int = Field(default=0, ge=0, le=60_000)  # per image: sleep, then one progress step
    fail: str | None = Field(default=None, max_length=200)  # decode raises RuntimeError(fail): a plugin error
    fail_seed: int | None = None  # drawing this seed raises RuntimeError: one guilty item in a batch
    hang: bool = False  # decode sleeps forever and never reports progress: a wedged plugin
    exit: int | None = Field(default=None, ge=0, le=255)  # decode calls os._exit(exit): a crashing plugin


class ToyBackend(Backend):
    """A linear 'decoder' from an 8-d latent to 8x8 images; deterministic and item-by-item (batch invariant)."""

    name: ClassVar[str] = "toy"
    version: ClassVar[str] = "1.0"
    description: ClassVar[str] = "Tiny deterministic test backend (studio.queue.testing)"
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE, ENCODE, DECODE})
    Options: ClassVar[type[BaseModel]] = ToyOptions
    devices: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})

    @classmethod
    def available_models(cls, settings: object) -> list[ModelInfo]:
        sha = hashlib.sha256(f"{cls.name}-{cls.version}".encode()).hexdigest()
        return [ModelInfo(name=cls.name, path="<builtin>", sha256=sha, description="random fixed weights")]

    @classmethod
    def load(cls, model: str | None, settings: object, device: str = "cpu", dtype: str = "float32") -> ToyBackend:
        return cls(contract.choose_model(cls.name, cls.available_models(settings), model), device="cpu", dtype=dtype)

    def __init__(self, model: ModelInfo, device: str = "cpu", dtype: str = "float32") -> None:
        import torch

        super().__init__(model, device, dtype)
        self.weight = torch.randn(SIDE * SIDE, LATENT_DIM, generator=torch.Generator("cpu").manual_seed(0)) / 2

    def spaces(self, options: BaseModel | None = None) -> dict[str, LatentSpace]:
        return {"z": LatentSpace("z", (LATENT_DIM,), "gaussian", frozenset({SEED, CODEC}))}

    def image_shape(self, options: BaseModel | None = None) -> tuple[int, int, int]:
        return (1, SIDE, SIDE)

    def sample_prior(self, space: str, seeds, options: BaseModel | None = None):  # noqa: ANN001, ANN201
        if isinstance(options, ToyOptions) and options.fail_seed is not None and options.fail_seed in seeds:
            raise RuntimeError(f"toy refuses seed {options.fail_seed}")
        return super().sample_prior(space, seeds, options)

    def decode(self, point: Point, options: BaseModel | None = None, progress: Progress = _no_progress):  # noqa: ANN201
        import torch

        opts = options if isinstance(options, ToyOptions) else ToyOptions()
        z = point.get("z")
        if z is None or z.dim() != 2 or z.shape[1] != LATENT_DIM:
            raise InputError(f"toy decodes a point with z of shape (N, {LATENT_DIM})")
        trace = os.environ.get("STUDIO_TOY_TRACE")
        if trace:
            with open(trace, "a") as fh:
                fh.write(f"{_worker_pid()} {len(z)}\n")
        if opts.fail:
            raise RuntimeError(opts.fail)
        if opts.exit is not None:
            os._exit(opts.exit)
        while opts.hang:
            time.sleep(3600)
        out = []
        for i, row in enumerate(z):
            if opts.delay_ms:
                time.sleep(opts.delay_ms / 1000)
            out.append(torch.tanh(self.weight @ row.float()).reshape(1, SIDE, SIDE))
            progress(i + 1, len(z), "toy decode")
        return torch.stack(out) if out else torch.zeros((0, 1, SIDE, SIDE))

    def encode(self, images, options: BaseModel | None = None, seed: int = 0,  # noqa: ANN001
               progress: Progress = _no_progress) -> Point:
        import torch

        x = torch.as_tensor(images).float().flatten(1)
        return {"z": torch.linalg.lstsq(self.weight, x.T.clamp(-0.99, 0.99).atanh()).solution.T.contiguous()}


class ToyGPUBackend(ToyBackend):
    """The toy backend declared GPU-only: it must never be routed to a CPU worker."""

    name: ClassVar[str] = "toygpu"
    devices: ClassVar[frozenset[str]] = frozenset({"cuda"})


def register(register_backend: Callable[[type], None]) -> None:
    """Entry-point hook for the toy backends."""
    register_backend(ToyBackend)
    register_backend(ToyGPUBackend)


def install_toy_plugin(directory: str | Path) -> Path:
    """Declare the toy backends as an installed plugin in `directory` (add it to sys.path / PYTHONPATH)."""
    folder = Path(directory)
    info = folder / "studio_toy_plugin-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: studio-toy-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[latent_studio.backends]\ntoy = studio.queue.testing:register\n")
    return folder


class QueueHarness:
    """Real workers for tests: an isolated home, queue prefix and (for Redis) key prefix; `close()` cleans up.

    `broker_url=None` uses the embedded Redis (started here, under the harness's STUDIO_HOME). `stack="server"` puts
    the records on a fresh PostgreSQL database (the server on 127.0.0.1:5432) and the artifacts on a real S3 server
    (moto) started here, both removed on close; "embedded" (the default) keeps SQLite and the local folder.
    """

    def __init__(self, root: str | Path, broker_url: str | None = None, plugins: str = "toy",
                 stack: str = "embedded", **settings: object) -> None:
        from studio.config import load_settings
        from studio.queue.broker import start_embedded

        self.root = Path(root)
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.stack = stack
        self.postgres = self.s3 = None
        server_env = self._start_servers() if stack == "server" else {}
        plugin_dir = install_toy_plugin(self.root / "plugins")
        self.trace = self.root / "toy-trace.txt"
        env = {"STUDIO_HOME": str(self.root / "home"), "STUDIO_QUEUE_PREFIX": self.prefix,
               "STUDIO_PLUGINS": plugins, "STUDIO_DEVICE": "cpu", "STUDIO_LEASE_S": "2", "STUDIO_PRELOAD": "none",
               "STUDIO_TOY_TRACE": str(self.trace), "STUDIO_BROKER_URL": broker_url or "",
               "PYTHONPATH": os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH", "")) if p)}
        env.update(server_env)
        env.update({f"STUDIO_{k.upper()}": str(v) for k, v in settings.items()})
        self.env = env
        self.plugin_dir = plugin_dir
        self.settings = load_settings({**os.environ, **env})
        self.embedded = None if broker_url else start_embedded(self.settings)
        self.workers: list[subprocess.Popen] = []
        self.worker: subprocess.Popen | None = None  # the worker `running` started

    def _start_servers(self) -> dict[str, str]:
        from studio.testing_services import PostgresDatabase, S3Server

        self.postgres = PostgresDatabase().create()
        self.s3 = S3Server().start()
        bucket = self.s3.create_bucket(f"studio-{self.prefix}")
        return {**self.s3.env(), "STUDIO_DATABASE_URL": self.postgres.url, "STUDIO_STORAGE_URL": f"{bucket}/store"}

    @classmethod
    @contextlib.contextmanager
    def running(cls, root: str | Path, broker_url: str | None = None, plugins: str = "toy",
                **settings: object) -> Iterator[QueueHarness]:
        """A harness, active in this process, with one worker started (`harness.worker`); closed on exit.

        The usual module fixture: `with QueueHarness.running(tmp_path_factory.mktemp("x"), ...) as h: yield h`.
        """
        harness = cls(root, broker_url=broker_url, plugins=plugins, **settings)
        try:
            with harness.active():
                harness.worker = harness.start_worker()
                yield harness
        finally:
            harness.close()

    @contextlib.contextmanager
    def active(self) -> Iterator[QueueHarness]:
        """Use the harness's environment (and toy plugin) in this process too."""
        from studio.registry import load_registry

        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update({k: v for k, v in self.env.items() if k != "PYTHONPATH"})
        sys.path.insert(0, str(self.plugin_dir))
        load_registry(refresh=True)
        try:
            yield self
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            with contextlib.suppress(ValueError):
                sys.path.remove(str(self.plugin_dir))
            load_registry(refresh=True)

    def client(self):  # noqa: ANN201 - StudioClient, imported lazily
        from studio.queue.client import StudioClient

        return StudioClient(self.settings)

    def start_worker(self, *args: str, env: dict[str, str] | None = None, timeout: float = 90.0,
                     loglevel: str = "INFO", wrapper: list[str] | None = None) -> subprocess.Popen:
        """Start `python -m studio.queue ARGS` in its own process group; wait until it advertises itself.
        `wrapper` runs it through a command that execs its arguments (e.g. `unshare -m sh -c '...; exec "$@"' sh`)."""
        from studio.queue.jobstore import JobStore

        log = open(self.root / f"worker-{len(self.workers)}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([*(wrapper or []), sys.executable, "-m", "studio.queue", "--loglevel", loglevel, *args],
                                env={**os.environ, **self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.workers.append(proc)
        store = JobStore.from_settings(self.settings)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}: {self.worker_log(proc)[-2000:]}")
            if any(w["pid"] == proc.pid for w in store.workers(60)):
                return proc
            time.sleep(0.05)
        raise TimeoutError(f"worker did not come up in {timeout} s: {self.worker_log(proc)[-2000:]}")

    def worker_log(self, proc: subprocess.Popen) -> str:
        path = self.root / f"worker-{self.workers.index(proc)}.log"
        return path.read_text() if path.exists() else ""

    def kill_worker(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process group (SIGKILL: as if its machine died)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(30)

    def _delete_amqp_queues(self) -> None:
        from kombu import Connection

        from studio.queue.routing import queue_name
        from studio.registry import load_registry

        names = {f"{self.prefix}.default"} | {queue_name(self.prefix, n, c.devices)
                                               for n, c in load_registry().backends.items()}
        with Connection(self.settings.broker_url, connect_timeout=5) as conn:
            channel = conn.channel()
            for name in names:
                with contextlib.suppress(Exception):
                    channel.queue_delete(name)
                    channel.exchange_delete(name)

    def trace_lines(self) -> list[str]:
        return self.trace.read_text().splitlines() if self.trace.exists() else []

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill_worker(proc)
        if self.embedded is not None:
            self.embedded.stop()
        elif self.settings.broker_url.startswith("amqp"):
            self._delete_amqp_queues()
        elif self.settings.broker_url.startswith("redis"):
            import redis

            client = redis.Redis.from_url(self.settings.broker_url)
            keys = list(client.scan_iter(f"{self.prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        if self.postgres is not None:
            from studio.db import shared

            shared(self.postgres.url).dispose()  # this process's pooled connections
            self.postgres.drop()
        if self.s3 is not None:
            self.s3.stop()


__all__ = ["QueueHarness", "ToyBackend", "ToyGPUBackend", "ToyOptions", "install_toy_plugin", "register"]
