"""The CLI as a user runs it (a subprocess), on the example PCA plugin (cheap and deterministic)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from studio.record import read_record


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_sample_writes_pngs_with_records_and_is_reproducible(studio_cli, tmp_path):
    for d in ("a", "b"):
        r = studio_cli("run", "sample", "--backend", "pca", "--n", "4", "--seed", "5", "--out", str(tmp_path / d))
        assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["grid.png", "sample_000.png", "sample_001.png", "sample_002.png", "sample_003.png"]
    for name in names:
        assert np.array_equal(pixels(tmp_path / "a" / name), pixels(tmp_path / "b" / name))
    record = read_record(tmp_path / "a" / "sample_002.png")
    assert record["item"]["seed"] == 7 and record["spec"]["seed"] == 5
    assert record["backend"] == "pca" and len(record["weights_sha256"]) == 64
    assert {"torch", "latent-studio", "python"} <= set(record["versions"])
    assert record["device"] == "cpu" and record["dtype"] == "float32"


def test_one_seed_gives_the_same_image_in_any_batch(studio_cli, tmp_path):
    for n, seed, name in (("1", "7", "one"), ("4", "5", "four")):
        studio_cli("run", "sample", "--backend", "pca", "--n", n, "--seed", seed, "--out", str(tmp_path / name),
                   check=True)
    assert np.array_equal(pixels(tmp_path / "one" / "sample_000.png"), pixels(tmp_path / "four" / "sample_002.png"))


def test_interpolate_from_seeds_and_from_images(studio_cli, tmp_path):
    r = studio_cli("run", "interpolate", "--backend", "pca", "--from-seed", "1", "--to-seed", "2", "--frames", "5",
                   "--method", "slerp", "--out", str(tmp_path / "seeds"))
    assert r.returncode == 0, r.stderr
    files = {p.name for p in (tmp_path / "seeds").iterdir()}
    assert {"strip.png", "walk.gif", "frame_000.png", "frame_004.png"} <= files
    assert Image.open(tmp_path / "seeds" / "walk.gif").n_frames == 8  # there and back
    a = tmp_path / "a.png"
    b = tmp_path / "b.png"
    Image.open(tmp_path / "seeds" / "frame_000.png").save(a)
    Image.open(tmp_path / "seeds" / "frame_004.png").convert("RGB").resize((56, 56)).save(b)
    r = studio_cli("run", "interpolate", "--backend", "pca", "--from-image", str(a), "--to-image", str(b),
                   "--frames", "3", "--method", "lerp", "--out", str(tmp_path / "images"))
    assert r.returncode == 0, r.stderr
    assert "converted" in r.stderr  # the RGB 56x56 image was converted, and the user is told


def test_traverse_and_analogy(studio_cli, tmp_path):
    r = studio_cli("run", "traverse", "--backend", "pca", "--seed", "3", "--dims", "0-3", "--range", "-3,3",
                   "--columns", "5", "--out", str(tmp_path / "t"))
    assert r.returncode == 0, r.stderr
    grid = Image.open(tmp_path / "t" / "grid.png")
    assert grid.size == (5 * 28 + 6 * 2, 4 * 28 + 5 * 2)
    r = studio_cli("run", "analogy", "--backend", "pca", "--a-seed", "1", "--b-seed", "2", "--c-seed", "3",
                   "--out", str(tmp_path / "an"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "an" / "result.png").is_file()


def test_plugins_lists_backends_with_spaces_and_hashes(studio_cli):
    r = studio_cli("plugins", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    pca = next(b for b in info["backends"] if b["name"] == "pca")
    assert pca["entry_point"] == "pca" and pca["version"] == "0.1.0"
    assert pca["spaces"] == [{"name": "z", "shape": [16], "prior": "gaussian", "roles": ["codec", "seed"]}]
    assert len(pca["models"][0]["sha256"]) == 64
    assert {"encode", "decode", "sample"} <= set(pca["capabilities"])
    ops = {op["name"]: op for op in info["ops"]}  # every installed op, with the plugin that adds it
    assert ops["neighbours"]["entry_point"] == "pca" and ops["sample"]["entry_point"] == "builtin"
    assert ops["sample"]["batchable"] and ops["walk"]["resumable"] and not ops["edit"]["batchable"]


@pytest.mark.parametrize("args, message", [
    (["run", "sample", "--backend", "nope", "--out", "{tmp}"], "unknown backend 'nope'"),
    (["run", "sample", "--backend", "pca", "--n", "100000", "--out", "{tmp}"], "the limit is"),
    (["run", "interpolate", "--backend", "pca", "--from-image", "{tmp}/missing.png", "--to-seed", "1"],
     "does not exist"),
    (["run", "interpolate", "--backend", "pca", "--from-image", "{tmp}/corrupt.png", "--to-seed", "1"],
     "not a readable image"),
    (["run", "interpolate", "--backend", "pca", "--from-seed", "1"], "give the end"),
    (["run", "traverse", "--backend", "pca", "--seed", "1", "--dims", "14-17"], "dim"),
    (["run", "traverse", "--backend", "pca", "--seed", "1", "--dims", "x"], "--dims must look like"),
    (["run", "roundtrip", "--backend", "pca", "--dataset", "mnist", "--bits", "13"], "bits must be between 1 and 12"),
    (["run", "edit", "--backend", "pca", "--vector", "nosuch", "--seed", "1"], "nosuch"),
    (["run", "roundtrip", "--backend", "pca", "--dataset", "nosuchdata", "--bits", "4"], "unknown dataset"),
    (["run", "edit", "--backend", "pca", "--seed", "1", "--colour", "red"], "No such option: --colour"),
    (["run", "sample"], "Missing option '--backend'"),
    (["run", "walk", "--backend", "pca", "--seeds", "1,2", "--video", "webm"], "video: Input should be 'gif' or 'mp4'"),
])
def test_bad_input_gets_one_line_and_no_traceback(studio_cli, tmp_path, args, message):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = studio_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr


def test_walk_writes_an_mp4_with_video_mp4_and_only_a_gif_by_default(studio_cli, tmp_path):
    import av

    for video, out in ((None, "gif"), ("mp4", "mp4")):
        more = [] if video is None else ["--video", video]
        r = studio_cli("run", "walk", "--backend", "pca", "--seeds", "1,2,3", "--frames", "3", *more,
                       "--out", str(tmp_path / out))
        assert r.returncode == 0, r.stderr
    assert not list((tmp_path / "gif").glob("*.mp4")) and (tmp_path / "gif" / "walk.gif").is_file()
    files = {p.name for p in (tmp_path / "mp4").iterdir()}
    assert {"walk.gif", "walk.mp4", "frame_00000.png", "frame_00006.png"} <= files and "frame_00007.png" not in files
    with av.open(str(tmp_path / "mp4" / "walk.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 7 and (frames[0].width, frames[0].height) == (112, 112)  # 28x28 frames, enlarged 4x
    assert read_record(tmp_path / "mp4" / "frame_00003.png")["spec"]["video"] == "mp4"


def test_an_mp4_walk_without_pyav_is_one_line_before_any_frame(tmp_path):
    import subprocess
    import sys

    from studio.ops.walk import MP4_MISSING

    main = "import sys; sys.modules['av'] = None\nfrom studio.cli import main\nmain()"  # as without the video extra
    r = subprocess.run([sys.executable, "-c", main, "run", "walk", "--backend", "pca", "--seeds", "1,2", "--video",
                        "mp4", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr == f"error: {MP4_MISSING}\n", r.stderr
    assert not (tmp_path / "out").exists()


def test_roundtrip_json_reports_real_bytes_and_honest_baselines(studio_cli):
    r = studio_cli("run", "roundtrip", "--backend", "vae", "--dataset", "mnist", "--split", "test", "--limit", "100",
                   "--bits", "8", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    for key in ("psnr", "ssim", "bytes_per_image", "bpp", "jpeg_psnr", "webp_psnr"):
        assert key in m
    assert m["psnr"] >= 20 and 8 <= m["bytes_per_image"] <= 40  # 8 bits over a 32-d latent, entropy-coded
    assert m["bpp"] == pytest.approx(8 * m["bytes_per_image"] / (28 * 28))
    # No JPEG can be as small as ~14 bytes: the baseline says so instead of inventing a number.
    assert m["jpeg_psnr"] is None and m["jpeg_min_bytes"] > m["bytes_per_image"]


def test_roundtrip_of_one_image_writes_the_comparison(studio_cli, tmp_path):
    r = studio_cli("run", "roundtrip", "--backend", "vae", "--image", "dataset:mnist:test:3", "--bits", "6",
                   "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    names = {p.name for p in tmp_path.iterdir()}
    assert {"original.png", "reconstruction.png", "side_by_side.png", "latent.bin", "baseline.jpg",
            "baseline.webp", "metrics.json"} <= names
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (tmp_path / "latent.bin").stat().st_size == metrics["bytes_per_image"]


def test_fit_a_vector_then_edit_with_it(studio_cli, tmp_path):
    r = studio_cli("vectors", "fit", "--backend", "vae", "--dataset", "mnist", "--attribute", "thickness",
                   "--name", "thick", "--limit", "2000", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["auc"] > 0.9
    listed = studio_cli("vectors", "list", "--json")
    assert any(v["name"] == "thick" and v["backend"] == "vae" for v in json.loads(listed.stdout))
    r = studio_cli("run", "edit", "--backend", "vae", "--vector", "thick", "--strengths", "-2,0,2", "--seed", "3",
                   "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    from studio.attributes import thickness
    from studio.images import to_tensor

    ims = [Image.open(tmp_path / f"edit_{i:03d}.png") for i in range(3)]
    ink = thickness(to_tensor(ims, (1, 28, 28)))
    assert ink[0] < ink[1] < ink[2]
    assert read_record(tmp_path / "edit_002.png")["item"]["strength"] == 2.0


def test_progress_bar_keeps_one_bar_while_the_message_changes(monkeypatch):
    """Training reports losses in every message; the bar must carry on (true rate and ETA), not restart."""
    import io
    import re
    import sys
    import time

    from studio.cli.common import Bar

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = Bar("train gan", force=True)
    for step in range(1, 101):
        bar(step, 100, f"loss {step / 7:.3f}")
        time.sleep(0.002)
    bar(1, 50, "encoder")  # a new phase gets a new bar
    bar.close()
    shown = err.getvalue()
    rates = [float(r) for r in re.findall(r"([\d.]+)it/s", shown)]
    assert rates and max(rates) < 1000  # 2 ms a step: at most 500 steps/s, never a fresh bar's absurd rate
    assert "train gan: loss " in shown and "/50 " in shown


def test_train_passes_recipe_options_and_refuses_unknown_ones_in_one_line(studio_cli, tmp_path):
    from studio_vae.config import VAEConfig

    from studio.safetensors_io import read_metadata

    out = tmp_path / "small.safetensors"
    r = studio_cli("train", "vae", "--dataset", "mnist", "--epochs", "1", "--limit", "128", "--out", str(out),
                   "--train-option", "latent_dim=4", "--train-option", "base_width=4")
    assert r.returncode == 0, r.stderr
    assert VAEConfig.from_json(read_metadata(out)["config"]).latent_dim == 4
    bad = studio_cli("train", "vae", "--epochs", "1", "--limit", "128", "--out", str(tmp_path / "x.safetensors"),
                     "--train-option", "no_such=1")
    assert bad.returncode != 0 and "unknown training options for vae: no_such" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_train_installs_its_weights_as_a_model_that_run_finds(studio_cli, tmp_path):
    """Issue 14: `studio train` registers what it trains: without --out in `<first model root>/<backend>/NAME`, with
    an --out elsewhere also copied there (never linked), and `--model NAME` then runs it."""
    roots = {"STUDIO_MODEL_ROOTS": str(tmp_path / "models")}
    small = ["--epochs", "1", "--limit", "128", "--train-option", "latent_dim=4", "--train-option", "base_width=4"]
    r = studio_cli("train", "vae", "--dataset", "mnist", *small, "--name", "tiny-new", env=roots)
    assert r.returncode == 0, r.stderr
    installed = tmp_path / "models" / "vae" / "tiny-new.safetensors"
    assert installed.is_file() and json.loads(r.stdout)["model"] == "tiny-new"
    assert "--model tiny-new" in r.stderr  # the user is told the name to use
    out = tmp_path / "elsewhere" / "my-vae.safetensors"
    r = studio_cli("train", "vae", "--dataset", "mnist", *small, "--out", str(out), env=roots)
    assert r.returncode == 0, r.stderr
    copy = tmp_path / "models" / "vae" / "my-vae.safetensors"
    assert out.is_file() and copy.is_file() and not copy.is_symlink()
    assert copy.read_bytes() == out.read_bytes() and json.loads(r.stdout)["model"] == "my-vae"
    for name in ("tiny-new", "my-vae"):
        r = studio_cli("run", "sample", "--backend", "vae", "--model", name, "--n", "1", "--seed", "0",
                       "--out", str(tmp_path / f"out-{name}"), env=roots)
        assert r.returncode == 0, r.stderr
        assert read_record(tmp_path / f"out-{name}" / "sample_000.png")["model"] == name
    taken = studio_cli("train", "vae", "--dataset", "mnist", *small, "--name", "mnist", env=roots)
    assert taken.returncode != 0 and "taken by another vae model" in taken.stderr  # the shipped one would win
    assert taken.stderr.count("\n") == 1
