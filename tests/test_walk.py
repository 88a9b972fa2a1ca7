"""The multi-keyframe walk op on a toy backend: frames, interpolation per space, resume, GIF."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from studio.contract import CONDITION, SEED, Backend, LatentSpace, ModelInfo, no_progress
from studio.errors import Cancelled, InputError
from studio.ops.walk import (
    MANIFEST,
    frame_count,
    frame_position,
    is_complete_png,
    mp4_available,
    walk,
    walk_point,
    write_gif,
    write_mp4,
)
from studio.record import read_record


@pytest.fixture(autouse=True)
def studio_home(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))


class ToyBackend(Backend):
    """Not SD: a Gaussian `z` and a `c` condition; each frame is a deterministic picture of its point."""

    name = "toy-walk"
    version = "1.0"

    def __init__(self) -> None:
        super().__init__(ModelInfo("toy", "", "0" * 64))
        self.decoded: list[torch.Tensor] = []  # one row per decoded item, in order

    @classmethod
    def available_models(cls, settings):
        return []

    @classmethod
    def load(cls, model, settings, device="cpu", dtype="float32"):
        return cls()

    def spaces(self, options=None):
        return {"z": LatentSpace("z", (6,), "gaussian", frozenset({SEED})),
                "c": LatentSpace("c", (2,), "none", frozenset({CONDITION}))}

    def image_shape(self, options=None):
        return (3, 4, 4)

    def decode(self, point, options=None, progress=no_progress):
        z, c = point["z"], point["c"]
        self.decoded.extend(torch.cat([z, c], dim=1))
        progress(1, 1, "toy")
        base = torch.tanh(torch.cat([z, c, z[:, :4], c[:, :1], z[:, :2], c[:, 1:]], dim=1))  # (n, 16)
        return base.view(-1, 1, 4, 4).repeat(1, 3, 1, 1)


def keyframes(backend, seeds=(1, 2, 3)):
    z = backend.sample_prior("z", list(seeds))
    return [{"z": z[i:i + 1], "c": torch.tensor([[float(i), -float(i)]])} for i in range(len(seeds))]


def pixels(path) -> list:
    return list(Image.open(path).getdata())


def test_frame_count_and_positions():
    assert frame_count(3, 4) == 9 and frame_count(2, 1) == 2
    assert [frame_position(i, 3, 4) for i in (0, 3, 4, 7, 8)] == [(0, 0.0), (0, 0.75), (1, 0.0), (1, 0.75), (1, 1.0)]


def test_gaussian_spaces_follow_the_method_and_others_lerp():
    backend = ToyBackend()
    keys = [{n: t[0] for n, t in k.items()} for k in keyframes(backend, seeds=(4, 5))]
    priors = {"z": "gaussian", "c": "none"}
    mid_slerp = walk_point(keys, 1, 2, "slerp", priors)
    mid_lerp = walk_point(keys, 1, 2, "lerp", priors)
    assert torch.allclose(mid_slerp["c"], torch.tensor([0.5, -0.5])) and torch.equal(mid_slerp["c"], mid_lerp["c"])
    ends = (keys[0]["z"].norm() + keys[1]["z"].norm()) / 2
    assert abs(mid_slerp["z"].norm() - ends) < 1e-4  # slerp keeps the norm
    assert torch.allclose(mid_lerp["z"], (keys[0]["z"] + keys[1]["z"]) / 2)
    assert torch.equal(walk_point(keys, 2, 2, "slerp", priors)["z"], keys[1]["z"])


def test_walk_writes_every_frame_and_ends_on_the_keyframes(tmp_path):
    backend = ToyBackend()
    keys = keyframes(backend)
    paths = walk(backend, keys, 4, "slerp", None, tmp_path)
    assert [p.name for p in paths] == [f"frame_{i:05d}.png" for i in range(9)]
    assert all(is_complete_png(p) for p in paths) and (tmp_path / MANIFEST).is_file()
    assert len(backend.decoded) == 9
    for frame, key in ((0, 0), (4, 1), (8, 2)):
        assert torch.equal(backend.decoded[frame], torch.cat([keys[key]["z"][0], keys[key]["c"][0]]))
    assert len({tuple(pixels(p)) for p in paths}) == 9


def test_rerun_renders_only_missing_or_broken_frames(tmp_path):
    backend = ToyBackend()
    keys = keyframes(backend)
    paths = walk(backend, keys, 4, "slerp", None, tmp_path, batch_size=3)
    before = {p.name: pixels(p) for p in paths}
    first_pass = [row.clone() for row in backend.decoded]
    paths[2].unlink()
    paths[5].unlink()
    paths[7].write_bytes(paths[7].read_bytes()[:60])  # a frame cut off mid-write
    assert not is_complete_png(paths[7])
    backend.decoded.clear()
    again = walk(backend, keys, 4, "slerp", None, tmp_path, batch_size=3)
    assert again == paths
    assert [row.tolist() for row in backend.decoded] == [first_pass[i].tolist() for i in (2, 5, 7)]
    assert {p.name: pixels(p) for p in again} == before
    backend.decoded.clear()
    walk(backend, keys, 4, "slerp", None, tmp_path)
    assert backend.decoded == []  # nothing left to do


def test_an_interrupted_walk_resumes_where_it_stopped(tmp_path):
    backend = ToyBackend()
    keys = keyframes(backend)

    def stop_after_four(done, total, message="", preview=None):
        if done >= 4:
            raise Cancelled("cancelled by the user")

    with pytest.raises(Cancelled):
        walk(backend, keys, 4, "lerp", None, tmp_path, progress=stop_after_four)
    assert sorted(p.name for p in tmp_path.glob("frame_*.png")) == [f"frame_{i:05d}.png" for i in range(4)]
    assert not list(tmp_path.glob("*.tmp"))
    backend.decoded.clear()
    walk(backend, keys, 4, "lerp", None, tmp_path)
    assert len(backend.decoded) == 5


def test_a_folder_of_another_walk_is_refused(tmp_path):
    backend = ToyBackend()
    walk(backend, keyframes(backend), 2, "slerp", None, tmp_path)
    with pytest.raises(InputError, match="different walk"):
        walk(backend, keyframes(backend), 2, "lerp", None, tmp_path)
    with pytest.raises(InputError, match="different walk"):
        walk(backend, keyframes(backend, seeds=(7, 8, 9)), 2, "slerp", None, tmp_path)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(InputError, match="without a walk.json"):
        walk(backend, keyframes(backend), 2, "slerp", None, tmp_path)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"method": "cubic"}, "unknown interpolation"), ({"frames_per_segment": 0}, "at least 1"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_walk_arguments(tmp_path, kwargs, words):
    backend = ToyBackend()
    args = {"method": "slerp", "frames_per_segment": 2, **kwargs}
    with pytest.raises(InputError, match=words):
        walk(backend, keyframes(backend), out_dir=tmp_path, **args)


def test_bad_keyframes(tmp_path):
    backend = ToyBackend()
    keys = keyframes(backend)
    with pytest.raises(InputError, match="at least 2 keyframes"):
        walk(backend, keys[:1], 2, "slerp", None, tmp_path)
    with pytest.raises(InputError, match="has spaces"):
        walk(backend, [keys[0], {"z": keys[1]["z"]}], 2, "slerp", None, tmp_path)
    with pytest.raises(InputError, match="expected"):
        walk(backend, [keys[0], {"z": torch.zeros(1, 5), "c": keys[1]["c"]}], 2, "slerp", None, tmp_path)
    with pytest.raises(InputError, match="unknown to backend"):
        walk(backend, [{**k, "w": torch.zeros(1, 2)} for k in keys], 2, "slerp", None, tmp_path)


def test_records_gif_and_mp4(tmp_path):
    backend = ToyBackend()
    paths = walk(backend, keyframes(backend), 2, "slerp", None, tmp_path / "frames",
                 record_for=lambda i: {"item": {"frame": i}})
    assert [read_record(p)["item"]["frame"] for p in paths] == list(range(5))
    gif = write_gif(paths, tmp_path / "walk.gif", ms_per_frame=50)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 5
    assert mp4_available()  # the video extra, installed by `make setup` (tests/test_video.py checks the video)
    mp4 = write_mp4(paths, tmp_path / "walk.mp4")
    assert mp4.stat().st_size > 0
    with pytest.raises(InputError):
        write_gif([], tmp_path / "empty.gif")
