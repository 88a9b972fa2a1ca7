"""Blob storage: artifacts, vectors and weights as objects under keys, in a local folder or an S3-compatible bucket.

`storage_for(settings)` opens the store named by `settings.storage_url` ("" = the folder `settings.store_path`,
"s3://bucket/prefix" = S3 at `settings.s3_endpoint_url`, credentials from the standard AWS_* variables).
Keys are relative '/'-separated names, each segment [A-Za-z0-9._-]+; a prefix (in list, delete_prefix) is a plain
string prefix as S3 has it: end it with '/' to mean a folder. boto3 is imported only when an S3 store is opened.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from studio.errors import InputError, NotFound, StudioError, clip

MAX_KEY_CHARS = 512
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,255}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MULTIPART_BYTES = 5 * 1024 * 1024  # S3's smallest part: files above this upload in parts of this size
_CHUNK = 1024 * 1024


class StorageUnavailable(StudioError):
    """The store cannot be used now (server down, bad credentials, missing bucket, full disk); one line, no secrets."""


def validate_key(key: str, what: str = "key") -> str:
    """`key` if it is a valid object key, else InputError (one line)."""
    if not isinstance(key, str) or not key:
        raise InputError(f"storage {what} must be a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise InputError(f"storage {what} {clip(key)!r} is longer than {MAX_KEY_CHARS} characters")
    for segment in key.split("/"):
        if segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            raise InputError(f"storage {what} {clip(key)!r} is invalid: use relative '/'-separated names of "
                             "[A-Za-z0-9._-] (no empty, '.' or '..' parts, no leading '/')")
    return key


def validate_prefix(prefix: str) -> str:
    """`prefix` if it is "" (everything) or a key, optionally ending in '/'; else InputError."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if isinstance(prefix, str) and prefix.endswith("/") else prefix, "prefix")
    return prefix


def redact(url: str) -> str:
    """`url` without any user:password part, clipped to one short line (safe to show)."""
    try:
        parts = urlsplit(url)
        if parts.username or parts.password:
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        url = "<unparseable url>"
    return clip(url, 100)


