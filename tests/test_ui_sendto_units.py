"""Issue 14, items 1, 3 and 7 without a browser: "Send to" rows under the galleries (studio.ui.sendto), the live
view of a running job (studio.ui.jobs: JobRunner.watch, preview_image, live_line, generator handlers), and the
text row's scheduler, width and height widgets (studio.ui.options) from the form to the job spec and back from a
PNG record. The browser half (shortcuts, drop a PNG, the tabs filled): tests/test_ui_shortcuts_browser.py."""

from __future__ import annotations

import base64
import io

import gradio as gr
import pytest
from PIL import Image
from test_ui_options import Recorder  # a client that records the specs submitted

from studio.config import Settings, load_settings
from studio.errors import InputError


@pytest.fixture(scope="module")
def root(tmp_path_factory):  # noqa: ANN001, ANN201
    """The toy and sd plugins (sd without models: the toy is the default backend), a fresh STUDIO_HOME and Gradio
    folder, for the whole module (one page build serves every test)."""
    from studio_sd import models

    from studio.queue.testing import install_toy_plugin
    from studio.registry import load_registry

    path = tmp_path_factory.mktemp("sendto")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_HOME", str(path / "home"))
        mp.setenv("STUDIO_PLUGINS", "toy,sd")
        mp.setenv("GRADIO_TEMP_DIR", str(path / "gradio"))
        mp.delenv("STUDIO_CONFIG", raising=False)
        mp.setattr(models, "SHIPPED_DIR", path / "no-shipped-models")
        mp.syspath_prepend(str(install_toy_plugin(path / "plugins")))
        load_registry(refresh=True)
        yield path
    load_registry(refresh=True)


@pytest.fixture(scope="module")
def settings(root) -> Settings:  # noqa: ANN001
    return load_settings()


@pytest.fixture(scope="module")
def demo(settings):  # noqa: ANN001, ANN201
    from studio.ui.app import build_app
    from studio.ui.catalog import Catalog

    return build_app(Recorder(), settings, catalog=Catalog(settings))


@pytest.fixture
def tmp_path(root, request):  # noqa: ANN001, ANN201 - files under the module's Gradio folder (trusted paths)
    path = root / "gradio" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fn(demo, name: str):  # noqa: ANN001, ANN202 - the handler of the page's event whose function is `name`
    """(Of this issue's modules: another tab may have a handler of the same name.)"""
    mine = ("studio.ui.app", "studio.ui.sendto", "studio.ui.tabs.generate")
    return next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name
                and getattr(f.fn, "__module__", "") in mine)


def _record_png(path, backend: str, model: str, seed: int, options: dict):  # noqa: ANN001, ANN202
    from studio.record import make_record, save_png

    path.parent.mkdir(parents=True, exist_ok=True)
    spec = {"op": "sample", "backend": backend, "model": model, "seed": seed, "n": 1, "options": options}
    save_png(Image.new("L", (8, 8), 90), path, make_record(spec, {"backend": backend, "model": model},
                                                           {"seed": seed, "index": 0}))
    return path


# ----- the live view of a running job -----

class Steps:
    """A client whose job runs through `states` (one per status call), with a preview and an ETA."""

    def __init__(self, states: list[dict]) -> None:
        self.states = states
        self.calls = 0

    def status(self, job_id: str) -> dict:
        st = self.states[min(self.calls, len(self.states) - 1)]
        self.calls += 1
        return {"id": job_id, **st}

    def result(self, job_id: str) -> dict:
        return {"metrics": {"seeds": [1]}, "artifacts": []}


