"""Hostile input on the core and CLI side (issue #11, items 6, 8, 9 and 12).

Images are checked from their header before any pixel is decoded; specs are bounded (every list, string and inline
image) and refused at submit with one short line naming the field; no path escapes the roots through a symlink;
a worker never downloads a model unless STUDIO_ALLOW_DOWNLOADS allows it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from studio.config import load_settings
from studio.errors import InputError, NotFound
from studio.images import check_image_header, open_checked
from studio.spec import parse_spec
from studio.ui.testing import bomb_png_bytes as bomb_png

MAX_MESSAGE = 300


def png(size: tuple[int, int] = (28, 28), mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < MAX_MESSAGE, text
    assert " at 0x" not in text and "<" not in text, text  # no Python reprs
    return text


@pytest.fixture
def settings(tmp_path):
    return load_settings(env={"STUDIO_HOME": str(tmp_path / "home"), "STUDIO_MODEL_ROOTS": str(tmp_path / "models"),
                              "STUDIO_DATA_ROOTS": str(tmp_path / "data")})


# ----- item 6: the header is checked before any pixel is decoded -----
def test_check_image_header_refuses_a_pixel_bomb_without_decoding_it(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(13000, 13000))  # ~164 KB on disk, 169 MB of grey pixels once decoded
    script = (
        "import resource, sys\n"
        "from studio.images import check_image_header\n"
        "from studio.errors import InputError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for source in (sys.argv[1], open(sys.argv[1], 'rb').read()):\n"
        "    try:\n"
        "        check_image_header(source, 4096 * 4096, 8_000_000, 'init_image')\n"
        "    except InputError as exc:\n"
        "        print(exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                         check=True).stdout.splitlines()
    assert out[0] == "init_image 'bomb.png': 13000x13000 pixels; the limit is 16777216 pixels"
    assert out[1] == "init_image: 13000x13000 pixels; the limit is 16777216 pixels"
    assert int(out[2]) < 100  # MB of peak memory growth: decoding would need ~169 MB


def test_check_image_header_returns_the_size_and_refuses_non_images(tmp_path):
    assert check_image_header(png((30, 20)), 10**6, 10**6) == (30, 20)
    with pytest.raises(InputError, match=r"^upload: 40000 bytes; the limit is 100 bytes$"):
        check_image_header(b"x" * 40000, 10**6, 100, "upload")
    for bad in (b"not an image at all", png()[:40]):
        with pytest.raises(InputError, match="not a readable image") as err:
            check_image_header(bad, 10**6, 10**6)
        one_line(err.value)
    with pytest.raises(InputError, match="does not exist") as err:
        check_image_header(tmp_path / "missing.png", 10**6, 10**6)
    one_line(err.value)


def test_python_objects_are_named_by_type_never_by_repr():
    im = Image.open(io.BytesIO(png()))
    with pytest.raises(InputError, match="PngImageFile") as err:
        check_image_header(im, 10**6, 10**6)  # type: ignore[arg-type]
    one_line(err.value)
    with pytest.raises(InputError, match="not a readable image") as err:
        open_checked(b"\x89PNG\r\n\x1a\n garbage", 10**6, 10**6)  # was "... <_io.BytesIO object at 0x...>"
    one_line(err.value)
    for value in (im, io.BytesIO(png())):
        with pytest.raises(InputError, match=r"^image\.png_b64: expected a JSON value") as err:
            parse_spec({"op": "roundtrip", "backend": "pca", "image": {"png_b64": value}})
        one_line(err.value)


# ----- item 8: specs are bounded and inline images validated at submit -----
def test_with_seeds_is_bounded_by_the_setting(settings):
    spec = {"op": "fit_vector", "backend": "pca", "name": "v", "with_seeds": list(range(1_000_000)),
            "without_seeds": [1]}
    with pytest.raises(InputError) as err:
        parse_spec(spec, settings)
    assert one_line(err.value) == "with_seeds: at most 1000 seeds, got 1000000"
    small = {**spec, "with_seeds": list(range(5))}
    assert parse_spec(small, settings).with_seeds == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("spec", "field"), [
    ({"op": "x" * 10_000_000, "backend": "pca"}, "op: unknown op"),
    ({"op": "sample", "backend": "sd", "options": {"prompt": "p" * 10_000_000}}, "options.prompt: at most 4096"),
    ({"op": "sample", "backend": "sd", "options": {"k" * 1_000_000: 1}}, "options: a key of 1000000 characters"),
    ({"op": "fit_vector", "backend": "pca", "name": "v", "with_seeds": [1], "without_seeds": list(range(5000))},
     "without_seeds: at most 1000 seeds, got 5000"),
    ({"op": "sample", "backend": "sd", "options": {"a": [[[[[[[[[[[[[[1]]]]]]]]]]]]]]}}, "options.a[0][0]"),
    ({"op": "sample", "backend": "sd", "options": {f"p{i}": "y" * 4000 for i in range(70)}}, "spec: larger than"),
])
def test_huge_values_are_refused_in_one_short_line_naming_the_field(settings, spec, field):
    with pytest.raises(InputError) as err:
        parse_spec(spec, settings, check_backend=False)  # the bounds hold whatever the backend's options are
    text = one_line(err.value)
    assert text.startswith(field), text


def test_inline_images_are_checked_from_the_header_at_submit(tmp_path, settings):
    from studio.queue.client import StudioClient

    client = StudioClient(settings)
    bomb = {"op": "roundtrip", "backend": "pca", "image": {"png_b64": b64(bomb_png(13000, 13000))}}
    for bad, words in [
        (bomb, "image.png_b64: 13000x13000 pixels; the limit is"),
        ({**bomb, "image": {"png_b64": b64(b"hello, not an image")}}, "image.png_b64: not a readable image"),
        ({**bomb, "image": {"png_b64": "!!!not base64!!!"}}, "image.png_b64: not valid base64"),
        ({"op": "interpolate", "backend": "pca", "start": {"seed": 1},
          "end": {"image": {"png_b64": b64(bomb_png(5000, 5000))}}}, "end.image.png_b64: 5000x5000 pixels"),
    ]:
        with pytest.raises(InputError) as err:
            client.submit(bad)  # refused before any broker is needed
        assert one_line(err.value).startswith(words), str(err.value)
    assert client.jobs() == []  # nothing was recorded
    ok = {**bomb, "image": {"png_b64": b64(png())}}
    assert client.validate(ok)["image"]["png_b64"] == ok["image"]["png_b64"]
    client.close()


def test_replaying_a_png_checks_its_header_before_decoding(tmp_path, settings):
    from studio.queue.client import StudioClient

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(13000, 13000))
    client = StudioClient(settings)
    with pytest.raises(InputError) as err:
        client.replay(str(bomb))
    assert one_line(err.value) == "replay image 'bomb.png': 13000x13000 pixels; the limit is 16777216 pixels"
    with pytest.raises(NotFound) as err:
        client.replay("y" * 5000 + ".png")
    one_line(err.value)
    assert client.jobs() == []
    client.close()


def test_inline_image_bytes_are_bounded_before_decoding(tmp_path):
    tight = load_settings(env={"STUDIO_HOME": str(tmp_path), "STUDIO_MAX_UPLOAD_BYTES": "5000",
                               "STUDIO_MAX_INLINE_BYTES": "9000"})
    huge = {"op": "roundtrip", "backend": "pca", "image": {"png_b64": "A" * 2_000_000}}
    with pytest.raises(InputError) as err:
        parse_spec(huge, tight)
    assert one_line(err.value).startswith("image.png_b64: about 1500000 bytes; the limit is 5000 bytes")
    noisy = Image.effect_noise((40, 40), 60).convert("L")  # ~1.7 KB as PNG: under the per-image limit
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    frame = {"image": {"png_b64": b64(buf.getvalue())}}
    assert parse_spec({"op": "walk", "backend": "pca", "keyframes": [frame, frame]}, tight)
    many = {"op": "walk", "backend": "pca", "keyframes": [frame] * 8}
    with pytest.raises(InputError, match=r"over 9000 bytes together \(STUDIO_MAX_INLINE_BYTES\)") as err:
        parse_spec(many, tight)
    one_line(err.value)


def test_seed_ranges_on_the_command_line_are_bounded_before_they_are_built():
    from studio.cli.common import parse_ints

    assert parse_ints("0-3,9", "--with-seeds") == [0, 1, 2, 3, 9]
    with pytest.raises(InputError) as err:
        parse_ints("0-2000000", "--with-seeds")
    assert one_line(err.value).startswith("--with-seeds: at most 1000 numbers")


# ----- item 8: no download unless allowed -----
def test_a_hub_id_not_in_the_cache_is_refused_before_any_network_call(tmp_path, monkeypatch):
    from studio_sd.models import resolve_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # even "online", the setting alone decides
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    env = {"STUDIO_HOME": str(tmp_path / "home"), "STUDIO_MODEL_ROOTS": str(tmp_path / "models")}
    with pytest.raises(NotFound) as err:
        resolve_model("some-org/some-model", load_settings(env=env))
    text = one_line(err.value)
    assert "some-org/some-model" in text and "STUDIO_ALLOW_DOWNLOADS" in text
    allowed = load_settings(env={**env, "STUDIO_ALLOW_DOWNLOADS": "1"})
    assert resolve_model("some-org/some-model", allowed) == ("some-org/some-model", None)


# ----- item 9: symlinks never escape the roots -----
def tiny_safetensors(path: Path) -> Path:
    """A valid safetensors file holding no tensors (enough to be listed as a model)."""
    header = json.dumps({"__metadata__": {"kind": "test"}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def fake_pipeline(folder: Path) -> Path:
    """A folder that passes the SD folder checks (model_index.json with the SD components) without weights."""
    folder.mkdir(parents=True)
    index = {"_class_name": "StableDiffusionPipeline", **{c: ["x", "y"] for c in
                                                           ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}}
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "unet").mkdir()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    return folder


def test_sd_model_symlinked_from_outside_the_roots_is_refused(tmp_path, settings):
    from studio_sd.models import find_models, resolve_model

    sd = settings.model_root_paths[0] / "sd"
    outside = fake_pipeline(tmp_path / "outside" / "pipe")
    inside = fake_pipeline(settings.model_root_paths[0] / "kept" / "pipe")
    sd.mkdir(parents=True)
    (sd / "evil").symlink_to(outside, target_is_directory=True)
    (sd / "alias").symlink_to(inside, target_is_directory=True)
    assert [m.name for m in find_models(settings)] == ["mnist-fashion", "alias"]  # the shipped model, then ours
    folder, info = resolve_model("alias", settings)
    assert folder == inside.resolve() and info.name == "alias"
    for name in ("evil", str(sd / "evil"), "sd/evil"):
        with pytest.raises(InputError, match="outside") as err:
            resolve_model(name, settings)
        one_line(err.value)
    leaky = fake_pipeline(sd / "leaky")
    (leaky / "vae").mkdir()
    (leaky / "vae" / "diffusion_pytorch_model.safetensors").symlink_to(outside / "unet" /
                                                                        "diffusion_pytorch_model.safetensors")
    with pytest.raises(InputError, match="symlink outside the model roots"):
        resolve_model("leaky", settings)
    assert "leaky" not in [m.name for m in find_models(settings)]


@pytest.mark.parametrize("backend", ["vae", "gan"])
def test_weights_symlinked_from_outside_the_roots_are_not_listed(tmp_path, settings, backend):
    from studio.registry import get_backend_class

    folder = settings.model_root_paths[0] / backend
    folder.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    tiny_safetensors(tmp_path / "outside" / "w.safetensors")
    tiny_safetensors(settings.model_root_paths[0] / "w.safetensors")
    (folder / "evil.safetensors").symlink_to(tmp_path / "outside" / "w.safetensors")
    (folder / "alias.safetensors").symlink_to(settings.model_root_paths[0] / "w.safetensors")
    names = [m.name for m in get_backend_class(backend).available_models(settings)]
    assert "alias" in names and "evil" not in names
    with pytest.raises(NotFound):
        get_backend_class(backend).load("evil", settings)


def test_dataset_images_symlinked_from_outside_are_not_read(tmp_path, settings):
    from studio.datasets import load_dataset

    folder = settings.data_root_paths[0] / "set"
    (folder / "a").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "s.png").write_bytes(png((28, 28)))
    (folder / "a" / "one.png").write_bytes(png((28, 28)))
    (folder / "a" / "two.png").symlink_to(folder / "a" / "one.png")  # inside: fine
    (folder / "a" / "leak.png").symlink_to(tmp_path / "secret" / "s.png")
    (folder / "b").symlink_to(tmp_path / "secret", target_is_directory=True)
    ds = load_dataset(f"folder:{folder}", settings=settings)
    assert len(ds) == 2 and ds.classes == ["a"]
    with pytest.raises(InputError, match="outside the configured roots") as err:
        load_dataset(f"folder:{folder / 'b'}", settings=settings)
    one_line(err.value)


# ----- item 12: the CLI's messages -----
def studio(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


@pytest.mark.integration
def test_cli_size_error_names_the_file_once(tmp_path):
    big = tmp_path / "big-upload.png"
    Image.effect_noise((64, 64), 80).convert("L").save(big)
    r = studio("run", "interpolate", "--backend", "pca", "--from-image", str(big), "--to-seed", "1",
               "--out", str(tmp_path / "out"), env={"STUDIO_HOME": str(tmp_path), "STUDIO_MAX_UPLOAD_BYTES": "1000"})
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.count("big-upload.png") == 1 and "the limit is 1000 bytes" in r.stderr, r.stderr
    assert len(r.stderr) < MAX_MESSAGE


@pytest.mark.integration
def test_cli_wait_reports_the_timeout_it_was_given(tmp_path):
    from studio.queue.jobstore import JobStore, NewJob

    env = {"STUDIO_HOME": str(tmp_path), "STUDIO_BROKER_URL": "redis://127.0.0.1:6379/0",
           "STUDIO_QUEUE_PREFIX": f"hostile{os.getpid()}"}
    store = JobStore.from_settings(load_settings(env=env))
    store.create(NewJob(id="feedc0de0001", spec={"op": "sample", "backend": "pca", "n": 1}, priority=5,
                        queue=f"hostile{os.getpid()}.any.pca", max_attempts=1, time_limit_s=60.0))
    r = studio("wait", "feedc0de0001", "--timeout", "1", env=env)
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert "not finished after 1 s" in r.stderr, r.stderr


@pytest.mark.integration
@pytest.mark.parametrize("args", [
    ["train", "{X}", "--out", "{tmp}/w.safetensors"],
    ["run", "traverse", "--backend", "pca", "--seed", "1", "--dims", "{X}"],
    ["run", "sample", "--backend", "pca", "--option", "{X}=1"],
    ["run", "roundtrip", "--backend", "pca", "--dataset", "{X}", "--bits", "4"],
])
def test_cli_never_echoes_a_huge_value(tmp_path, args):
    huge = "x" * 20_000
    r = studio(*[a.replace("{X}", huge).replace("{tmp}", str(tmp_path)) for a in args],
               env={"STUDIO_HOME": str(tmp_path)})
    assert r.returncode != 0 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr[:300]
    assert len(r.stderr) < MAX_MESSAGE, r.stderr[:300]


@pytest.mark.parametrize("limit", [3, 20, 30, 40, 60, 120, 290])
def test_clip_never_returns_more_than_its_limit_suffix_included(limit: int) -> None:
    """Review #11: clip(text, 290) used to add "... (N characters)" past the limit (~312 characters)."""
    from studio.errors import clip

    for n in (limit, limit + 1, 999, 123_456):
        out = clip("word " * (n // 5) + "z" * (n % 5), limit)
        assert len(out) <= limit and "\n" not in out
    assert clip("a" * 1000, limit).endswith("...") or clip("a" * 1000, limit).endswith("(1000 characters)")
    assert clip("short\nline", limit if limit >= 10 else 10) == "short line"


def _eps_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "EPS")  # PIL writes EPS itself; reading its pixels would run Ghostscript
    return out.getvalue()


def test_images_in_formats_that_run_external_programs_are_refused(tmp_path: Path) -> None:
    """Review #10: the header check accepted EPS, and decoding it then ran Ghostscript."""
    from studio.record import read_record

    eps = tmp_path / "cat.png"  # a misleading name changes nothing
    eps.write_bytes(_eps_bytes())
    for source in (eps.read_bytes(), eps):
        with pytest.raises(InputError) as refused:
            check_image_header(source, 10_000, 1_000_000, what="init image")
        assert one_line(refused.value).startswith("init image")
        assert "refused format" in str(refused.value) and "PNG" in str(refused.value)
        with pytest.raises(InputError, match="init image"):
            open_checked(source, 1_000_000, 10_000, what="init image")
    with pytest.raises(InputError, match="record image"):
        read_record(eps)
    with pytest.raises(InputError, match="format EPS is refused"):
        read_record(Image.open(eps))  # an image someone else opened is not loaded either
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    assert check_image_header(png.getvalue(), 10_000, 1_000_000) == (8, 8)  # the usual formats still pass


def test_png_b64_is_exempt_from_the_text_bounds_only_where_an_image_can_sit(settings):
    """Review #12: any key named png_b64 skipped every bound, also inside free-form options dicts."""
    long = "A" * (settings.max_spec_chars + 1)
    for spec, field in [
        ({"op": "sample", "backend": "pca", "options": {"png_b64": long}}, "options.png_b64"),
        ({"op": "sample", "backend": "pca", "options": {"x": [{"png_b64": long}]}}, "options.x[0].png_b64"),
        ({"op": "walk", "backend": "pca", "keyframes": [{"seed": 1, "options": {"png_b64": long}}, {"seed": 2}]},
         "keyframes[0].options.png_b64"),
        ({"op": "roundtrip", "backend": "pca", "image": {"png_b64": "A" * 8, "x": {"png_b64": long}}},
         "image.x.png_b64"),
    ]:
        with pytest.raises(InputError) as err:
            parse_spec(spec, settings, check_backend=False)
        assert one_line(err.value).startswith(f"{field}: at most {settings.max_spec_chars} characters"), err.value
    many = {f"k{i}": {"png_b64": "A" * settings.max_spec_chars} for i in range(200)}  # each within the bound
    with pytest.raises(InputError, match="spec: larger than"):
        parse_spec({"op": "sample", "backend": "pca", "options": many}, settings, check_backend=False)


def test_inline_images_count_toward_the_inline_budget_before_any_is_decoded(tmp_path):
    tight = load_settings(env={"STUDIO_HOME": str(tmp_path), "STUDIO_MAX_UPLOAD_BYTES": "5000",
                               "STUDIO_MAX_INLINE_BYTES": "9000"})
    frames = [{"image": {"png_b64": "A" * 4000}} for _ in range(5)]  # each under the per-image limit, not images
    with pytest.raises(InputError) as err:
        parse_spec({"op": "walk", "backend": "pca", "keyframes": frames}, tight, check_backend=False)
    assert one_line(err.value).startswith("keyframes[3].image.png_b64: the inline images of this spec are over 9000")
