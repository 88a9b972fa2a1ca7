"""Import a folder of images, a list of image files or a zip as a named image-folder dataset.

`import_images(settings, name, source)` writes the images into `<first data root>/<name>/` (sub-folders become
classes, as for `folder:PATH`) with a mark file (`studio.datasets.IMPORTED_MARK`), so that every dataset consumer
(train jobs, fits, maps) can use it by `name`. Nothing is decoded before its header is checked
(`studio.images.check_image_header`: bytes and pixels under the upload limits); the number of files and the total
bytes are bounded (for a zip, by the sizes it declares and again by the bytes actually read); an archive entry
that would land outside the dataset folder (an absolute path, `..`, a symlink) refuses the whole archive, and a
symlink in a folder is never followed. Files that are not images (or not readable, or over the limits) are
skipped and counted. The dataset appears all at once: it is written under a hidden staging folder, then renamed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from studio.config import Settings
from studio.datasets import BUILDERS, IMAGE_SUFFIXES, IMPORTED_MARK, imported_datasets
from studio.errors import InputError, NotFound, clip
from studio.spec import checked_name

MAX_FILES = 20_000  # entries of an archive or files of a folder, images or not
MAX_TOTAL_BYTES = 1_000_000_000  # all images of one import together
MAX_DEPTH = 4  # sub-folder levels kept (deeper paths are flattened into their first MAX_DEPTH levels)
_PART = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class ImportReport:
    """What an import did: the dataset's name, images written, their bytes, classes, and files skipped by reason."""

    name: str
    images: int = 0
    bytes: int = 0
    classes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """One line for a person: `imported dataset 'x': 20 images, 2 classes (skipped 3: 2 not images, ...)`."""
        classes = f", {len(self.classes)} classes" if self.classes else ""
        skipped = sum(self.skipped.values())
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        tail = f" (skipped {skipped}: {why})" if skipped else ""
        return f"imported dataset {self.name!r}: {self.images} images{classes}, {self.bytes} bytes{tail}"

    def to_json(self) -> dict:
        return {"name": self.name, "images": self.images, "bytes": self.bytes, "classes": self.classes,
                "skipped": dict(self.skipped)}


def dataset_name(name: str, settings: Settings) -> str:
    """`name` if it can name a new imported dataset: a valid name, no built-in's, not already a data-root entry."""
    try:
        checked_name(name, "dataset")
    except ValueError as exc:
        raise InputError(f"dataset name {clip(name)!r}: {exc}") from None
    if name in BUILDERS:
        raise InputError(f"dataset name {name!r} is a built-in dataset's; choose another name")
    for root in settings.data_root_paths:
        if os.path.lexists(root / name):
            what = "an imported dataset" if name in imported_datasets(settings) else "a folder of the data root"
            raise InputError(f"dataset name {name!r} is taken ({what}); choose another name or "
                             f"`studio datasets remove {name}` first")
    return name


def _relative(raw: str) -> PurePosixPath | None:
    """An archive or upload path as a safe relative path, or None when it would escape (absolute, `..`, drive)."""
    text = raw.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or "\0" in text:
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return PurePosixPath(*parts)


def _hidden(rel: PurePosixPath) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.parts)


