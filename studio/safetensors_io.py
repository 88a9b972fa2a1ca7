"""Write safetensors files byte-for-byte reproducibly and atomically; validate and read them.

`safetensors.torch.save` writes its `__metadata__` map in a random order per process, so the same tensors
and metadata give different bytes (and a different sha256) from run to run. `save_weights` rewrites the
header with sorted keys, keeping the format valid for every safetensors reader.

Every reader goes through `read_header`, which checks the header before trusting it: its 8-byte length
against the file size and a sane upper bound, then the JSON, then each tensor's dtype, shape and offsets
against the data that follows. A file that fails raises `CorruptWeights` (a StudioError, one line, naming
the file), never a MemoryError from a huge length, so a worker reports it instead of retrying it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from studio.errors import InputError, StudioError

if TYPE_CHECKING:
    import torch

    from studio.contract import ModelInfo

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "C64": 8, "F64": 8, "I64": 8, "U64": 8}


class CorruptWeights(InputError):
    """A weights file that is not a valid safetensors file (the message says why, naming the file)."""


def canonical_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors serialisation of `tensors` with a header in sorted-key order."""
    from safetensors.torch import save

    raw = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8-byte alignment with spaces
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = canonical_bytes(tensors, metadata)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _check_tensor(key: str, entry: object, data_bytes: int) -> str | None:
    """Why a header entry is not a valid tensor description, or None."""
    if not isinstance(entry, dict):
        return f"entry {key!r} is not an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        return f"tensor {key!r} has no dtype"
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        return f"tensor {key!r} has an invalid shape"
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        return f"tensor {key!r} has invalid data offsets"
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes:
        return f"tensor {key!r} lies outside the file (bytes {begin}-{end} of {data_bytes})"
    need = math.prod(shape) * DTYPE_BYTES.get(dtype, 0)
    if dtype in DTYPE_BYTES and end - begin != need:
        dims = "x".join(map(str, shape)) or "scalar"
        return f"tensor {key!r} takes {end - begin} bytes, but {dtype} {dims} needs {need}"
    return None


def read_header(path: str | Path) -> dict:
    """The validated JSON header of a safetensors file; CorruptWeights (one line, naming the file) when the file
    is not one: a length beyond the file or MAX_HEADER_BYTES, JSON that is not an object, a malformed metadata
    map, or a tensor whose dtype, shape or offsets do not fit the data. OSError when it cannot be read at all."""
    path = Path(path)
    label = f"weights file {path.name!r} is not readable as safetensors"
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise CorruptWeights(f"{label}: it has {size} bytes, fewer than the 8-byte header length")
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise CorruptWeights(f"{label}: its header length {n} exceeds the file size ({size} bytes)")
        if n > MAX_HEADER_BYTES:
            raise CorruptWeights(f"{label}: its header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CorruptWeights(f"{label}: its header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise CorruptWeights(f"{label}: its header is not a JSON object")
    metadata = header.get("__metadata__", {})
    if metadata is not None and (not isinstance(metadata, dict)
                                 or not all(isinstance(v, str) for v in metadata.values())):
        raise CorruptWeights(f"{label}: its __metadata__ is not a map of strings")
    data_bytes = size - 8 - n
    for key, entry in header.items():
        if key != "__metadata__":
            problem = _check_tensor(key, entry, data_bytes)
            if problem:
                raise CorruptWeights(f"{label}: {problem}"[:300])
    return header


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` map of a safetensors file, read from its validated header alone."""
    return dict(read_header(path).get("__metadata__") or {})


def load_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, after `read_header` has validated it; CorruptWeights when the
    safetensors library still refuses it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_header(path)
    try:
        return load_file(str(path), device=device)
    except SafetensorError as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CorruptWeights(f"weights file {Path(path).name!r} is not readable as safetensors: {first}") from None


def weights_model_info(name: str, path: str | Path, description: str,
                       describe: Callable[[dict[str, str]], tuple[dict, str]]) -> ModelInfo:
    """The ModelInfo of a safetensors weights file: its sha256, and what `describe(metadata)` makes of its
    validated metadata (the listing's extra fields and an error, "" when the model can load).

    A file that cannot be read or is not valid safetensors is still listed, with the reason (one line, naming the
    file) as its `error` and no extra fields: loading it is refused, and the backend's other models keep serving.
    """
    from studio.contract import ModelInfo
    from studio.hashing import file_sha256

    path = Path(path)
    try:
        sha256 = file_sha256(path)
    except OSError as exc:
        return ModelInfo(name=name, path=str(path), sha256="", description=description,
                         error=f"weights file {path.name!r} cannot be read ({type(exc).__name__})")
    try:
        extra, error = describe(read_metadata(path))
    except StudioError as exc:
        extra, error = {}, str(exc)
    except OSError as exc:
        extra, error = {}, f"weights file {path.name!r} cannot be read ({type(exc).__name__})"
    return ModelInfo(name=name, path=str(path), sha256=sha256, description=description, extra=extra, error=error)
