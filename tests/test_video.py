"""MP4 walks through PyAV (the `video` extra): a real walk of the shipped VAE written as GIF and MP4, the MP4 read
back with PyAV; and without PyAV, one clear line instead of silence."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from studio.errors import InputError
from studio.ops.walk import MP4_MISSING, mp4_available, walk, write_gif, write_mp4

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FRAMES_PER_SEGMENT = 6
SCALE = 4


@pytest.fixture(scope="module")
def vae_walk(tmp_path_factory):
    """The frames of a 3-keyframe walk of the shipped MNIST VAE (13 frames of 28x28)."""
    from studio.config import load_settings
    from studio.points import random_point
    from studio.registry import get_backend_class

    backend = get_backend_class("vae").load(None, load_settings())
    keyframes = [random_point(backend, [seed]) for seed in (1, 2, 3)]
    return walk(backend, keyframes, FRAMES_PER_SEGMENT, "slerp", None, tmp_path_factory.mktemp("walk") / "frames")


def _mp4_frames(path) -> tuple[list[np.ndarray], object]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = (stream.codec_context.name, stream.width, stream.height, container.format.name)
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], info


def _gif_frames(path) -> list[np.ndarray]:
    out = []
    with Image.open(path) as im:
        for i in range(im.n_frames):
            im.seek(i)
            out.append(np.asarray(im.convert("RGB")))
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_the_video_extra_is_installed():
    assert mp4_available(), 'PyAV is missing: `pip install -e ".[dev,video]"` (make setup installs it)'


def test_a_walk_as_mp4_has_every_frame_of_its_gif(vae_walk, tmp_path):
    gif = write_gif(vae_walk, tmp_path / "walk.gif", scale=SCALE)  # the default format: no PyAV involved
    mp4 = write_mp4(vae_walk, tmp_path / "walk.mp4", fps=12, scale=SCALE)
    assert mp4 == tmp_path / "walk.mp4" and not list(tmp_path.glob("*.tmp"))
    assert mp4.read_bytes()[4:8] == b"ftyp" and 500 < mp4.stat().st_size < 200_000
    video, (codec, width, height, container) = _mp4_frames(mp4)
    stills = _gif_frames(gif)
    assert codec == "h264" and "mp4" in container and (width, height) == (28 * SCALE, 28 * SCALE)
    assert len(video) == len(stills) == len(vae_walk) == 2 * FRAMES_PER_SEGMENT + 1
    scores = [_psnr(v, g) for v, g in zip(video, stills, strict=True)]
    assert min(scores) > 30, scores  # the same pictures, up to H.264's loss
    # and in the same order: each video frame is closest to its own GIF frame
    assert all(int(np.argmax([_psnr(v, g) for g in stills])) == i for i, v in enumerate(video))


def test_odd_sized_frames_are_padded_to_even_sides(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"frame_{i:05d}.png"
        Image.fromarray(np.full((15, 21, 3), 40 * i + 20, np.uint8)).save(p)
        paths.append(p)
    video, (_, width, height, _) = _mp4_frames(write_mp4(paths, tmp_path / "odd.mp4"))
    assert (width, height) == (22, 16) and len(video) == 3
    assert [abs(float(v.mean()) - (40 * i + 20)) < 3 for i, v in enumerate(video)] == [True] * 3


def test_bad_mp4_requests_are_one_line_errors(vae_walk, tmp_path):
    with pytest.raises(InputError, match="at least one frame"):
        write_mp4([], tmp_path / "empty.mp4")
    with pytest.raises(InputError, match="out of range"):
        write_mp4(vae_walk, tmp_path / "bad.mp4", fps=0)
    other = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(other)
    with pytest.raises(InputError, match="the first was 28x28"):
        write_mp4([*vae_walk[:2], other], tmp_path / "mixed.mp4")
    assert not list(tmp_path.glob("*.mp4*"))  # nothing half-written is left


def test_without_pyav_mp4_says_how_to_get_it(vae_walk, tmp_path):
    # A fresh interpreter where `import av` fails, as when the video extra is not installed.
    code = ("import sys; sys.modules['av'] = None\n"
            "from studio.errors import InputError\nfrom studio.ops.walk import mp4_available, write_mp4, write_gif\n"
            f"paths = {[str(p) for p in vae_walk]!r}\n"
            "assert not mp4_available()\n"
            f"write_gif(paths, {str(tmp_path / 'walk.gif')!r})\n"
            f"try:\n    write_mp4(paths, {str(tmp_path / 'walk.mp4')!r})\n"
            "except InputError as exc:\n    print(exc)\nelse:\n    print('no error')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == MP4_MISSING and "\n" not in MP4_MISSING
    assert (tmp_path / "walk.gif").is_file() and not (tmp_path / "walk.mp4").exists()


# ----- the walk op: `video="mp4"` (studio run walk --video mp4) -----
def _walk_job(video: str | None) -> dict:
    spec = {"op": "walk", "backend": "vae", "keyframes": [{"seed": 1}, {"seed": 2}, {"seed": 3}],
            "frames_per_segment": FRAMES_PER_SEGMENT}
    return spec if video is None else {**spec, "video": video}


def test_a_walk_job_with_video_mp4_writes_an_mp4_of_its_frames(tmp_path):
    from studio.executor import execute
    from studio.spec import parse_spec

    result = execute(_walk_job("mp4"))
    kinds = {a.name: a.kind for a in result.artifacts}
    assert kinds["walk.mp4"] == "video" and kinds["walk.gif"] == "gif"  # the GIF stays, the MP4 comes with it
    result.write(tmp_path)
    video, (codec, width, height, _) = _mp4_frames(tmp_path / "walk.mp4")
    count = parse_spec(_walk_job("mp4")).output_count()
    assert codec == "h264" and (width, height) == (28 * SCALE, 28 * SCALE)  # tiny frames enlarged as in the GIF
    assert len(video) == count == 2 * FRAMES_PER_SEGMENT + 1 == result.metrics["frames"]
    stills = []
    for i in range(count):
        with Image.open(tmp_path / f"frame_{i:05d}.png") as im:
            big = im.convert("RGB").resize((width, height), Image.Resampling.NEAREST)
            stills.append(np.asarray(big))
    scores = [_psnr(v, s) for v, s in zip(video, stills, strict=True)]
    assert min(scores) > 30, scores  # the walk's own PNG frames, in order, up to H.264's loss
    assert all(int(np.argmax([_psnr(v, s) for s in stills])) == i for i, v in enumerate(video))


def test_a_walk_job_stays_gif_only_by_default(tmp_path):
    from studio.executor import execute
    from studio.spec import parse_spec

    assert parse_spec(_walk_job(None)).video == "gif"
    names = [a.name for a in execute(_walk_job(None), workdir=tmp_path).artifacts]
    assert "walk.gif" in names and not [n for n in names if n.endswith(".mp4")]
    assert not list(tmp_path.rglob("*.mp4"))


def test_without_pyav_an_mp4_walk_job_fails_at_once_in_one_line(tmp_path, monkeypatch):
    from studio.executor import execute

    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails, as without the video extra
    assert not mp4_available()
    calls = []
    with pytest.raises(InputError) as caught:
        execute(_walk_job("mp4"), workdir=tmp_path, progress=lambda *a, **k: calls.append(a))
    assert str(caught.value) == MP4_MISSING
    assert calls == [] and not list(tmp_path.iterdir())  # refused before any frame was rendered
    assert "walk.gif" in [a.name for a in execute(_walk_job("gif")).artifacts]  # a GIF walk needs no PyAV
