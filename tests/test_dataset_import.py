"""Datasets imported by name (studio.dataset_import): a folder or a zip of images becomes a dataset every consumer
reads by name; hostile archives (zip-slip, links, bombs, lying headers) and bad names are refused in one line and
leave nothing behind; a train job trains on an imported dataset and the new model samples."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.config import Settings, load_settings
from studio.dataset_import import import_images, remove_dataset
from studio.datasets import imported_datasets, load_dataset
from studio.errors import InputError, NotFound


@pytest.fixture
def home_settings(tmp_path: Path) -> Settings:
    """Settings over a fresh STUDIO_HOME (its own data root), so imports never touch the session's home."""
    return load_settings(env={"STUDIO_HOME": str(tmp_path / "home"), "STUDIO_DEVICE": "cpu"})


def _png(value: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def _huge_header_png(width: int = 13000, height: int = 13000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (decoding it would take ~170 MB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _folder(root: Path) -> Path:
    for i in range(6):
        cls = root / ("cats" if i % 2 else "dogs")
        cls.mkdir(parents=True, exist_ok=True)
        (cls / f"{i}.png").write_bytes(_png(i))
    (root / "notes.txt").write_text("not an image")
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def _leftovers(settings: Settings) -> list[str]:
    root = settings.data_root_paths[0]
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_a_folder_imports_as_a_named_dataset_with_classes(home_settings: Settings, tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    (src / "dogs" / "link.png").symlink_to(tmp_path / "src" / "dogs" / "0.png")  # a link is never followed
    report = import_images(home_settings, "pets", src)
    assert (report.images, report.classes) == (6, ["cats", "dogs"])
    assert report.skipped == {"not images": 1, "not readable images": 1, "links or special files": 1}
    assert report.line() == (f"imported dataset 'pets': 6 images, 2 classes, {report.bytes} bytes "
                             "(skipped 3: 1 links or special files, 1 not images, 1 not readable images)")
    assert imported_datasets(home_settings) == ["pets"]
    ds = load_dataset("pets", "train", settings=home_settings, shape=(1, 28, 28))  # by name, like a built-in
    assert tuple(ds.images.shape) == (6, 1, 28, 28) and ds.classes == ["cats", "dogs"]
    assert sorted(ds.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert _leftovers(home_settings) == ["pets"]  # no staging folder left


def test_a_zip_imports_without_its_top_folder_and_can_be_removed(home_settings: Settings, tmp_path: Path) -> None:
    archive = tmp_path / "digits.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(4):
            z.writestr(f"digits/{i}.png", _png(i))
        z.writestr("digits/.DS_Store", b"\0\0")
        z.writestr("__MACOSX/digits/._0.png", b"\0\0")
    report = import_images(home_settings, "zipped", archive)
    assert (report.images, report.classes, report.skipped) == (4, [], {"not images": 2})
    assert len(load_dataset("zipped", "train", settings=home_settings)) == 4
    remove_dataset(home_settings, "zipped")
    assert imported_datasets(home_settings) == [] and _leftovers(home_settings) == []
    with pytest.raises(NotFound, match="unknown dataset 'zipped'"):
        load_dataset("zipped", settings=home_settings)


@pytest.mark.parametrize("entry", ["../evil.png", "/abs/evil.png", "a/../../evil.png", "C:/evil.png"])
def test_zip_slip_refuses_the_whole_archive(home_settings: Settings, tmp_path: Path, entry: str) -> None:
    archive = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.png", _png(1))
        z.writestr(entry, _png(2))
    with pytest.raises(InputError, match="points outside the dataset folder; nothing was imported"):
        import_images(home_settings, "slip", archive)
    assert _leftovers(home_settings) == []  # nothing written, not even a staging folder
    assert not (tmp_path / "evil.png").exists() and not (home_settings.home / "evil.png").exists()


def test_a_symlink_entry_refuses_the_archive(home_settings: Settings, tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.png", _png(1))
        info = zipfile.ZipInfo("passwd.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="is a symbolic link"):
        import_images(home_settings, "links", archive)
    assert _leftovers(home_settings) == []


def test_oversize_images_are_skipped_from_their_header_and_bombs_are_bounded(home_settings: Settings,
                                                                            tmp_path: Path) -> None:
    """A 13000x13000 header is skipped without decoding; an entry that inflates past the byte limit is never read
    whole; an archive declaring more bytes than the import allows is refused before anything is read."""
    import tracemalloc

    settings = load_settings(env={"STUDIO_HOME": str(home_settings.home), "STUDIO_MAX_UPLOAD_BYTES": "100000"})
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("huge.png", _huge_header_png())
        z.writestr("inflates.png", b"\x89PNG" + b"\0" * 5_000_000)  # 5 MB of zeros: ~5 KB compressed
        z.writestr("fine.png", _png(3))
    tracemalloc.start()
    report = import_images(settings, "bomb", archive)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (report.images, report.skipped) == (1, {"over the size limits": 2})
    assert peak < 20_000_000  # neither the 169-megapixel image nor the 5 MB entry was held in memory
    with pytest.raises(InputError, match="declares more than 1000 bytes"):
        import_images(settings, "bomb2", archive, max_total_bytes=1000)
    with pytest.raises(InputError, match="more than 2"):
        import_images(settings, "many", archive, max_files=2)
    assert _leftovers(settings) == ["bomb"]


def test_a_zip_that_understates_an_entrys_size_is_never_read_past_it(home_settings: Settings, tmp_path: Path) -> None:
    """An entry whose headers declare 100 bytes but hold 3 MB: the import reads at most the per-image limit (100 KB
    here) of it, the CRC then fails: skipped as unreadable, nothing crashes, memory stays small."""
    import tracemalloc

    archive = tmp_path / "lie.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("lie.png", b"\x89PNG" + b"\0" * 3_000_000)
        z.writestr("fine.png", _png(4))
    raw = bytearray(archive.read_bytes())
    local, central = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")  # the first entry's two headers
    raw[local + 22:local + 26] = struct.pack("<I", 100)  # uncompressed size in the local header
    raw[central + 24:central + 28] = struct.pack("<I", 100)  # ... and in the central directory
    archive.write_bytes(bytes(raw))
    tracemalloc.start()
    settings = load_settings(env={"STUDIO_HOME": str(home_settings.home), "STUDIO_MAX_UPLOAD_BYTES": "100000"})
    report = import_images(settings, "liar", archive)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (report.images, report.skipped) == (1, {"not readable images": 1}) and peak < 1_000_000


def test_names_are_checked_and_a_taken_name_is_refused(home_settings: Settings, tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    import_images(home_settings, "mine", src)
    for name, message in (("mine", "dataset name 'mine' is taken \\(an imported dataset\\)"),
                          ("mnist", "is a built-in dataset's"),
                          ("../up", "dataset name '../up': dataset names use letters"),
                          ("", "dataset names use letters")):
        with pytest.raises(InputError, match=message):
            import_images(home_settings, name, src)
    (home_settings.data_root_paths[0] / "plain").mkdir()  # a folder of the data root is not replaced either
    with pytest.raises(InputError, match="a folder of the data root"):
        import_images(home_settings, "plain", src)
    with pytest.raises(InputError, match="nothing to import: no images found"):
        import_images(home_settings, "empty", [tmp_path / "src" / "notes.txt"])
    with pytest.raises(NotFound, match="no imported dataset 'plain'"):
        remove_dataset(home_settings, "plain")  # never deletes a folder it did not import
    assert _leftovers(home_settings) == ["mine", "plain"]


def test_the_datasets_cli_imports_lists_and_removes(studio_cli, tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    env = {"STUDIO_HOME": str(tmp_path / "home")}
    done = studio_cli("datasets", "import", "cli-set", str(src), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported dataset 'cli-set': 6 images, 2 classes")
    again = studio_cli("datasets", "import", "cli-set", str(src), env=env)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "is taken" in again.stderr
    listed = studio_cli("datasets", "list", env=env)
    assert "cli-set" in listed.stdout and "6 images, 2 classes" in listed.stdout


def test_a_train_job_trains_on_an_imported_dataset_and_the_model_samples(home_settings: Settings,
                                                                         tmp_path: Path) -> None:
    """The train op reads the imported dataset by name, sends samples after each epoch as its preview, and
    registers a model that a sample job then uses."""
    from studio.executor import Runtime, execute

    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(24):
            z.writestr(f"set/{i:02d}.png", _png(i, 28))
    import_images(home_settings, "uploaded", archive)
    runtime = Runtime(home_settings)
    previews: list = []

    def progress(step: int, total: int, message: str = "", preview: object = None) -> None:
        if preview is not None:
            previews.append((step, total, message, preview))

    spec = {"op": "train", "backend": "vae", "dataset": "uploaded", "name": "from-upload", "epochs": 2, "limit": 16,
            "options": {"batch_size": 8, "base_width": 4, "latent_dim": 4}}
    result = execute(spec, runtime, progress=progress)
    assert result.metrics["name"] == "from-upload" and result.metrics["metrics"]["train_images"] == 16
    assert [(s, t, m) for s, t, m, _ in previews] == [(2, 4, "epoch 1/2"), (4, 4, "epoch 2/2")]
    assert all(isinstance(p, Image.Image) and p.size == (122, 122) for *_, p in previews)  # 4x4 grids of 28 px
    sampled = execute({"op": "sample", "backend": "vae", "model": "from-upload", "seed": 1, "n": 2}, runtime)
    assert len([a for a in sampled.artifacts if a.kind == "image"]) >= 2


def test_the_train_tab_reads_only_uploads_and_estimates_the_time_left(tmp_path: Path, monkeypatch) -> None:
    """The Train tab imports only files in Gradio's upload folder (an API client naming a server path is refused),
    and its progress line estimates the time left from the whole run (the worker's estimate restarts each epoch)."""
    from studio.ui.tabs.train import progress_line, suggested_name, uploaded

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    upload = tmp_path / "gradio" / "abc" / "set.zip"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"PK")
    assert uploaded([str(upload)]) == [upload.resolve()] and uploaded({"path": str(upload)}) == [upload.resolve()]
    assert uploaded(None) == []
    for outside in (str(tmp_path / "secret"), str(tmp_path / "gradio" / ".." / "secret"), "/etc/passwd"):
        with pytest.raises(InputError, match="upload: that file was not uploaded to this page"):
            uploaded([outside])
    running = {"state": "RUNNING", "message": "epoch 2/4", "step": 25, "total": 100, "started": 1000.0}
    line = progress_line("j1", running, now=1010.0)
    assert line == "⏳ job `j1` · running · epoch 2/4 · step 25/100 · about 30 s left"
    assert progress_line("j1", {"state": "QUEUED"}) == "⏳ job `j1` · queued · waiting for a worker"
    assert suggested_name("/tmp/gradio/x/My faces (2).zip") == "My-faces-2" and suggested_name(None) == ""
