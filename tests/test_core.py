"""The core without models: specs, settings, roots, the registry, records, images."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from studio.config import load_settings, resolve_under
from studio.errors import InputError, NotFound
from studio.images import open_checked
from studio.record import read_record, save_png
from studio.registry import load_registry
from studio.spec import parse_spec


def test_spec_accepts_a_valid_job():
    spec = parse_spec({"op": "sample", "backend": "pca", "n": 4, "seed": 7})
    assert spec.n == 4 and spec.seed == 7 and spec.temperature == 1.0


@pytest.mark.parametrize("data, message", [
    ({"op": "paint", "backend": "pca"}, "unknown op 'paint'"),
    ({"op": "sample", "backend": "nope"}, "unknown backend 'nope'"),
    ({"op": "sample", "backend": "pca", "n": 0}, "n: Input should be greater than or equal to 1"),
    ({"op": "sample", "backend": "pca", "n": 10_000}, "the limit is"),
    ({"op": "sample", "backend": "pca", "seed": -1}, "seed"),
    ({"op": "sample", "backend": "pca", "options": {"prompt": "x"}}, "invalid options for backend 'pca'"),
    ({"op": "roundtrip", "backend": "pca", "dataset": "mnist", "bits": 13}, "bits must be between 1 and 12, got 13"),
    ({"op": "roundtrip", "backend": "pca"}, "give either a dataset or an image"),
    ({"op": "interpolate", "backend": "pca", "start": {"seed": 1}, "end": {}}, "give either a seed or an image"),
    ({"op": "edit", "backend": "pca", "vector": "../etc", "source": {"seed": 1}}, "vector names use letters"),
    ({"op": "sample", "backend": "pca", "colour": "red"}, "Extra inputs are not permitted"),
    ({"op": "evaluate", "backend": "pca", "n": 20000, "repeats": 4}, "n x repeats must be at most 60000"),
])
def test_bad_specs_get_one_clear_line(data, message):
    with pytest.raises((InputError, NotFound)) as info:
        parse_spec(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_image_limit_is_configurable(monkeypatch):
    monkeypatch.setenv("STUDIO_MAX_IMAGES", "4")
    with pytest.raises(InputError, match="limit is 4"):
        parse_spec({"op": "sample", "backend": "pca", "n": 5}, load_settings())


def test_settings_from_env_and_file(tmp_path, monkeypatch):
    (tmp_path / "config.toml").write_text('max_images = 12\ndevice = "cpu"\n')
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))
    monkeypatch.setenv("STUDIO_DEVICE", "cuda")
    s = load_settings()
    assert s.max_images == 12 and s.device == "cuda" and s.home == tmp_path
    monkeypatch.setenv("STUDIO_MAX_IMAGES", "many")
    with pytest.raises(InputError, match="STUDIO_MAX_IMAGES"):
        load_settings()


def test_paths_outside_roots_are_refused(tmp_path):
    root = tmp_path / "models"
    (root / "sd").mkdir(parents=True)
    assert resolve_under("sd", [root], "model") == (root / "sd").resolve()
    with pytest.raises(InputError, match="outside the configured roots"):
        resolve_under("../../etc/passwd", [root], "model")
    with pytest.raises(InputError, match="outside the configured roots"):
        resolve_under("/etc", [root], "model")


def test_registry_reports_broken_plugins_and_keeps_the_others(monkeypatch):
    from importlib.metadata import EntryPoint

    import studio.registry as reg

    broken = EntryPoint("broken", "no_such_module_xyz:register", reg.GROUP)
    real = list(reg.entry_points(group=reg.GROUP))
    monkeypatch.setattr(reg, "entry_points", lambda group: [*real, broken])
    r = load_registry(refresh=True)
    assert "pca" in r.backends
    assert any(e.plugin == "broken" and "No module named" in e.error for e in r.errors)
    with pytest.raises(NotFound, match="failed to load"):
        r.get("broken")
    load_registry(refresh=True)


def test_studio_plugins_env_restricts_loading(monkeypatch):
    monkeypatch.setenv("STUDIO_PLUGINS", "pca")
    try:
        r = load_registry(refresh=True)
        assert set(r.backends) == {"pca"}
    finally:
        monkeypatch.delenv("STUDIO_PLUGINS")
        load_registry(refresh=True)


def test_record_round_trips_through_png(tmp_path):
    path = tmp_path / "x.png"
    save_png(Image.new("L", (4, 4)), path, {"spec": {"op": "sample"}, "seed": 3})
    assert read_record(path)["seed"] == 3
    Image.new("L", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(InputError, match="carries no Latent Studio record"):
        read_record(tmp_path / "plain.png")


def test_uploads_are_checked(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    assert open_checked(buf.getvalue(), 10**6, 10**6).size == (64, 64)
    with pytest.raises(InputError, match="the limit is 10 bytes"):
        open_checked(buf.getvalue(), 10, 10**6)
    with pytest.raises(InputError, match="the limit is 100 pixels"):
        open_checked(buf.getvalue(), 10**6, 100)
    with pytest.raises(InputError, match="not a readable image"):
        open_checked(b"not an image at all", 10**6, 10**6)
    bad = tmp_path / "truncated.png"
    bad.write_bytes(buf.getvalue()[:60])
    with pytest.raises(InputError, match="not a readable image"):
        open_checked(bad, 10**6, 10**6)
    with pytest.raises(InputError, match="does not exist"):
        open_checked(tmp_path / "missing.png", 10**6, 10**6)


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from studio.cli import main, _register; _register(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert out.stdout.strip() == "False"


def test_dataset_cache_survives_concurrent_builders(tmp_path, monkeypatch):
    """Two workers building the same dataset cache at once both get the arrays, and one complete file remains."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from studio.datasets import _cached

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))
    settings = load_settings()
    arrays = {"images": np.arange(2_000_000, dtype=np.uint8), "labels": np.arange(10)}
    all_built = threading.Barrier(4)

    def build() -> dict:
        all_built.wait(timeout=30)  # every builder saves at the same moment
        return arrays

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _cached(settings, "race", build), range(4)))
    assert all(np.array_equal(r["images"], arrays["images"]) for r in results)
    assert sorted(p.name for p in settings.cache_path.iterdir()) == ["race.npz"]
    assert np.array_equal(_cached(settings, "race", lambda: {})["labels"], arrays["labels"])