def _b64_png(size: int = 6) -> str:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def test_watch_yields_each_status_with_its_preview_and_eta_and_follow_ends_on_the_last() -> None:
    from studio.ui.jobs import JobFailed, JobRunner, live_line, preview_image

    preview = _b64_png()
    states = [{"state": "QUEUED"},
              {"state": "RUNNING", "progress": 0.25, "step": 5, "total": 20, "message": "denoising", "eta_s": 6.2,
               "preview_png_b64": preview},
              {"state": "SUCCEEDED", "progress": 1.0}]
    runner = JobRunner(Steps(states), poll_s=0.0)
    seen = list(runner.watch("j1"))
    assert [s["state"] for s in seen] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    line = live_line("j1", seen[1])
    assert "j1" in line and "step 5/20" in line and "about 6 s left" in line and "denoising" in line
    image = preview_image(seen[1])
    assert image is not None and image.size == (6, 6) and image.getpixel((0, 0))[:3] == (200, 10, 10)
    assert preview_image(seen[0]) is None and preview_image({"preview_png_b64": "not base64!"}) is None
    assert preview_image({"preview_png_b64": base64.b64encode(b"not a png").decode()}) is None
    assert JobRunner(Steps(states), poll_s=0.0).follow("j1")["state"] == "SUCCEEDED"
    cancelled = JobRunner(Steps([{"state": "RUNNING"}, {"state": "CANCELLED"}]), poll_s=0.0)
    with pytest.raises(JobFailed, match="j2 was cancelled"):
        cancelled.finish("j2", cancelled.follow("j2"))


def test_a_streaming_handler_keeps_its_user_and_fails_in_one_line() -> None:
    from studio.ui.jobs import CURRENT_USER, ui_errors

    @ui_errors
    def stream(n: int):  # noqa: ANN202
        for i in range(n):
            yield i, CURRENT_USER.get()
        raise RuntimeError("boom\nwith a traceback line")

    request = gr.Request(username="ada")  # what Gradio passes first
    steps = stream(request, 2)
    assert next(steps) == (0, "ada") and next(steps) == (1, "ada")
    with pytest.raises(gr.Error) as info:
        next(steps)
    assert info.value.message == "RuntimeError: boom"
    assert CURRENT_USER.get() is None  # reset between and after the steps


def test_generate_click_also_follows_the_job_live(demo) -> None:
    """A Generate click has a second, streaming handler for the preview and ETA; the API's /generate is unchanged
    (one result: the gallery, the status line, the summary)."""
    live = _fn(demo, "generate_live")
    import inspect

    assert inspect.isgeneratorfunction(live)
    outputs = {c.elem_id for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "generate_live"
               for c in f.outputs}
    assert outputs == {"generate-preview", "generate-live"}
    gen = next(f for f in demo.fns.values() if f.api_name == "generate")
    assert [c.elem_id for c in gen.outputs] == ["generate-gallery", "generate-status", "generate-record"]


class LiveJob(Steps):
    """A client with one sample job just submitted, running through `states`."""

    def jobs(self, state: str | None = None, limit: int = 100) -> list:
        import time

        return [{"id": "live1", "op": "sample", "state": "RUNNING", "created": time.time()}]


def test_the_live_view_shows_the_preview_and_eta_then_hides(settings) -> None:
    from studio.ui.catalog import Catalog
    from studio.ui.context import UIContext
    from studio.ui.jobs import JobRunner
    from studio.ui.scatter import DatasetImages
    from studio.ui.tabs.generate import follow_live

    preview = _b64_png(5)
    running = {"state": "RUNNING", "step": 2, "total": 8, "eta_s": 3.0, "message": "denoising"}
    client = LiveJob([running, {**running, "preview_png_b64": preview},
                      {**running, "preview_png_b64": preview}, {"state": "SUCCEEDED"}])
    ctx = UIContext(client, settings, Catalog(settings), JobRunner(client, poll_s=0.0), DatasetImages(settings))
    steps = list(follow_live(ctx)())
    assert steps[0][0] is not None and "about 3 s left" in steps[0][1] and "step 2/8" in steps[0][1]
    shown = steps[1][0]
    assert shown["visible"] is True and shown["value"].size == (5, 5)  # the job's preview, as an image
    assert len(steps) == 3  # an unchanged status is not sent again
    assert steps[-1] == ({"__type__": "update", "value": None, "visible": False}, "")  # then hidden


# ----- the text row's SD widgets -----

