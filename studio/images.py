"""Images across the contract: PIL <-> NCHW float in [-1, 1], checked uploads, grids, strips, GIFs."""

from __future__ import annotations

import base64
import io
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from studio.errors import InputError, clip

if TYPE_CHECKING:
    import torch


def to_tensor(images: list[Image.Image], shape: tuple[int, int, int]) -> torch.Tensor:
    """PIL images -> NCHW float32 in [-1, 1], converted and resized to (C, H, W)."""
    import numpy as np
    import torch

    c, h, w = shape
    mode = "L" if c == 1 else "RGB"
    arrays = []
    for im in images:
        im = im.convert(mode)
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.LANCZOS)
        a = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
        arrays.append(a[None] if c == 1 else a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays))


def _one_pil(x: object) -> Image.Image:
    import numpy as np

    if x.shape[0] == 1:
        return Image.fromarray(x[0], "L")
    return Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0)))


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """NCHW in [-1, 1] -> list of PIL images (L or RGB), rounded to uint8."""

    import torch

    a = ((images.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    return [_one_pil(x) for x in a]


FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # the only formats PIL may open (EPS would run Ghostscript)
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")


def _reason(exc: BaseException) -> str:
    """Why PIL could not read an image, in words: no Python reprs (`<_io.BytesIO object at 0x...>`)."""
    if isinstance(exc, UnidentifiedImageError):
        return f"unknown or refused format; accepted: {', '.join(FORMATS)}"
    text = _REPR.sub("the data", str(exc))
    return clip(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, 80)


def _shown(path: Path) -> str:
    """A path for a message: its name, cut short (the full path may be long or private)."""
    return clip(path.name or str(path), 60)


def check_image_header(
    source: bytes | str | Path, max_pixels: int, max_bytes: int, what: str = "image"
) -> tuple[int, int]:
    """Check an image's size in bytes and its width x height from the header alone, and return (width, height).

    No pixel is decoded: PIL's lazy open reads only the header, so a tiny file that claims 13000x13000 pixels is
    refused before it costs memory. Raises a one-line InputError naming `what` on a missing file, too many bytes,
    too many pixels, or anything PIL cannot identify as one of FORMATS (no other PIL plugin is ever tried).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        what = f"{what} {_shown(path)!r}"  # the file is named once, in every message
        if not path.is_file():
            raise InputError(f"{what}: does not exist or is not a file")
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"{what}: {size} bytes; the limit is {max_bytes} bytes")
        opener: object = path
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > max_bytes:
            raise InputError(f"{what}: {len(source)} bytes; the limit is {max_bytes} bytes")
        opener = io.BytesIO(bytes(source))
    else:
        raise InputError(f"{what}: expected image bytes or a file path, got a Python {type(source).__name__} object")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            with Image.open(opener, formats=FORMATS) as im:  # type: ignore[arg-type]
                width, height = im.size
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{found.group(1)} pixels" if found else "too many pixels"
        raise InputError(f"{what}: {count}; the limit is {max_pixels} pixels") from None
    except _UNREADABLE as exc:
        raise InputError(f"{what}: not a readable image ({_reason(exc)})") from None
    if width * height > max_pixels:
        raise InputError(f"{what}: {width}x{height} pixels; the limit is {max_pixels} pixels")
    return width, height


def open_checked(data: bytes | str | Path, max_bytes: int, max_pixels: int, what: str = "image") -> Image.Image:
    """Open an image from bytes or a path, refusing oversize, corrupt or non-image input.

    The header is checked first (`check_image_header`): pixels are decoded only once the size is known to fit.
    """
    check_image_header(data, max_pixels, max_bytes, what)
    if isinstance(data, (str, Path)):
        what = f"{what} {_shown(Path(data))!r}"
    raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else bytes(data)
    try:
        im = Image.open(io.BytesIO(raw), formats=FORMATS)
        im.load()
    except _UNREADABLE as exc:
        raise InputError(f"{what}: not a readable image ({_reason(exc)})") from None
    return im


def describe_conversion(im: Image.Image, shape: tuple[int, int, int]) -> str | None:
    """A note saying how `im` will be converted to fit `shape`, or None when it already fits."""
    c, h, w = shape
    mode = "L" if c == 1 else "RGB"
    notes = []
    if im.mode != mode:
        notes.append(f"mode {im.mode} -> {mode}")
    if im.size != (w, h):
        notes.append(f"size {im.width}x{im.height} -> {w}x{h}")
    return ", ".join(notes) or None


def png_bytes(im: Image.Image, pnginfo: object | None = None) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", pnginfo=pnginfo)
    return buf.getvalue()


def b64_png(im: Image.Image) -> str:
    return base64.b64encode(png_bytes(im)).decode("ascii")


def from_b64(data: str, max_bytes: int, max_pixels: int, what: str = "image") -> Image.Image:
    try:
        raw = base64.b64decode(data, validate=True)
    except (ValueError, TypeError):
        raise InputError(f"{what} is not valid base64") from None
    return open_checked(raw, max_bytes, max_pixels, what)


def grid(images: list[Image.Image], cols: int | None = None, pad: int = 2, bg: int = 32) -> Image.Image:
    """Tile images (same size) into a grid: `cols` columns, or a near-square layout when cols is None
    (ceil(sqrt(n)) columns: 16 images are 4x4, 3 are 2x2 with one empty cell)."""
    import math

    if not images:
        raise ValueError("grid needs at least one image")
    n = len(images)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    w, h = images[0].size
    mode = "RGB" if any(i.mode == "RGB" for i in images) else "L"
    size = (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad)
    out = Image.new(mode, size, (bg,) * 3 if mode == "RGB" else bg)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out.paste(im.convert(mode), (pad + c * (w + pad), pad + r * (h + pad)))
    return out


def gif_bytes(frames: list[Image.Image], ms_per_frame: int = 120, bounce: bool = True, scale: int = 1) -> bytes:
    """An animated, looping GIF of the frames (there and back when `bounce`)."""
    seq = frames + frames[-2:0:-1] if bounce and len(frames) > 2 else list(frames)
    if scale > 1:
        seq = [f.resize((f.width * scale, f.height * scale), Image.Resampling.NEAREST) for f in seq]
    seq = [f.convert("RGB") for f in seq]
    buf = io.BytesIO()
    seq[0].save(buf, format="GIF", save_all=True, append_images=seq[1:], duration=ms_per_frame, loop=0)
    return buf.getvalue()