class _Writer:
    """Checks and writes the images of one import into a staging folder, counting what it skips."""

    def __init__(self, settings: Settings, name: str, max_files: int, max_total_bytes: int) -> None:
        self.settings = settings
        self.report = ImportReport(name)
        self.max_files, self.max_total_bytes = max_files, max_total_bytes
        self.seen = 0
        self.used: set[str] = set()
        self.pending: list[tuple[PurePosixPath, bytes, str]] = []

    def count(self) -> None:
        self.seen += 1
        if self.seen > self.max_files:
            raise InputError(f"more than {self.max_files} files to import; import fewer at a time")

    def skip(self, reason: str) -> None:
        self.report.skipped[reason] = self.report.skipped.get(reason, 0) + 1

    def add(self, rel: PurePosixPath, data: bytes) -> None:
        """One file: kept if its header shows an image within the limits and it decodes; skipped otherwise."""
        from studio.images import FORMATS, check_image_header, open_checked

        if rel.suffix.lower() not in IMAGE_SUFFIXES or _hidden(rel):
            self.skip("not images")
            return
        if len(data) > self.settings.max_upload_bytes:
            self.skip("over the size limits")
            return
        try:
            check_image_header(data, self.settings.max_upload_pixels, self.settings.max_upload_bytes)
        except InputError as exc:
            self.skip("over the size limits" if "limit is" in str(exc) else "not readable images")
            return
        try:
            im = open_checked(data, self.settings.max_upload_bytes, self.settings.max_upload_pixels)
        except InputError:
            self.skip("not readable images")
            return
        if self.report.bytes + len(data) > self.max_total_bytes:
            raise InputError(f"the images to import hold more than {self.max_total_bytes} bytes; import fewer")
        self.report.bytes += len(data)
        fmt = (im.format or "PNG").upper()
        suffix = {"JPEG": ".jpg"}.get(fmt, f".{fmt.lower()}") if fmt in FORMATS else rel.suffix.lower()
        self.pending.append((rel, data, suffix))

    def commit(self) -> ImportReport:
        """Write the kept images under a hidden staging folder of the first data root, then rename it into place."""
        if not self.pending:
            raise InputError(f"nothing to import: no images found ({self.report.line().split(': ', 1)[1]})")
        rels = [r for r, _, _ in self.pending]
        # One folder holding everything (a zip of a folder) is not a class: drop it.
        while all(len(r.parts) > 1 for r in rels) and len({r.parts[0] for r in rels}) == 1:
            rels = [PurePosixPath(*r.parts[1:]) for r in rels]
        root = self.settings.data_root_paths[0]
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".import-{uuid.uuid4().hex[:12]}"
        target = root / self.report.name
        classes: set[str] = set()
        try:
            staging.mkdir()
            for i, (rel, (_, data, suffix)) in enumerate(zip(rels, self.pending, strict=True)):
                folders = [_PART.sub("_", p).strip("._") or "_" for p in rel.parts[:-1]][:MAX_DEPTH]
                stem = _PART.sub("_", PurePosixPath(rel.name).stem).strip("._")[:60] or "image"
                file = f"{stem}{suffix}"
                key = "/".join([*folders, file]).lower()
                if key in self.used:
                    file = f"{stem}-{i}{suffix}"
                    key = "/".join([*folders, file]).lower()
                self.used.add(key)
                folder = staging.joinpath(*folders)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / file).write_bytes(data)
                if folders:
                    classes.add("/".join(folders))
            self.report.images = len(self.pending)
            self.report.classes = sorted(classes)
            (staging / IMPORTED_MARK).write_text(json.dumps(self.report.to_json(), sort_keys=True) + "\n")
            if os.path.lexists(target):  # another import took the name meanwhile
                raise InputError(f"dataset name {self.report.name!r} is taken; choose another name")
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.report


def _zip_entries(path: Path, writer: _Writer) -> Iterator[tuple[PurePosixPath, bytes]]:
    """The files of a zip, refusing the archive when an entry escapes or is a link, or when the declared sizes or
    the bytes actually read exceed the limits."""
    limit = writer.settings.max_upload_bytes
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{clip(path.name)!r} is not a readable zip ({clip(exc, 80)})") from None
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > writer.max_files:
            raise InputError(f"the zip holds {len(infos)} files, more than {writer.max_files}; import fewer")
        declared = 0
        for info in infos:
            if _relative(info.filename) is None:
                raise InputError(f"the zip entry {clip(info.filename)!r} points outside the dataset folder; "
                                 f"nothing was imported")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InputError(f"the zip entry {clip(info.filename)!r} is a symbolic link; nothing was imported")
            declared += min(info.file_size, limit + 1)
        if declared > writer.max_total_bytes:
            raise InputError(f"the zip declares more than {writer.max_total_bytes} bytes of files; import fewer")
        for info in infos:
            writer.count()
            rel = _relative(info.filename)
            assert rel is not None  # checked above
            if info.file_size > limit:  # declared too big: never read
                writer.skip("over the size limits")
                continue
            try:
                with archive.open(info) as f:
                    data = f.read(limit + 1)  # a lying header cannot make us read more than the limit
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                if isinstance(exc, RuntimeError) and "encrypted" in str(exc):
                    writer.skip("encrypted")
                else:
                    writer.skip("not readable images")
                continue
            yield rel, data


