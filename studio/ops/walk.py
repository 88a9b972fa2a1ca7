"""A multi-keyframe walk as one resumable job, for any backend.

Between consecutive keyframe points the walk interpolates every space of the point: spaces with a
Gaussian prior (where seeds live) by `method` (slerp or lerp), all other spaces (conditions, codec
latents) by lerp. With K keyframes and F frames per segment it renders (K - 1) * F + 1 frames: each
segment contributes t = 0, 1/F, ..., (F-1)/F and the last frame is the last keyframe itself.

Frames are written as `frame_00000.png`, ... into `out_dir`, each atomically (a temporary file renamed
into place), next to `walk.json`, a manifest with the walk's fingerprint. Run the same walk again into
the same folder and every complete frame is kept, so an interrupted walk continues where it stopped; a
folder that holds another walk's frames is refused rather than mixed.

`write_gif` turns the frames into a looping GIF (the default: Pillow only); `write_mp4` into an H.264 MP4 through
PyAV (the `video` extra), with a one-line error naming the extra when PyAV is not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from studio.contract import Backend, Point, Progress, no_progress
from studio.errors import InputError
from studio.ops.interpolate import interpolate

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from pydantic import BaseModel

FRAME_NAME = "frame_{:05d}.png"
MANIFEST = "walk.json"
METHODS = ("slerp", "lerp")


def frame_count(n_keyframes: int, frames_per_segment: int) -> int:
    """How many frames a walk over `n_keyframes` renders."""
    return (n_keyframes - 1) * frames_per_segment + 1


def frame_position(index: int, n_keyframes: int, frames_per_segment: int) -> tuple[int, float]:
    """(segment, t) of frame `index`: it lies at t in [0, 1] between keyframes segment and segment + 1."""
    segment = min(index // frames_per_segment, n_keyframes - 2)
    return segment, (index - segment * frames_per_segment) / frames_per_segment


def _unbatched(keyframes: Sequence[Point], backend: Backend, options: BaseModel | None) -> list[dict]:
    """Keyframes as dicts of single latents of the declared shapes (a batch of one is unwrapped)."""
    spaces = backend.spaces(options)
    names = set(keyframes[0])
    out = []
    for k, point in enumerate(keyframes):
        if set(point) != names:
            raise InputError(f"keyframe {k} has spaces {sorted(point)} but keyframe 0 has {sorted(names)}")
        single = {}
        for name, tensor in point.items():
            if name not in spaces:
                raise InputError(f"keyframe {k} has space {name!r}, unknown to backend {backend.name!r} "
                                 f"(it has {sorted(spaces)})")
            shape = spaces[name].shape
            if tuple(tensor.shape) == (1, *shape):
                tensor = tensor[0]
            if tuple(tensor.shape) != shape:
                raise InputError(f"keyframe {k}[{name!r}] has shape {tuple(tensor.shape)}; expected {shape} or "
                                 f"(1, {', '.join(map(str, shape))})")
            single[name] = tensor.detach().float().cpu()
        out.append(single)
    return out


def walk_point(keyframes: Sequence[dict], index: int, frames_per_segment: int, method: str,
               priors: dict[str, str]) -> dict[str, torch.Tensor]:
    """The point (unbatched) of frame `index`: Gaussian-prior spaces by `method`, others by lerp."""
    import torch

    segment, t = frame_position(index, len(keyframes), frames_per_segment)
    a, b = keyframes[segment], keyframes[segment + 1]
    point = {}
    for name in a:
        if t == 0.0 or torch.equal(a[name], b[name]):
            point[name] = a[name]
        elif t == 1.0:
            point[name] = b[name]
        else:
            point[name] = interpolate(a[name], b[name], [t], method if priors[name] == "gaussian" else "lerp")[0]
    return point


def walk_fingerprint(backend: Backend, keyframes: Sequence[dict], frames_per_segment: int, method: str,
                     options: BaseModel | None) -> str:
    """A hash of everything that decides the frames: backend, model, options, method, keyframes."""
    digest = hashlib.sha256()
    options_json = options.model_dump_json() if options is not None else "null"
    digest.update(json.dumps([backend.name, backend.version, backend.model.sha256, method, frames_per_segment,
                              options_json, len(keyframes)]).encode())
    for point in keyframes:
        for name in sorted(point):
            digest.update(f"{name}{tuple(point[name].shape)}".encode())
            digest.update(point[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def is_complete_png(path: Path) -> bool:
    """True when `path` is a PNG whose every chunk is present and passes its CRC (up to IEND)."""
    from PIL import Image

    try:
        with Image.open(path, formats=("PNG",)) as im:
            if im.format != "PNG":
                return False
            im.verify()
        return True
    except Exception:  # noqa: BLE001 - any failure means "render it again"
        return False


def _claim_folder(out_dir: Path, fingerprint: str, total: int, manifest: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text()).get("fingerprint")
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous != fingerprint:
            raise InputError(f"{out_dir} holds frames of a different walk; choose a new folder or empty this one")
    elif any(out_dir.glob("frame_*.png")):
        raise InputError(f"{out_dir} holds frames without a {MANIFEST}; choose a new folder or empty this one")
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**manifest, "fingerprint": fingerprint, "frames": total}, indent=1))
    os.replace(tmp, manifest_path)


def walk(backend: Backend, keyframes: Sequence[Point], frames_per_segment: int, method: str = "slerp",
         options: BaseModel | None = None, out_dir: str | Path = ".", progress: Progress = no_progress,
         record_for: Callable[[int], dict] | None = None, batch_size: int = 1,
         fingerprint: str | None = None) -> list[Path]:
    """Render a walk through `keyframes` into `out_dir` and return the paths of all its frames.

    `record_for(i)` gives the reproducibility record written into frame i (studio.record.save_png);
    `batch_size` frames are decoded per backend call; `fingerprint` overrides the computed identity of
    the walk (e.g. a job spec hash) that decides whether existing frames may be reused.
    `progress(done, total, message)` is called after every frame and during each decode; it may raise
    studio.errors.Cancelled, which stops the walk with every finished frame kept.
    """
    import torch

    from studio.images import to_pil
    from studio.record import save_png

    if method not in METHODS:
        raise InputError(f"unknown interpolation method {method!r} (use slerp or lerp)")
    if len(keyframes) < 2:
        raise InputError(f"a walk needs at least 2 keyframes (got {len(keyframes)})")
    if frames_per_segment < 1:
        raise InputError(f"frames_per_segment must be at least 1 (got {frames_per_segment})")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1 (got {batch_size})")
    singles = _unbatched(keyframes, backend, options)
    priors = {name: backend.spaces(options)[name].prior for name in singles[0]}
    total = frame_count(len(singles), frames_per_segment)
    out_dir = Path(out_dir)
    fingerprint = fingerprint or walk_fingerprint(backend, singles, frames_per_segment, method, options)
    _claim_folder(out_dir, fingerprint, total, {"backend": backend.name, "model": backend.model.name,
                                                "method": method, "keyframes": len(singles),
                                                "frames_per_segment": frames_per_segment})
    paths = [out_dir / FRAME_NAME.format(i) for i in range(total)]
    pending = [i for i, p in enumerate(paths) if not is_complete_png(p)]
    done = total - len(pending)
    progress(done, total, f"{done} of {total} frames already rendered")
    for start in range(0, len(pending), batch_size):
        batch = pending[start:start + batch_size]
        frames = [walk_point(singles, i, frames_per_segment, method, priors) for i in batch]
        point = {name: torch.stack([f[name] for f in frames]) for name in frames[0]}

        def decode_progress(step: int, steps: int, message: str = "", preview: object = None,
                            _done: int = done, _first: int = batch[0]) -> None:
            progress(_done, total, f"frame {_first + 1}/{total}: {message} {step}/{steps}".replace("  ", " "))

        images = backend.decode(point, options, progress=decode_progress)
        for i, image in zip(batch, to_pil(images), strict=True):
            tmp = paths[i].with_suffix(".png.tmp")
            if record_for is not None:
                save_png(image, tmp, record_for(i))
            else:
                image.save(tmp, format="PNG")
            os.replace(tmp, paths[i])
            done += 1
            progress(done, total, f"frame {i + 1}/{total}")
    return paths


def write_gif(paths: Sequence[str | Path], out: str | Path, ms_per_frame: int = 80, bounce: bool = False,
              scale: int = 1) -> Path:
    """An animated, looping GIF of the frames at `paths`."""
    from PIL import Image

    from studio.images import gif_bytes

    if not paths:
        raise InputError("a GIF needs at least one frame")
    frames = []
    for p in paths:
        with Image.open(p, formats=("PNG",)) as im:
            frames.append(im.convert("RGB"))
    out = Path(out)
    out.write_bytes(gif_bytes(frames, ms_per_frame=ms_per_frame, bounce=bounce, scale=scale))
    return out


MP4_MISSING = 'MP4 needs PyAV, which is not installed: pip install "latent-studio[video]" (GIF needs nothing)'


def mp4_available() -> bool:
    """True when PyAV (`av`, the `video` extra) can be imported; GIF walks never need it."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _even(image: Image.Image) -> Image.Image:
    """`image` padded by its edge pixels to even sides, as H.264's 4:2:0 chroma needs."""
    from PIL import Image

    w, h = image.size
    if w % 2 == 0 and h % 2 == 0:
        return image
    out = Image.new(image.mode, (w + w % 2, h + h % 2))
    out.paste(image, (0, 0))
    if w % 2:
        out.paste(image.crop((w - 1, 0, w, h)), (w, 0))
    if h % 2:
        out.paste(out.crop((0, h - 1, w + w % 2, h)), (0, h))
    return out


