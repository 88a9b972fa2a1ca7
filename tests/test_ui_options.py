"""The page's options form and model picking, on real backends (the toy, sd and gan Options classes, through the
plugin registry): each backend's Options schema becomes form controls with its own labels and ranges, the form's
values reach the job spec under their option names, a backend named without a model gets its own default model,
and the UI process never imports torch. (Served over HTTP with gradio_client: tests/test_ui_integration.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from studio.config import Settings, load_settings
from studio.errors import InputError


class Recorder:
    """A queue client that records the specs submitted (they fail at once: only the spec matters here)."""

    def __init__(self) -> None:
        self.submitted: list[dict] = []

    def submit(self, spec: dict, priority: int = 5) -> str:
        self.submitted.append(spec)
        return f"job{len(self.submitted)}"

    def status(self, job_id: str) -> dict:
        return {"id": job_id, "state": "FAILED", "progress": 0.0, "error": "recorded only"}

    def jobs(self, state: str | None = None, limit: int = 100) -> list:
        return []

    def workers(self) -> list:
        return []


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    """The toy and sd plugins only (the toy installed like any plugin package; sd with no model installed), under a
    fresh STUDIO_HOME."""
    from studio.queue.testing import install_toy_plugin
    from studio.registry import load_registry

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STUDIO_PLUGINS", "toy,sd")
    monkeypatch.delenv("STUDIO_CONFIG", raising=False)
    from studio_sd import models

    monkeypatch.setattr(models, "SHIPPED_DIR", tmp_path / "no-shipped-models")  # sd without models: toy is default
    monkeypatch.syspath_prepend(str(install_toy_plugin(tmp_path / "plugins")))
    load_registry(refresh=True)
    yield load_settings()
    monkeypatch.undo()
    load_registry(refresh=True)


def _fn(demo, name: str):
    """The handler of the page's event whose function is called `name`."""
    pages = ("studio.ui.app", "studio.ui.tabs.generate")  # another tab may have a handler of the same name
    return next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name
                and getattr(f.fn, "__module__", "") in pages)


def _shown(updates: list[dict]) -> dict[str, dict]:
    """The visible pool controls of a list of updates (or component configs), by label."""
    return {u["label"]: u for u in updates if u.get("visible")}


def test_schema_fields_become_controls_of_the_right_kind() -> None:
    from studio_gan.backend import GANOptions
    from studio_sd.backend import SDOptions

    from studio.queue.testing import ToyOptions
    from studio.ui.context import TEXT_ROW
    from studio.ui.options import Layout, form_fields

    toy, other = form_fields(ToyOptions.model_json_schema())
    kinds = {f.name: (f.kind, f.label, f.minimum, f.maximum) for f in toy}
    assert kinds == {"delay_ms": ("slider", "Delay Ms", 0, 60_000), "fail": ("text", "Fail", None, None),
                     "fail_seed": ("number", "Fail Seed", None, None), "hang": ("checkbox", "Hang", None, None),
                     "exit": ("number", "Exit", 0, 255)} and other == []  # nullable: a box that may stay empty
    sd = Layout.of("sd", SDOptions.model_json_schema(), TEXT_ROW)
    fields = {f.name: f for f in sd.slots.values()}
    assert set(fields) == {"width", "height", "scheduler", "strength"}  # the text row has prompt, steps, guidance
    assert fields["scheduler"].choices == ("ddim", "euler", "dpmpp") and fields["scheduler"].kind == "dropdown"
    assert (fields["strength"].kind, fields["strength"].minimum, fields["strength"].maximum) == ("slider", 0, 1)
    assert (fields["width"].kind, fields["width"].minimum, fields["width"].maximum) == ("number", 64, 2048)
    gan = Layout.of("gan", GANOptions.model_json_schema())
    lr = next(f for f in gan.slots.values() if f.name == "invert_lr")
    assert lr.kind == "slider" and lr.shown() == 0.08 and lr.step <= 0.01  # the default sits on the slider's grid
    schema = {"properties": {"tags": {"type": "array", "items": {"type": "string"}, "default": []},
                             **{f"n{i}": {"type": "integer", "minimum": 0, "maximum": 9} for i in range(9)}}}
    many = Layout.of("x", schema)
    assert len(many.slots) == 8 and many.elsewhere == ["tags", "n8"]  # beyond the pool: set in the JSON box
    assert "`tags`, `n8`" in many.note()


def test_the_form_maps_back_to_option_names_keeping_only_changes() -> None:
    from studio.queue.testing import ToyOptions
    from studio.ui.options import Layout, form_options, pool_order

    layout = Layout.of("toy", ToyOptions.model_json_schema())
    values = {slot: None for slot in pool_order()}
    for slot, field in layout.slots.items():
        values[slot] = field.shown()
    assert form_options(layout, "toy", list(values.values())) == {}  # all defaults: nothing sent
    by_name = {f.name: slot for slot, f in layout.slots.items()}
    values.update({by_name["delay_ms"]: 250.0, by_name["hang"]: True, by_name["fail_seed"]: 7.0,
                   by_name["fail"]: ""})
    options = form_options(layout, "toy", list(values.values()))
    assert options == {"delay_ms": 250, "hang": True, "fail_seed": 7}
    assert ToyOptions.model_validate(options).delay_ms == 250 and isinstance(options["delay_ms"], int)
    assert form_options(layout, "sd", list(values.values())) == {}  # the form shows the toy's fields, not sd's


