"""Images across the contract: PIL <-> NCHW float in [-1, 1], checked uploads, grids, strips, GIFs."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from studio.errors import InputError

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


def open_checked(data: bytes | str | Path, max_bytes: int, max_pixels: int, what: str = "image") -> Image.Image:
    """Open an image from bytes or a path, refusing oversize, corrupt or non-image input."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise InputError(f"{what} {str(path)!r} does not exist or is not a file")
        if path.stat().st_size > max_bytes:
            raise InputError(f"{what} {str(path)!r} is {path.stat().st_size} bytes; the limit is {max_bytes} bytes")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise InputError(f"{what} is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        im = Image.open(io.BytesIO(data))
        if im.width * im.height > max_pixels:
            raise InputError(f"{what} is {im.width}x{im.height} pixels; the limit is {max_pixels} pixels")
        im.load()
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{what} is not a readable image ({type(exc).__name__}: {exc})") from None
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
    """Tile images (same size) into a grid; a single row when cols is None and n <= 16."""
    import math

    if not images:
        raise ValueError("grid needs at least one image")
    n = len(images)
    cols = cols or (n if n <= 16 else math.ceil(math.sqrt(n)))
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
