"""The UI's pieces without processes: the job runner over a fake client, inputs and records, safe-launch rules,
views, the catalog, and the page's tabs and named endpoints."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.config import Settings, load_settings
from studio.errors import InputError, NotFound
from studio.record import make_record, save_png

ENDPOINTS = {"generate", "img2img", "interpolate", "edit", "traverse", "analogy", "walk", "fit_vector_dataset",
             "fit_vector_picks", "compress", "project", "anomalies", "train", "import_dataset", "cancel", "retry",
             "replay", "plugins", "submit", "status", "jobs"}
TABS = ["Generate", "Img2Img", "Interpolate", "Edit", "Latent tools", "Traverse", "Analogy", "Walk", "Compress",
        "Sweeps", "Explore", "Gallery", "Train", "Queue", "Plugins"]  # the Latent tools tab holds three of its own


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STUDIO_CONFIG", raising=False)
    for name in ("STUDIO_UI_AUTH", "STUDIO_UI_TOKEN", "STUDIO_MAX_UPLOAD_BYTES", "STUDIO_MAX_UPLOAD_PIXELS"):
        monkeypatch.delenv(name, raising=False)
    return load_settings()


class FakeClient:
    """An in-process stand-in for StudioClient: jobs follow a scripted list of states."""

    def __init__(self, root: Path, script: list[dict] | None = None, error: str | None = None) -> None:
        self.root = root
        self.script = script or [{"state": "QUEUED", "progress": 0.0, "message": ""},
                                 {"state": "RUNNING", "progress": 0.5, "message": "decoding"},
                                 {"state": "SUCCEEDED", "progress": 1.0, "message": "done"}]
        self.error = error
        self.submitted: list[dict] = []
        self.calls = 0

    def submit(self, spec: dict, priority: int = 5) -> str:
        if spec.get("backend") == "missing":
            raise NotFound("unknown backend 'missing' (installed: vae)")
        self.submitted.append(spec)
        return f"job{len(self.submitted)}"

    def status(self, job_id: str) -> dict:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return {"id": job_id, "op": "sample", "started": 10.0, "finished": 10.25, "error": self.error, **step}

    def result(self, job_id: str) -> dict:
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "sample_000.png"
        Image.new("L", (8, 8), 200).save(path)
        return {"id": job_id, "metrics": {"seeds": [0]}, "artifacts": [
            {"name": "sample_000.png", "kind": "image", "key": f"jobs/{job_id}/a1/sample_000.png",
             "size": path.stat().st_size},
            {"name": "gone.png", "kind": "image", "key": f"jobs/{job_id}/a1/gone.png", "size": 10}]}

    def artifact_path(self, job_id: str, name: str) -> Path:  # storage as a folder: a listed file may be gone
        path = self.root / job_id / name
        if not path.is_file():
            raise NotFound(f"artifact {name!r} of job {job_id} is listed but missing from storage")
        return path

    def artifact_bytes(self, job_id: str, name: str) -> bytes:
        return self.artifact_path(job_id, name).read_bytes()

    def cancel(self, job_id: str) -> dict:
        return {"id": job_id, "state": "CANCELLED"}

    def retry(self, job_id: str) -> str:
        return "retried"

    def replay_job(self, job_id: str, priority: int | None = None) -> str:
        return "replayed"

    def jobs(self, state: str | None = None, limit: int = 100) -> list[dict]:
        return []

    def workers(self) -> list[dict]:
        return []


def _describe(settings: Settings, load_models: bool = True) -> dict:
    return {"backends": [
        {"name": "gan", "version": "0.1", "capabilities": ["sample", "decode"], "models": [
            {"name": "faces", "sha256": "11" * 32, "path": "/w/faces.safetensors"}]},
        {"name": "sd", "version": "0.2", "capabilities": ["sample", "decode", "text"], "models": []},
        {"name": "vae", "version": "0.1.0", "capabilities": ["sample", "encode", "decode"], "models": [
            {"name": "mnist", "sha256": "ab" * 32, "path": "/w/mnist.safetensors"},
            {"name": "mine", "sha256": "cd" * 32, "path": "/w/mine.safetensors"}]},
        {"name": "broken", "version": "9", "capabilities": [], "models": [], "error": "OSError: no weights"}],
        "errors": [{"plugin": "bad", "error": "ImportError: no module named bad_dep"}]}


# ----- the job runner -----

def test_runner_follows_progress_and_returns_artifacts(tmp_path) -> None:
    from studio.ui.jobs import JobRunner

    client = FakeClient(tmp_path)
    seen: list[tuple[float, str]] = []
    done = JobRunner(client, poll_s=0.001).run({"op": "sample", "backend": "vae", "model": None},
                                               progress=lambda f, desc="": seen.append((f, desc)))
    assert client.submitted == [{"op": "sample", "backend": "vae"}]  # None values are left out
    assert [f for f, _ in seen] == [0.0, 0.5, 1.0]
    assert seen[0][1] == "queued · waiting for a worker" and seen[1][1] == "running · decoding"
    assert done.job_id == "job1" and done.metrics == {"seeds": [0]}
    assert done.images("sample_") == [str(tmp_path / "job1" / "sample_000.png")]  # the missing file is left out
    assert done.path("gone.png") is None and done.seconds() == 0.25
    assert done.summary() == "✓ job `job1` (sample) finished in 0.25 s"


@pytest.mark.parametrize(("state", "error", "message"), [
    ("FAILED", "RuntimeError: the plugin exploded", "RuntimeError: the plugin exploded"),
    ("CANCELLED", None, "job job1 was cancelled")])
def test_runner_turns_a_failed_job_into_its_message(tmp_path, state, error, message) -> None:
    from studio.ui.jobs import JobFailed, JobRunner

    client = FakeClient(tmp_path, script=[{"state": state, "progress": 0.2, "message": ""}], error=error)
    with pytest.raises(JobFailed) as info:
        JobRunner(client, poll_s=0.001).run({"op": "sample", "backend": "vae"})
    assert str(info.value) == message


def test_runner_gives_up_after_its_timeout(tmp_path) -> None:
    from studio.ui.jobs import JobFailed, JobRunner

    client = FakeClient(tmp_path, script=[{"state": "QUEUED", "progress": 0.0, "message": ""}])
    with pytest.raises(JobFailed, match="still QUEUED"):
        JobRunner(client, poll_s=0.001, timeout_s=0.02).run({"op": "sample", "backend": "vae"})


def test_errors_reach_the_page_as_one_escaped_line() -> None:
    import gradio as gr

    from studio.ui.jobs import one_line, ui_errors

    assert one_line(InputError("bits must be between 1 and 12")) == "bits must be between 1 and 12"
    assert one_line(ValueError("first line\n  Traceback (most recent call last):\n  x")) == "ValueError: first line"
    assert len(one_line(RuntimeError("x" * 2000))) == 400

    @ui_errors
    def handler(kind: str) -> str:
        if kind == "input":
            raise InputError("unknown model '<b>x</b>'")
        if kind == "bug":
            raise KeyError("oops")
        return "fine"

    assert handler("ok") == "fine"
    with pytest.raises(gr.Error) as info:
        handler("input")
    assert info.value.message == "unknown model '&lt;b&gt;x&lt;/b&gt;'"  # the pop-up renders HTML: escaped
    with pytest.raises(gr.Error) as info:
        handler("bug")
    assert info.value.message == "KeyError: 'oops'"


# ----- safe launch -----

def test_loopback_needs_no_auth_but_any_other_host_does(settings) -> None:
    from studio.ui.security import launch_auth

    assert launch_auth(settings, "127.0.0.1") is None
    for host, share in (("0.0.0.0", False), ("192.168.1.5", False), ("127.0.0.1", True)):
        with pytest.raises(InputError, match="refusing to serve the UI"):
            launch_auth(settings, host, share)


def test_auth_from_user_password_or_token(settings) -> None:
    import dataclasses

    from studio.ui.security import launch_auth

    with_auth = dataclasses.replace(settings, ui_auth="ana:correct-horse")
    assert launch_auth(with_auth, "0.0.0.0") == ("ana", "correct-horse")
    for bad in ("no-colon", "ana:", ":pw-long-enough", "ana:short"):
        with pytest.raises(InputError, match="STUDIO_UI_AUTH"):
            launch_auth(dataclasses.replace(settings, ui_auth=bad), "0.0.0.0")
    token = "t0k3n-" + "x" * 20
    check = launch_auth(dataclasses.replace(settings, ui_token=token), "0.0.0.0", share=True)
    assert check("anyone", token) is True and check("anyone", token[:-1]) is False
    with pytest.raises(InputError, match="STUDIO_UI_TOKEN"):
        launch_auth(dataclasses.replace(settings, ui_token="short"), "0.0.0.0")


def test_serve_refuses_an_open_host_before_building_anything(settings) -> None:
    from studio.ui import launch_kwargs, serve
    from studio.ui.artifacts import shelf_root

    with pytest.raises(InputError, match="without auth"):
        serve(settings, host="0.0.0.0", port=0, client=None)
    kwargs = launch_kwargs(settings, "127.0.0.1", 7861)
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["auth"] is None and kwargs["share"] is False
    assert kwargs["max_file_size"] == settings.max_upload_bytes
    assert kwargs["allowed_paths"] == [str(shelf_root(settings))]  # copies of artifacts only, never the store
    assert kwargs["blocked_paths"] == [str(settings.store_path)]


# ----- inputs and records -----

def _png(path: Path, size: tuple[int, int], value: int = 0) -> Path:
    Image.new("L", size, value).save(path)
    return path


def test_uploads_are_checked_for_bytes_and_pixels(settings, tmp_path) -> None:
    import dataclasses

    from studio.ui.inputs import upload_ref

    ref = upload_ref(str(_png(tmp_path / "ok.png", (30, 20), 9)), settings)
    decoded = Image.open(io.BytesIO(base64.b64decode(ref["png_b64"])))
    assert decoded.size == (30, 20) and decoded.format == "PNG"
    tight = dataclasses.replace(settings, max_upload_pixels=500)
    with pytest.raises(InputError, match="30x20 pixels; the limit is 500"):
        upload_ref(str(tmp_path / "ok.png"), tight)
    with pytest.raises(InputError, match="the limit is 10"):
        upload_ref(str(tmp_path / "ok.png"), dataclasses.replace(settings, max_upload_bytes=10))
    (tmp_path / "fake.png").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="not a readable image"):
        upload_ref(str(tmp_path / "fake.png"), settings)
    with pytest.raises(InputError, match="upload one first"):
        upload_ref(None, settings)


def test_a_drawing_becomes_white_ink_on_black(settings) -> None:
    from studio.ui.inputs import sketch_ref

    canvas = np.zeros((60, 60, 4), dtype=np.uint8)  # transparent
    with pytest.raises(InputError, match="empty"):
        sketch_ref({"composite": canvas}, settings)
    with pytest.raises(InputError, match="empty"):
        sketch_ref({"composite": None}, settings)
    canvas[20:40, 28:32] = (255, 255, 255, 255)
    ref = sketch_ref({"composite": canvas, "layers": [], "background": None}, settings)
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(ref["png_b64"]))).convert("L"))
    assert pixels[30, 30] == 255 and pixels[5, 5] == 0


def test_seeds_options_and_dataset_refs() -> None:
    from studio.ui.inputs import dataset_ref, parse_options, parse_seeds

    assert parse_seeds("1, 5, 7", "seeds") == [1, 5, 7] and parse_seeds("0-3", "seeds") == [0, 1, 2, 3]
    assert parse_seeds("  ", "seeds") == []
    with pytest.raises(InputError):
        parse_seeds("a, b", "seeds")
    assert parse_options("") == {} and parse_options('{"steps": 4}') == {"steps": 4}
    with pytest.raises(InputError, match="JSON object"):
        parse_options("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        parse_options("{steps: 4")
    assert dataset_ref("mnist", "test", 3.0) == {"dataset": "mnist", "split": "test", "index": 3}
    with pytest.raises(InputError):
        dataset_ref("mnist", "test", -1)


def _record(spec: dict, item: dict) -> dict:
    return make_record(spec, {"backend": spec["backend"], "model": "mnist"}, item)


def test_generate_params_restore_what_made_an_image(settings, tmp_path) -> None:
    from studio.ui.inputs import generate_params, read_png_record

    sample = {"op": "sample", "backend": "vae", "model": "mnist", "n": 16, "seed": 40, "temperature": 0.8,
              "truncation": 1.5, "options": {}}
    one = generate_params(_record(sample, {"index": 2, "seed": 42}))
    assert (one["seed"], one["n"], one["temperature"], one["truncation"]) == (42, 1, 0.8, 1.5)
    grid = generate_params(_record(sample, {"grid": True, "seeds": list(range(40, 56))}))
    assert (grid["seed"], grid["n"], grid["model"]) == (40, 16, "mnist")
    text = {"op": "sample", "backend": "sd", "seed": 3, "n": 1, "options": {"prompt": "a fox", "steps": 4,
                                                                            "height": 64}}
    restored = generate_params(_record(text, {"seed": 3}))
    assert restored["prompt"] == "a fox" and restored["steps"] == 4 and restored["options"] == {"height": 64}
    edit = {"op": "edit", "backend": "vae", "vector": "thick", "source": {"seed": 9}, "options": {}}
    assert generate_params(_record(edit, {"strength": 1.0}))["seed"] == 9
    with pytest.raises(InputError, match="no job spec"):
        generate_params({"item": {}})

    path = tmp_path / "made.png"
    save_png(Image.new("L", (8, 8)), path, _record(sample, {"seed": 41}))
    assert read_png_record(str(path), settings)["item"]["seed"] == 41
    with pytest.raises(InputError, match="carries no Latent Studio record"):
        read_png_record(str(_png(tmp_path / "plain.png", (8, 8))), settings)


def test_only_the_studios_own_files_are_trusted(settings, tmp_path, monkeypatch) -> None:
    from studio.ui.artifacts import shelf_root
    from studio.ui.inputs import trusted_path

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    stored = settings.store_path / "jobs" / "j1" / "grid.png"  # the store itself: another user's files live there
    copy = shelf_root(settings) / "j1-tag" / "grid.png"  # the served copy the page shows
    assert trusted_path(str(copy), settings) == str(copy.resolve())
    assert trusted_path(str(tmp_path / "gradio" / "abc" / "x.png"), settings).endswith("x.png")
    for outside in ("/etc/passwd", str(stored), str(settings.store_path / ".." / "secret.png"),
                    str(tmp_path / "other.png")):
        with pytest.raises(InputError, match="not one of the studio's images"):
            trusted_path(outside, settings)


# ----- views -----

def test_job_table_shows_progress_and_escapes_messages() -> None:
    from studio.ui.views import job_table

    assert "No jobs yet" in job_table([])
    html = job_table([
        {"id": "a1", "op": "sample", "backend": "vae", "model": "mnist", "state": "RUNNING", "progress": 0.42,
         "message": "decoding", "created": 100.0, "started": 100.0},
        {"id": "b2", "op": "edit", "backend": "vae", "state": "FAILED", "progress": 0.1,
         "error": "InputError: <script>alert(1)</script>", "created": 90.0, "attempts": 2}], now=160.0)
    assert 'style="width:42.0%"' in html and "42%" in html and "decoding" in html and "1 min ago" in html
    assert "<script>" not in html and "&lt;script&gt;" in html and "(attempt 2)" in html
    assert "ls-failed" in html and "sample · vae/mnist" in html


def test_plugin_cards_show_versions_capabilities_and_errors() -> None:
    from studio.ui.views import plugin_cards, without_paths, workers_view

    html = plugin_cards(_describe(None))
    assert "ImportError: no module named bad_dep" in html and "Load error: OSError: no weights" in html
    assert "v0.1.0" in html and "text" in html and "abababababab" in html and "No models installed" in html
    assert "No backends are installed" in plugin_cards({"backends": [], "errors": []})
    assert "No worker is running" in workers_view([])
    assert "serves" in workers_view([{"id": "w1", "hostname": "box", "device": "cpu", "backends": ["vae"]}])
    assert without_paths({"models": [{"path": "/x", "name": "m"}]}) == {"models": [{"location": "/x", "name": "m"}]}


def test_compression_rows_explain_a_baseline_that_cannot_get_that_small() -> None:
    from studio.ui.views import compression_rows, panel_label

    rows = compression_rows({"psnr": 21.5, "ssim": 0.81, "bytes_per_image": 12.0, "jpeg_bytes": None,
                             "jpeg_min_bytes": 331.0, "jpeg_psnr_at_min_bytes": 18.2, "jpeg_ssim_at_min_bytes": 0.5,
                             "webp_bytes": 12.0, "webp_psnr": 14.0, "webp_ssim": 0.3})
    assert rows[0] == ["latent codec", "21.50 dB", "0.810", "12 B"]
    assert rows[1][0] == "JPEG (smallest file it can make)" and rows[1][3] == "331 B"
    assert rows[2] == ["WebP (same bytes)", "14.00 dB", "0.300", "12 B"]
    assert panel_label("WebP", 14.0, 0.3, 12) == "WebP · 14.0 dB · SSIM 0.300 · 12 B"


def test_scatter_svg_has_one_point_per_image(studio_home) -> None:
    from studio.ui.scatter import DatasetImages, empty_scatter, scatter_html

    html = scatter_html([[0, 0], [1, 2], [3, -1]], [0, 1, -1], ["zero", "<one>"], "mnist", "test", "title")
    assert html.count("<circle") == 3 and 'data-c="&lt;one&gt;"' in html and "unlabelled" in html
    assert 'data-dataset="mnist"' in html and "ls-empty" in empty_scatter()
    images = DatasetImages(load_settings({"STUDIO_HOME": str(studio_home)}))  # the session's dataset cache
    uri = images.thumbnail("digits", "test", 5)
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert uri.startswith("data:image/png;base64,") and thumb.size == (84, 84)
    with pytest.raises(InputError, match="outside dataset"):
        images.image("digits", "test", 10_000)
    with pytest.raises(InputError, match="unknown split"):
        images.image("digits", "../etc", 0)


# ----- catalog, options, the page -----

def test_catalog_prefers_a_backend_with_models_and_filters_vectors(settings) -> None:
    import torch

    from studio.ui.catalog import Catalog
    from studio.vectorstore import save_vector

    catalog = Catalog(settings, describe=_describe)
    assert catalog.default_backend() == "vae" and catalog.models("vae") == ["mnist", "mine"]
    assert catalog.sha256("vae", "mine") == "cd" * 32 and catalog.sha256("vae", None) == "ab" * 32
    assert catalog.get("sd").can("text") and not catalog.get("vae").can("text")
    save_vector(settings, "vae", "ab" * 32, "thick", torch.ones(4), {"space": "z"})
    save_vector(settings, "vae", "cd" * 32, "other", torch.ones(4), {"space": "z"})
    assert [v["name"] for v in catalog.vectors("vae", "mnist")] == ["thick"]
    assert [v["name"] for v in catalog.vectors("vae", "mine")] == ["other"]


def test_job_base_adds_the_prompt_only_for_text_backends(settings, tmp_path) -> None:
    from studio.ui.catalog import Catalog
    from studio.ui.context import UIContext
    from studio.ui.jobs import JobRunner
    from studio.ui.scatter import DatasetImages

    client = FakeClient(tmp_path)
    ctx = UIContext(client, settings, Catalog(settings, describe=_describe), JobRunner(client),
                    DatasetImages(settings))
    assert ctx.job_base("vae", "mnist", "a fox", "", 20, 7.5, "") == {"backend": "vae", "model": "mnist",
                                                                      "options": {}}
    sd = ctx.job_base("sd", "", "a fox", "", 20, 0, '{"height": 64}')
    assert sd == {"backend": "sd", "model": None, "options": {"prompt": "a fox", "steps": 20, "height": 64}}
    layered = ctx.job_base("sd", "", "a fox", "", 0, 0, '{"height": 64}', {"height": 128, "strength": 0.3})
    assert layered["options"] == {"height": 64, "strength": 0.3, "prompt": "a fox"}  # form < text row < JSON box
    assert ctx.job_base("vae", "mine", "", "", 0, 0, "")["model"] == "mine"
    assert ctx.job_base("vae", "faces", "", "", 0, 0, "")["model"] == "mnist"  # gan's default: not for the vae
    with pytest.raises(InputError, match=r"^unknown model 'nope' for backend 'vae' \(available: mnist, mine\)$"):
        ctx.job_base("vae", "nope", "", "", 0, 0, "")
    with pytest.raises(InputError, match="pick a backend"):
        ctx.job_base("", None, "", "", 0, 0, "")


def test_strip_strengths_go_from_the_original_to_the_chosen_strength() -> None:
    from studio.ui.tabs.edit import strengths_for

    assert strengths_for(2.0, 5) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert strengths_for(-1.0, 3) == [0.0, -0.5, -1.0] and str(strengths_for(-1.0, 3)[0]) == "0.0"


def test_the_page_has_its_tabs_and_the_documented_endpoints(settings, tmp_path) -> None:
    from studio.ui.app import build_app
    from studio.ui.catalog import Catalog

    demo = build_app(FakeClient(tmp_path), settings, catalog=Catalog(settings, describe=_describe))
    config = demo.get_config_file()
    labels = [c["props"]["label"] for c in config["components"] if c.get("type") == "tabitem"]
    assert labels == TABS
    named = {d["api_name"] for d in config["dependencies"]
             if d.get("api_name") and d.get("api_visibility", "public") == "public"}
    assert named == ENDPOINTS
    doc = (Path(__file__).resolve().parents[1] / "docs" / "UI.md").read_text()
    assert all(f"`/{name}`" in doc for name in ENDPOINTS)
    # none of these backends can train: the Train tab says so and its button is off (it was an empty picker)
    by_id = {c.get("props", {}).get("elem_id"): c["props"] for c in config["components"]}
    assert "No installed backend can train" in by_id["train-status"]["value"]
    assert by_id["train-run"]["interactive"] is False


# ----- issue 14: what a creator found in a real browser -----

@pytest.mark.parametrize("n, cols, rows", [(16, 4, 4), (3, 2, 2), (5, 3, 2), (1, 1, 1), (64, 8, 8)])
def test_grid_png_is_near_square(n, cols, rows) -> None:
    """grid.png of a GAN MNIST sample of 16 was one 482x32 row; it is 4x4 (any n: ceil(sqrt(n)) columns)."""
    from studio.images import grid

    im = grid([Image.new("L", (28, 28), 200)] * n)
    assert im.size == (cols * 28 + (cols + 1) * 2, rows * 28 + (rows + 1) * 2)
    assert grid([Image.new("L", (28, 28))] * 4, cols=4).size == (4 * 28 + 5 * 2, 28 + 2 * 2)  # a strip stays a row


def test_progress_line_says_a_state_once() -> None:
    from studio.ui.jobs import _describe

    assert _describe({"state": "RUNNING", "message": "running"}) == "running"  # not "running · running"
    assert _describe({"state": "RUNNING", "message": "Running ", "eta_s": 4.2}) == "running · about 4 s left"
    assert _describe({"state": "RUNNING", "message": "encoding"}) == "running · encoding"
    assert _describe({"state": "QUEUED", "message": "queued"}) == "queued · waiting for a worker"


def test_counts_are_singular_for_one() -> None:
    from studio.ui.views import plural

    assert [plural(k, "image") for k in (0, 1, 2, 16)] == ["0 images", "1 image", "2 images", "16 images"]
    assert plural(1, "vector") == "1 vector" and plural(3, "axis", "axes") == "3 axes"


def test_restore_fills_blank_guidance_and_steps_with_the_default(settings, tmp_path) -> None:
    """A record without guidance or steps restores 0 (the backend's default), not a blank number field."""
    from studio.ui.catalog import Catalog
    from studio.ui.context import UIContext
    from studio.ui.inputs import generate_params
    from studio.ui.jobs import JobRunner
    from studio.ui.scatter import DatasetImages
    from studio.ui.tabs.generate import restore_outputs

    client = FakeClient(tmp_path)
    ctx = UIContext(client, settings, Catalog(settings, describe=_describe), JobRunner(client),
                    DatasetImages(settings))
    spec = {"op": "sample", "backend": "vae", "model": "mine", "seed": 1589412345, "n": 4}
    params = generate_params(make_record(spec, {"backend": "vae", "model": "mine"}, {"seed": 1589412346}))
    model, pending, seed, n, *_, steps, guidance, options = restore_outputs(ctx, params)
    assert model["value"] == "mine" and model["choices"] == ["mnist", "mine"]
    assert pending["backend"] == "vae" and seed == 1589412346 and n == 1
    assert (steps, guidance, options) == (0, 0, "")
    with_guidance = {**spec, "options": {"guidance": 7.5, "steps": 12}}
    *_, steps, guidance, options = restore_outputs(ctx, generate_params(make_record(with_guidance, {})))
    assert (steps, guidance, options) == (12, 7.5, "")
    again = restore_outputs(ctx, params)[1]
    assert again != pending  # each restore picks its backend anew, even the same one (its change must fire)


def test_fit_from_dataset_defaults_small_with_an_estimate_for_slow_encoders() -> None:
    from studio.ui.tabs.edit import FIT_LIMIT, encode_cost, fit_estimate

    assert FIT_LIMIT == 300  # it was 3000: about 38 minutes of GAN inversion on a CPU
    assert encode_cost("gan") == "costly" and encode_cost("vae") == "cheap" and encode_cost("nope") == "cheap"
    assert fit_estimate("vae", 300) == "Encodes 300 dataset images of the chosen attribute."
    slow = fit_estimate("gan", 300)
    assert "300 dataset images" in slow and "inversion" in slow and "about 4 min" in slow
    assert "about 38 min" in fit_estimate("gan", 3000) and "about 76 s" in fit_estimate("gan", 100)


def test_gan_compress_reports_progress_while_it_encodes(tmp_path) -> None:
    """Compress on gan sat at 0% for the whole inversion: the round trip forwards the encoder's steps."""
    import torch

    from studio.executor import Runtime, execute

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    calls: list[tuple[int, int, str]] = []
    try:
        runtime = Runtime(load_settings(env={"STUDIO_HOME": str(tmp_path / "home"), "STUDIO_DEVICE": "cpu"}))
        execute({"op": "roundtrip", "backend": "gan", "model": "mnist", "bits": 6,
                 "image": {"dataset": "mnist", "split": "test", "index": 0},
                 "options": {"invert_steps": 12, "invert_restarts": 2}},
                runtime, progress=lambda step, total, message="", preview=None: calls.append((step, total, message)))
    finally:
        torch.set_num_threads(threads)
    encoding = [(s, t) for s, t, m in calls if m.startswith("encoding")]
    assert len(encoding) >= 12, calls  # one report per inversion step
    fractions = [s / t for s, t in encoding]
    assert fractions == sorted(fractions) and 0 < fractions[0] < 0.2 and fractions[-1] == 1.0
    assert any(0.3 < f < 0.8 for f in fractions)  # the bar moves through the middle, not 0% then done
    messages = [m for _, _, m in calls]
    first = next(i for i, m in enumerate(messages) if m.startswith("encoding"))
    assert first < messages.index("measuring")  # reported while it encodes, before the round trip finishes


def test_the_ui_waits_for_a_page_slower_than_gradios_own_three_second_check() -> None:
    """A loaded CI machine rendered the page's HEAD in over 3 s: Gradio's launch check gave up at once ("When
    localhost is not accessible, a shareable link must be created"); serve() now waits for the page itself."""
    import http.server
    import threading

    from gradio import networking

    from studio.errors import StudioError
    from studio.ui import wait_reachable
    from studio.ui.testing import free_port

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
            time.sleep(3.5)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        assert not networking.url_ok(url)  # what Gradio's launch concludes
        wait_reachable(url, timeout_s=30)  # returns: the page answered
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(StudioError, match="did not answer"):
        wait_reachable(f"http://127.0.0.1:{free_port()}/", timeout_s=0.5)