def test_the_page_renders_each_backends_options_and_picks_its_model(settings) -> None:
    from studio.ui.app import build_app
    from studio.ui.catalog import Catalog
    from studio.ui.options import Layout, pool_order

    client = Recorder()
    demo = build_app(client, settings, catalog=Catalog(settings))
    config = demo.get_config_file()
    pool = [c["props"] for c in config["components"] if str(c["props"].get("elem_id", "")).startswith("ls-opt-")]
    shown = _shown(pool)
    assert set(shown) == {"Delay Ms", "Fail", "Fail Seed", "Hang", "Exit"}  # the toy is the default backend here
    assert (shown["Delay Ms"]["minimum"], shown["Delay Ms"]["maximum"], shown["Delay Ms"]["value"]) == (0, 60_000, 0)
    assert (shown["Exit"]["minimum"], shown["Exit"]["maximum"]) == (0, 255)
    model = next(c for c in config["components"] if c["props"].get("elem_id") == "model-picker")
    assert model["api_info"] == {"type": "string"}  # not Literal['toy']: any backend's model names are accepted

    on_backend = _fn(demo, "on_backend")
    out = on_backend("sd", "toy", None)
    assert out[0]["value"] != "toy" and out[1]["visible"] is True  # sd's own model (or none), and its text row
    sd = _shown([u for u in out if isinstance(u, dict) and "label" in u and u.get("__type__") == "update"])
    assert sd["Strength"]["minimum"] == 0 and sd["Strength"]["maximum"] == 1 and sd["Strength"]["value"] == 0.6
    assert not {"Prompt", "Steps", "Guidance", "Delay Ms", "Scheduler", "Width", "Height"} & set(sd)  # text row
    scheduler, width, _height = out[-3:]  # the text row's sampler/width/height (studio.ui.options.widget_updates)
    assert scheduler["choices"] == ["default", "ddim", "euler", "dpmpp"] and width["visible"] is True

    collect, generate = _fn(demo, "collect_form"), _fn(demo, "generate")
    layout = next(u for u in on_backend("toy", "sd-model", None) if isinstance(u, Layout))
    order = pool_order()
    values = [None] * len(order)
    for slot, field in layout.slots.items():  # what the page sends: each control's value, delay_ms moved to 300
        values[order.index(slot)] = 300 if field.name == "delay_ms" else field.shown()
    form = collect(layout, "toy", *values)
    assert form == {"delay_ms": 300}
    with pytest.raises(Exception, match="recorded only"):
        generate("toy", "", "", "", 0, 0, '{"fail_seed": 3}', form, 5, 2, 1.0, 0.0)
    spec = client.submitted[-1]
    assert spec["model"] == "toy" and spec["options"] == {"delay_ms": 300, "fail_seed": 3}  # JSON on top of form
    with pytest.raises(Exception, match=r"unknown model 'nope' for backend 'toy' \(available: toy\)"):
        generate("toy", "nope", "", "", 0, 0, "", {}, 0, 1, 1.0, 0.0)


def test_a_backend_named_without_its_model_gets_its_default() -> None:
    from studio.ui.catalog import Catalog

    def describe(settings: Settings, load_models: bool = False) -> dict:
        return {"backends": [
            {"name": "vae", "version": "1", "capabilities": [], "models": [{"name": "mnist"}, {"name": "mine"}]},
            {"name": "fashion", "version": "1", "capabilities": [],
             "models": [{"name": "broken", "error": "bad header"}, {"name": "shirts"}, {"name": "shoes"}]},
            {"name": "sd", "version": "1", "capabilities": ["text"], "models": []}], "errors": []}

    catalog = Catalog(load_settings(), describe=describe)
    assert catalog.default_model("fashion") == "shirts"  # the first usable one
    assert catalog.resolve_model("fashion", None) == catalog.resolve_model("fashion", " ") == "shirts"
    assert catalog.resolve_model("fashion", "mnist") == "shirts"  # the page's default for another backend
    assert catalog.resolve_model("fashion", "shoes") == "shoes" and catalog.resolve_model("vae", "mine") == "mine"
    assert catalog.resolve_model("sd", "org/model") == "org/model"  # a hub id or path: the worker resolves it
    assert catalog.resolve_model("sd", "anything") == "anything"  # no models listed: the worker decides
    with pytest.raises(InputError) as info:
        catalog.resolve_model("fashion", "mine")  # another backend's model, but not its default: a mistake
    assert str(info.value) == "unknown model 'mine' for backend 'fashion' (available: broken, shirts, shoes)"


@pytest.mark.slow
def test_the_ui_process_never_imports_torch(settings, tmp_path) -> None:
    """Build the page on the installed plugins, list what a job would need and show a dataset image (Explore's
    thumbnails), in a fresh process: no torch."""
    script = textwrap.dedent("""
        import sys
        from studio.config import load_settings
        from studio.ui.app import build_app
        from studio.ui.catalog import Catalog

        class Client:
            def jobs(self, state=None, limit=100): return []
            def workers(self): return []

        settings = load_settings()
        catalog = Catalog(settings)
        demo = build_app(Client(), settings, catalog=catalog)
        assert catalog.options_schema("toy")["properties"]["delay_ms"]["maximum"] == 60000
        catalog.resolve_model("toy", None)
        from studio.ui.scatter import DatasetImages  # the Explore tab's hover thumbnails and anomaly gallery
        from studio.datasets import load_arrays
        image, label = DatasetImages(settings).image("digits", "test", 3, scale=2)
        pixels, labels, classes = load_arrays("digits", "test", settings=settings)
        assert image.size == (56, 56) and label == classes[labels[3]], (image.size, label)
        assert image.resize((28, 28), 0).tobytes() == pixels[3].tobytes()  # 0: nearest neighbours
        print("torch" in sys.modules, sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers")))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                         env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False",
                              "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False []"