def _folder_entries(folder: Path, writer: _Writer) -> Iterator[tuple[PurePosixPath, bytes]]:
    """The regular files under `folder`, never following a symlink (a linked file or folder is skipped)."""
    for here, dirs, files in os.walk(folder, followlinks=False):
        base = Path(here)
        dirs[:] = sorted(d for d in dirs if not (base / d).is_symlink())
        for name in sorted(files):
            writer.count()
            p = base / name
            if p.is_symlink() or not p.is_file():
                writer.skip("links or special files")
                continue
            yield PurePosixPath(p.relative_to(folder).as_posix()), _read_bounded(p, writer)


def _read_bounded(path: Path, writer: _Writer) -> bytes:
    """At most max_upload_bytes + 1 bytes of `path` (the writer refuses the file when it is over)."""
    with open(path, "rb") as f:
        return f.read(writer.settings.max_upload_bytes + 1)


def import_images(settings: Settings, name: str, source: str | Path | Sequence[str | Path], *,
                  max_files: int = MAX_FILES, max_total_bytes: int = MAX_TOTAL_BYTES) -> ImportReport:
    """Import `source` as the image-folder dataset `name` and return what was imported.

    `source`: a folder (its sub-folders become classes), a `.zip`, or a list of files (uploads: their names only;
    a zip among them is opened). One-line InputError for a bad or taken name, an escaping or oversized archive,
    too many files or bytes, or no image at all; nothing is left behind on error.
    """
    dataset_name(name, settings)
    writer = _Writer(settings, name, max_files, max_total_bytes)
    sources = [Path(source)] if isinstance(source, (str, Path)) else [Path(s) for s in source]
    if not sources:
        raise InputError("nothing to import: give a folder, a zip or image files")
    for src in sources:
        if src.is_dir():
            entries: Iterator[tuple[PurePosixPath, bytes]] = _folder_entries(src, writer)
        elif src.is_file() and src.suffix.lower() == ".zip":
            entries = _zip_entries(src, writer)
        elif src.is_file():
            writer.count()
            entries = iter([(PurePosixPath(_PART.sub("_", src.name) or "image"), _read_bounded(src, writer))])
        else:
            raise NotFound(f"{clip(src.name)!r} does not exist")
        for rel, data in entries:
            writer.add(rel, data)
    return writer.commit()


def remove_dataset(settings: Settings, name: str) -> None:
    """Delete the imported dataset `name` (only a folder that holds the import mark, never another data folder)."""
    if name not in imported_datasets(settings):
        raise NotFound(f"no imported dataset {clip(name)!r}")
    for root in settings.data_root_paths:
        folder = root / name
        if not folder.is_symlink() and (folder / IMPORTED_MARK).is_file():
            shutil.rmtree(folder)
            return


def describe(settings: Settings, name: str) -> dict:
    """The stored report of the imported dataset `name` (images, bytes, classes, skipped)."""
    for root in settings.data_root_paths:
        mark = root / name / IMPORTED_MARK
        if name in imported_datasets(settings) and mark.is_file():
            return json.loads(mark.read_text())
    raise NotFound(f"no imported dataset {clip(name)!r}")


__all__ = ["MAX_FILES", "MAX_TOTAL_BYTES", "ImportReport", "dataset_name", "describe", "import_images",
           "remove_dataset"]
