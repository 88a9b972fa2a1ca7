"""Real services for tests and benches (no mocks): an S3 server (moto_server, in its own process) and a fresh
PostgreSQL database on the local server.

- `S3Server()`: start/stop/pause/resume/restart a moto_server on 127.0.0.1; `env()` gives the variables a process
  needs to use it; `create_bucket(name)` returns "s3://name".
- `PostgresDatabase()`: create/drop a uniquely named database on 127.0.0.1:5432 (trust auth, user postgres), and
  `terminate_connections()` to simulate a server-side disconnect.
- `postgres_available()`, `s3_server_available()`: for clear skip or fail messages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

DUMMY_KEY = "testing"
REGION = "us-east-1"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """Stop the process group `proc` leads: SIGTERM (and SIGCONT, so a paused one can die of it), then SIGKILL after
    `timeout_s`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGCONT)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout_s)


def moto_server_path() -> str | None:
    """The moto_server executable next to this Python, else on PATH; None when moto[server] is not installed."""
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


def s3_server_available() -> bool:
    """Whether an S3Server can start here (moto[server] and boto3 installed)."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        return False
    return moto_server_path() is not None


def postgres_available(admin_url: str = POSTGRES_ADMIN_URL) -> bool:
    """Whether the PostgreSQL server at `admin_url` accepts a connection within 2 s (and psycopg is installed)."""
    try:
        import psycopg

        with psycopg.connect(admin_url, connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


class S3Server:
    """moto_server (a real S3 HTTP API, objects in memory) in its own process on 127.0.0.1:<port>."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._log = Path(tempfile.gettempdir()) / f"moto-{self.port}-{uuid.uuid4().hex[:6]}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 30.0) -> S3Server:
        """Start the server and wait until it answers HTTP; safe after stop() (same port, no objects)."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        exe = moto_server_path()
        if exe is None:
            raise RuntimeError("moto_server is not installed: pip install 'moto[server]'")
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self._log.read_text(errors="replace")[-500:]
                self._proc = None
                raise RuntimeError(f"moto_server on port {self.port} exited at start: {tail}")
            if self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server on port {self.port} did not answer within {timeout_s:.0f} s")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; its in-memory objects are gone."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process_group(proc, 5.0)

    def pause(self) -> None:
        """SIGSTOP: an outage (connections hang) that keeps the objects."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        """stop() then start() on the same port (the objects are gone)."""
        self.stop()
        self.start()

    def env(self) -> dict[str, str]:
        """The variables a process needs to use this server: dummy AWS credentials, region, endpoint."""
        return {"AWS_ACCESS_KEY_ID": DUMMY_KEY, "AWS_SECRET_ACCESS_KEY": DUMMY_KEY, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true", "STUDIO_S3_ENDPOINT_URL": self.endpoint_url}

    def client(self) -> Any:
        """A boto3 S3 client of this server, with the dummy credentials."""
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                                              aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_KEY)

    def create_bucket(self, name: str) -> str:
        """Create bucket `name`; returns "s3://name"."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.unlink(missing_ok=True)


class PostgresDatabase:
    """A fresh database (prefix + random hex) on the local PostgreSQL server; `url` is its postgresql:// URL."""

    def __init__(self, prefix: str = "studio_test", admin_url: str = POSTGRES_ADMIN_URL) -> None:
        self.name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.admin_url = admin_url
        base = admin_url.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)

    def create(self) -> PostgresDatabase:
        """CREATE DATABASE."""
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        return self

    def terminate_connections(self) -> int:
        """pg_terminate_backend of every other backend connected to this database; how many were ended."""
        with self._admin() as conn:
            rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = %s AND pid <> pg_backend_pid()", (self.name,)).fetchall()
        return sum(1 for (ok,) in rows if ok)

    def drop(self) -> None:
        """End its connections, then DROP DATABASE (a missing one is fine)."""
        from psycopg import sql

        self.terminate_connections()
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))

    def exists(self) -> bool:
        """Whether the database exists on the server."""
        with self._admin() as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.name,)).fetchone() is not None

    def __enter__(self) -> PostgresDatabase:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.drop()