class Storage:
    """Objects under keys. Subclasses implement the methods; the base validates keys and prefixes."""

    url: str  # shown to users; never contains secrets

    def put(self, key: str, data: bytes) -> None:
        """Store `data` at `key`, atomically: readers see the old object or the whole new one."""
        raise NotImplementedError

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at `path` under `key`, streaming (in parts on S3 for big files)."""
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        """The object at `key`; NotFound when missing."""
        raise NotImplementedError

    def get_file(self, key: str, path: Path) -> None:
        """Stream the object at `key` to `path` (a temp file renamed into place); NotFound when missing."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove the object at `key`; a missing one is fine."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix`; how many were removed."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[tuple[str, float]]:
        """(key, last-modified unix time) of every object whose key starts with `prefix`, sorted by key."""
        raise NotImplementedError

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        """A URL anyone can GET the object from for `expires_s` seconds (S3); None where there is none (local)."""
        validate_key(key)
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def _tmp_name(name: str) -> str:
    """A temp file name beside `name` that is never a valid key segment ('~'), so listings skip it."""
    return f".{name}~{os.getpid()}~{uuid.uuid4().hex[:8]}"


def _download_target(path: Path | str) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot download to {clip(path)}: its folder does not exist")
    return path


class LocalStorage(Storage):
    """Objects as files below a root folder; writes go through a temp file and os.replace. Every path a key
    resolves to (following symlinks) must stay inside the root, or the key is refused with InputError."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _real_root(self) -> Path:
        return self.root.resolve()

    def _path(self, key: str) -> Path:
        validate_key(key)
        root = self._real_root()
        path = (root / key).resolve()
        if path != root and root not in path.parents:
            raise InputError(f"storage key {clip(key)!r} leads outside the store {self.url} (a symlink); refused")
        return path

    @contextmanager
    def _os_errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"no object {clip(key)!r} in storage {self.url}") from exc
        except OSError as exc:
            raise StorageUnavailable(f"storage {self.url}: {clip(key)!r}: {exc.strerror or type(exc).__name__}") \
                from exc

    def _write(self, key: str, fill: Any) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise InputError(f"storage key {clip(key)!r} is below an existing object in {self.url}") from exc
        if path.is_dir():
            raise InputError(f"storage key {clip(key)!r} is a folder of other objects in {self.url}")
        tmp = path.with_name(_tmp_name(path.name))
        try:
            with self._os_errors(key):
                with open(tmp, "wb") as f:  # no fsync: as durable as the embedded records (WAL, synchronous=NORMAL)
                    fill(f)
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def put(self, key: str, data: bytes) -> None:
        self._write(key, lambda f: f.write(data))

    def put_file(self, key: str, path: Path) -> None:
        if not Path(path).is_file():
            raise InputError(f"cannot upload {clip(path)}: no such file")
        with open(path, "rb") as src:
            self._write(key, lambda f: shutil.copyfileobj(src, f, _CHUNK))

    def get(self, key: str) -> bytes:
        path = self._path(key)
        with self._os_errors(key):
            return path.read_bytes()

    def get_file(self, key: str, path: Path) -> None:
        src_path = self._path(key)
        path = _download_target(path)
        tmp = path.with_name(_tmp_name(path.name))
        try:
            with self._os_errors(key), open(src_path, "rb") as src:
                with open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._os_errors(key):
            try:
                path.unlink()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return
        root = self._real_root()
        for parent in path.parents:  # prune folders left empty, up to the root
            if parent == root or root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def delete_prefix(self, prefix: str) -> int:
        keys = [key for key, _ in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)

    def list(self, prefix: str = "") -> list[tuple[str, float]]:
        validate_prefix(prefix)
        root = self._real_root()
        start = root / prefix.rsplit("/", 1)[0] if "/" in prefix else root
        if not start.is_dir() or (start != root and root not in start.resolve().parents):
            return []
        found = []
        for folder, dirs, files in os.walk(start):  # does not follow symlinked folders
            rel = Path(folder).relative_to(root).as_posix()
            dirs[:] = [d for d in dirs if _SEGMENT.fullmatch(d)]
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if not key.startswith(prefix) or not _SEGMENT.fullmatch(name) or name in (".", ".."):
                    continue
                full = Path(folder, name)
                try:
                    if full.is_symlink() and root not in full.resolve().parents:
                        continue
                    found.append((key, full.stat().st_mtime))
                except OSError:  # removed meanwhile, or a dangling link
                    continue
        return sorted(found)


class S3Storage(Storage):
    """Objects in an S3-compatible bucket under a key prefix (s3://bucket/prefix), through one boto3 client with
    bounded retries (standard mode) and short timeouts. Errors become StorageUnavailable or NotFound, one line."""

    def __init__(self, url: str, endpoint_url: str = "", *, max_attempts: int = 5, connect_timeout: float = 3.0,
                 read_timeout: float = 5.0) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        import boto3
        from botocore.config import Config

        config = Config(retries={"mode": "standard", "max_attempts": max_attempts}, connect_timeout=connect_timeout,
                        read_timeout=read_timeout, signature_version="s3v4",
                        s3={"addressing_style": "path"} if endpoint_url else None,
                        request_checksum_calculation="when_required", response_checksum_validation="when_required",
                        max_pool_connections=64)  # uploads of a micro-batch run concurrently (studio.queue)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
        self._client = boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config,
                                                      region_name=region)
        self._endpoint = redact(endpoint_url or self._client.meta.endpoint_url)
        self._bucket_checked = False

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unavailable(self, why: str) -> StorageUnavailable:
        return StorageUnavailable(f"storage {self.url} at {self._endpoint} {why}")

    def _no_bucket(self) -> StorageUnavailable:
        return StorageUnavailable(f"storage {self.url}: bucket {self.bucket} does not exist at {self._endpoint}")

    def _translate(self, exc: BaseException, key: str) -> StudioError:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, (ClientError, BotoCoreError)):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ClientError):
            error = cause.response.get("Error", {})
            code = str(error.get("Code", "")) or str(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFound(f"no object {clip(key)!r} in storage {self.url}")
            if code == "NoSuchBucket":
                return self._no_bucket()
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                        "InvalidToken"):
                return self._unavailable(f"refused access ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
            return self._unavailable(f"failed ({code}: {clip(error.get('Message', ''), 80)})")
        if isinstance(cause, NoCredentialsError):
            return self._unavailable("needs credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if isinstance(cause, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)) or \
                (isinstance(cause, BotoCoreError) and "connection" in type(cause).__name__.lower()):
            return self._unavailable(f"is unreachable ({_reason(cause)}); check STUDIO_S3_ENDPOINT_URL")
        if isinstance(cause, BotoCoreError):
            return self._unavailable(f"failed ({type(cause).__name__}: {clip(cause, 80)})")
        return self._unavailable(f"failed ({type(exc).__name__}: {clip(exc, 80)})")

    @contextmanager
    def _errors(self, key: str = "") -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        if not self._bucket_checked:
            self._check_bucket()
        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._translate(exc, key) from exc

    def _check_bucket(self) -> None:
        """Once per store: a missing bucket is StorageUnavailable, not NotFound for every key."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise self._no_bucket() from exc
            raise self._translate(exc, "") from exc
        except BotoCoreError as exc:
            raise self._translate(exc, "") from exc
        self._bucket_checked = True

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                              max_concurrency=4)

    def put(self, key: str, data: bytes) -> None:
        full = self._key(key)
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data))

    def put_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        if not Path(path).is_file():
            raise InputError(f"cannot upload {clip(path)}: no such file")
        with self._errors(key):
            self._client.upload_file(str(path), self.bucket, full, Config=self._transfer_config())

    def get(self, key: str) -> bytes:
        full = self._key(key)
        with self._errors(key):
            return self._client.get_object(Bucket=self.bucket, Key=full)["Body"].read()

    def get_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        path = _download_target(path)
        tmp = path.with_name(_tmp_name(path.name))
        try:
            with self._errors(key):
                self._client.download_file(self.bucket, full, str(tmp), Config=self._transfer_config())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            with self._errors(key):
                self._client.head_object(Bucket=self.bucket, Key=full)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def delete_prefix(self, prefix: str) -> int:
        keys = [key for key, _ in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(key)} for key in keys[start:start + 1000]]
            with self._errors(prefix):
                reply = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if reply.get("Errors"):
                first = reply["Errors"][0]
                raise self._unavailable(f"could not delete {len(reply['Errors'])} objects "
                                        f"({first.get('Code')}: {clip(first.get('Key'))})")
        return len(keys)

    def list(self, prefix: str = "") -> list[tuple[str, float]]:
        validate_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        found = []
        with self._errors(prefix):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                                 Prefix=base + prefix):
                for item in page.get("Contents", []):
                    found.append((item["Key"][len(base):], item["LastModified"].timestamp()))
        return sorted(found)

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        full = self._key(key)
        if not isinstance(expires_s, int) or not 1 <= expires_s <= 604800:
            raise InputError(f"presigned URL expiry must be 1..604800 seconds, got {clip(expires_s)}")
        with self._errors(key):
            return self._client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": full},
                                                       ExpiresIn=expires_s)


def _reason(exc: BaseException) -> str:
    """The root cause of a connection failure in a few words (e.g. "Connection refused")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        error = getattr(seen, "kwargs", {}).get("error") if hasattr(seen, "kwargs") else None
        if isinstance(error, BaseException) and error is not seen:
            seen = error
            continue
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    for phrase in ("Connection refused", "timed out", "Name or service not known", "Connection reset"):
        if phrase.lower() in text.lower():
            return phrase
    return type(exc).__name__


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of "s3://bucket/prefix"; InputError for anything else."""
    if not url.startswith("s3://") or any(c in url for c in "?#@"):
        raise InputError(f"storage URL {redact(url)!r} is invalid: use s3://bucket/prefix")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise InputError(f"storage URL {redact(url)!r} names an invalid bucket {clip(bucket)!r}: use "
                         "s3://bucket/prefix with a bucket of 3-63 characters a-z, 0-9, '.' and '-'")
    prefix = prefix.strip("/")
    if prefix:
        try:
            validate_key(prefix, "URL prefix")
        except InputError:
            raise InputError(f"storage URL {redact(url)!r} has an invalid prefix: use s3://bucket/prefix with "
                             "'/'-separated names of [A-Za-z0-9._-]") from None
    return bucket, prefix


def open_storage(url: str, local_root: Path, endpoint_url: str = "") -> Storage:
    """The store for `url`: "" is the local folder `local_root`; "s3://bucket/prefix" is S3 at `endpoint_url`."""
    url = (url or "").strip()
    if not url:
        return LocalStorage(local_root)
    if url.startswith("s3://"):
        return S3Storage(url, endpoint_url)
    raise InputError(f"storage URL {redact(url)!r} is not supported: use '' (the local store folder) "
                     "or s3://bucket/prefix")


_CACHE: dict[tuple[str, ...], Storage] = {}
_CACHE_LOCK = threading.Lock()


def storage_for(settings: Any) -> Storage:
    """The store named by settings.storage_url / store_path / s3_endpoint_url, opened once per process (also per
    AWS access key id, so a changed credential opens a new client)."""
    url = (settings.storage_url or "").strip()
    key = (url, str(settings.store_path), settings.s3_endpoint_url or "",
           os.environ.get("AWS_ACCESS_KEY_ID", "") if url else "")
    with _CACHE_LOCK:
        store = _CACHE.get(key)
        if store is None:
            store = _CACHE[key] = open_storage(url, settings.store_path, settings.s3_endpoint_url or "")
        return store