def test_sd_widgets_offer_the_backends_schedulers_and_sizes() -> None:
    from studio_sd.backend import SDOptions

    from studio.ui.options import DEFAULT_CHOICE, widget_choices, widget_fields, widget_options, widget_updates

    fields = widget_fields(SDOptions.model_json_schema())
    assert set(fields) == {"scheduler", "width", "height"}
    assert widget_choices(fields["scheduler"]) == [DEFAULT_CHOICE, "ddim", "euler", "dpmpp"]
    sizes = widget_choices(fields["width"])[1:]
    assert sizes[0] == 256 and 512 in sizes and all(64 <= s <= 2048 and s % 8 == 0 for s in sizes)
    assert widget_options(DEFAULT_CHOICE, DEFAULT_CHOICE, "") == {}
    assert widget_options("euler", "512", 320) == {"scheduler": "euler", "width": 512, "height": 320}
    with pytest.raises(InputError, match="^width: expected a number of pixels"):
        widget_options("ddim", "wide", None)
    kept, reset, _ = widget_updates(SDOptions.model_json_schema(), ("euler", 264, "default"))
    assert kept["value"] == "euler" and kept["visible"] and reset["value"] == 264  # typed sizes stay too
    hidden = widget_updates(None, ("euler", 512, 512))  # a backend without them: hidden and back to the default
    assert all(u["visible"] is False and u["value"] == DEFAULT_CHOICE for u in hidden)


def test_sd_widgets_feed_the_job_spec_and_leave_the_form(demo) -> None:
    from studio.ui.app import form_layout
    from studio.ui.catalog import Catalog
    from studio.ui.options import pool_order

    sd = form_layout(Catalog(load_settings()), "sd")
    assert {f.name for f in sd.slots.values()} == {"strength"}  # the text row shows scheduler, width, height
    values = [None] * len(pool_order())
    for slot, field in sd.slots.items():
        values[pool_order().index(slot)] = field.shown()
    collect = _fn(demo, "collect_form")
    assert collect(sd, "sd", *values, "dpmpp", 384, "default") == {"scheduler": "dpmpp", "width": 384}
    assert collect(sd, "toy", *values, "dpmpp", 384, 512) == {}  # the form shows another backend
    on_backend = _fn(demo, "on_backend")
    out = on_backend("sd", None, None, "euler", 512, "default")
    scheduler, width, height = out[-3:]
    assert scheduler["choices"][1:] == ["ddim", "euler", "dpmpp"] and scheduler["value"] == "euler"
    assert (width["value"], height["value"], width["visible"]) == (512, "default", True)
    assert all(u["visible"] is False for u in on_backend("toy", None, None, "euler", 512, 512)[-3:])


def test_a_record_restores_the_sd_widgets_and_keeps_other_options_in_the_json(settings, demo, tmp_path) -> None:
    png = _record_png(tmp_path / "sd.png", "sd", "tiny", 4242,
                      {"scheduler": "euler", "width": 256, "height": 320, "guidance": 3.0, "strength": 0.3})
    out = _fn(demo, "load_record")(str(png))
    from studio.ui.tabs.generate import restore_targets

    assert len(out) == 14
    model, pending, seed, n, _t, _tr, prompt, negative, scheduler, width, height, steps, guidance, options = out
    assert (model["value"], pending["backend"], seed, n) == ("tiny", "sd", 4242, 1)
    assert (scheduler, width, height, guidance, steps) == ("euler", 256, 320, 3.0, 0)
    assert options == '{"strength": 0.3}'  # the widgets' options left the JSON box
    _ = restore_targets  # the components these fill, in this order
    plain = _record_png(tmp_path / "plain.png", "toy", "toy", 1, {})
    again = _fn(demo, "load_record")(str(plain))
    assert again[8:11] == ("default",) * 3


# ----- Send to -----

def test_chosen_image_is_the_selected_one_else_the_first() -> None:
    from studio.ui.sendto import chosen_image

    items = [("/tmp/gradio/a.png", "seed 1"), ("/tmp/gradio/b.png", "seed 2")]
    assert chosen_image(items, None) == "/tmp/gradio/a.png"
    assert chosen_image(items, "/tmp/gradio/b.png") == "/tmp/gradio/b.png"
    assert chosen_image([{"image": {"path": "/x/c.png"}, "caption": None}]) == "/x/c.png"
    with pytest.raises(InputError, match="no image to send"):
        chosen_image([], None)


