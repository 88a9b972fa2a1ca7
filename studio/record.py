"""The reproducibility record every output PNG carries (a PNG text chunk named `latent-studio`)."""

from __future__ import annotations

import json
import platform
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from PIL import Image, PngImagePlugin

from studio.errors import InputError, clip

CHUNK = "latent-studio"
RECORD_VERSION = 1
PRIVATE_SPEC_FIELDS = ("webhook",)  # spec fields a PNG record never carries


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("latent-studio", "torch", "numpy", "pillow", "diffusers", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def make_record(spec: dict, backend: dict, item: dict | None = None) -> dict:
    """A record: the job spec, the backend's description (name, version, model + sha256, device,
    dtype), what this item is (seed, index, frame...), and the library versions. The spec's `webhook` is left out:
    a shared PNG must not carry someone's URL (a replay runs without it)."""
    spec = {k: v for k, v in spec.items() if k not in PRIVATE_SPEC_FIELDS}
    return {"record_version": RECORD_VERSION, "spec": spec, **backend, "item": item or {},
            "versions": library_versions()}


def pnginfo(record: dict) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_itxt(CHUNK, json.dumps(record, sort_keys=True))
    return info


def save_png(im: Image.Image, path: str | Path, record: dict) -> None:
    im.save(path, format="PNG", pnginfo=pnginfo(record))


def read_record(source: str | Path | Image.Image) -> dict:
    """The record embedded in a PNG written by the studio."""
    name = clip(getattr(source, "filename", "") or "the image") if isinstance(source, Image.Image) else clip(source)
    from studio.images import FORMATS

    if isinstance(source, Image.Image) and source.format is not None and source.format not in FORMATS:
        # loading an image opened elsewhere could run an external program (EPS: Ghostscript)
        raise InputError(f"{name} is not a PNG (format {clip(source.format, 20)} is refused)")
    try:
        if isinstance(source, Image.Image):
            im = source
        else:
            from studio.config import load_settings
            from studio.images import check_image_header

            settings = load_settings()
            check_image_header(source, settings.max_upload_pixels, settings.max_upload_bytes, what="record image")
            im = Image.open(source, formats=FORMATS)
        im.load()
    except (OSError, ValueError) as exc:
        raise InputError(f"{name} is not a readable PNG ({clip(exc, 120)})") from None
    text = getattr(im, "text", {}) or {}
    if CHUNK not in text:
        raise InputError(f"{name} carries no Latent Studio record")
    try:
        return json.loads(text[CHUNK])
    except json.JSONDecodeError:
        raise InputError("the image's Latent Studio record is not valid JSON") from None