def write_mp4(paths: Sequence[str | Path], out: str | Path, fps: int = 12, scale: int = 1, crf: int = 18) -> Path:
    """An H.264 MP4 (yuv420p, plays everywhere) of the frames at `paths`, through PyAV; `scale` enlarges each frame
    by pixel repetition (tiny 28x28 frames play badly otherwise), `crf` is x264's quality (0 lossless .. 51).

    Raises InputError (one line) when PyAV is not installed (see mp4_available), or for no frames or bad values.
    """
    if not paths:
        raise InputError("an MP4 needs at least one frame")
    if not 1 <= fps <= 120 or not 1 <= scale <= 16 or not 0 <= crf <= 51:
        raise InputError(f"MP4 settings out of range: fps {fps} (1-120), scale {scale} (1-16), crf {crf} (0-51)")
    if not mp4_available():
        raise InputError(MP4_MISSING)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        _encode_mp4(paths, tmp, fps, scale, crf)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _encode_mp4(paths: Sequence[str | Path], out: Path, fps: int, scale: int, crf: int) -> None:
    import av
    import numpy as np
    from PIL import Image

    with av.open(str(out), mode="w", format="mp4") as container:
        stream = None
        for p in paths:
            with Image.open(p, formats=("PNG",)) as im:
                frame = im.convert("RGB")
            if scale > 1:
                frame = frame.resize((frame.width * scale, frame.height * scale), Image.Resampling.NEAREST)
            frame = _even(frame)
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height = frame.size
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": "medium"}
            elif frame.size != (stream.width, stream.height):
                raise InputError(f"frame {p} is {frame.size[0]}x{frame.size[1]}; the first was "
                                 f"{stream.width}x{stream.height}")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)