def test_send_to_rows_fill_each_target_and_open_its_tab(settings, demo, tmp_path) -> None:
    from studio.ui.sendto import TARGETS

    buttons = [b for b in demo.blocks.values() if isinstance(b, gr.Button)
               and any(str(c).startswith("ls-send-") for c in (b.elem_classes or []))]
    rows = {}
    for b in buttons:
        rows.setdefault(b.value, []).append(b)
    assert {"Send to Edit", "Send to Interpolate", "Send to Compress", "Send to Generate"} <= set(rows)
    assert len(rows["Send to Edit"]) >= 4  # Generate, Interpolate, Compress, Explore, Queue galleries
    img2img_on_page = any(t.tab == "img2img" for t in TARGETS) and "img2img" in {
        getattr(b, "id", None) for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    assert all(b.visible is img2img_on_page for b in rows.get("Send to Img2Img", []))  # no tab: hidden

    config = demo.get_config_file()["components"]
    for gallery in ("generate-gallery", "interpolate-frames", "compress-panels", "queue-history"):
        props = next(c["props"] for c in config if c["props"].get("elem_id") == gallery)
        assert props["interactive"] is False, gallery  # read by the row, still a result view (no upload area)

    png = _record_png(tmp_path / "out.png", "toy", "toy", 7, {"delay_ms": 5})
    items = [(str(png), "seed 7")]
    kind, image, tabs = _fn(demo, "send_to_edit")(items, None)
    assert kind == "Image" and image["value"] == str(png.resolve()) and image["visible"]
    assert tabs.selected == "edit"
    kind, image, tabs = _fn(demo, "send_to_compress")(items, None)
    assert kind == "Upload" and image["value"] == str(png.resolve()) and tabs.selected == "compress"
    assert _fn(demo, "send_to_interpolate")(items, None)[2].selected == "interpolate"
    if img2img_on_page:  # the Img2Img tab (when the page has it) takes the image as its input
        image, tabs = _fn(demo, "send_to_img2img")(items, "")
        assert image["value"] == str(png.resolve()) and tabs.selected == "img2img"
    *restored, tabs = _fn(demo, "send_to_generate")(items, None)
    assert tabs.selected == "generate" and restored[1]["backend"] == "toy" and restored[2] == 7
    assert restored[-1] == '{"delay_ms": 5}'
    outside = tmp_path.parents[1] / "elsewhere.png"
    outside.write_bytes(png.read_bytes())
    with pytest.warns(UserWarning, match="not one of the studio's images"):  # one line; nothing changes
        assert all(isinstance(u, type(gr.skip())) for u in _fn(demo, "send_to_edit")([(str(outside), "")], None))
    with pytest.warns(UserWarning, match="no image to send"):
        assert len(_fn(demo, "send_to_compress")([], None)) == 3
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    with pytest.warns(UserWarning, match="carries no Latent Studio record"):
        assert len(_fn(demo, "send_to_generate")([(str(plain), "")], None)) == 15


def test_a_dropped_png_without_a_record_is_one_line_and_changes_nothing(settings, demo, tmp_path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    with pytest.warns(UserWarning) as caught:
        *untouched, emptied = _fn(demo, "dropped_record")(str(plain))
    message = str(caught[0].message)
    assert message.startswith("dropped PNG:") and "record" in message and "\n" not in message
    assert emptied is None and all(isinstance(u, type(gr.skip())) for u in untouched)  # Generate unchanged
    png = _record_png(tmp_path / "r.png", "toy", "toy", 11, {})
    *restored, tabs, drop = _fn(demo, "dropped_record")(str(png))
    assert restored[2] == 11 and tabs.selected == "generate" and drop is None  # emptied for the next drop


def test_the_page_script_is_served_with_the_page(monkeypatch) -> None:
    from studio.ui.components import PAGE_JS, StudioBlocks

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, *a, **k: seen.update(k))
    StudioBlocks().launch(prevent_thread_lock=True)
    assert seen["js"] == PAGE_JS
    for needed in ('-run"]', '-cancel"]', "#ls-drop-file input[type=file]", "metaKey", "'drop'"):
        assert needed in PAGE_JS
