"""Turning what a creator gives the page (uploads, drawings, dataset picks, PNG records) into job inputs.

Uploads are checked for size in bytes and pixels (Settings.max_upload_bytes / max_upload_pixels) before
anything else reads them.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from studio.config import Settings
from studio.errors import InputError


def _png_b64(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def upload_ref(path: str | None, settings: Settings, what: str = "uploaded image") -> dict:
    """An uploaded file -> an inline ImageRef (re-encoded as PNG after the size checks)."""
    from studio.images import open_checked

    if not path:
        raise InputError(f"no {what}: upload one first")
    image = open_checked(path, settings.max_upload_bytes, settings.max_upload_pixels, what=what)
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    return {"png_b64": _png_b64(image)}


def sketch_ref(value: Any, settings: Settings) -> dict:
    """A Sketchpad / ImageEditor value -> an inline ImageRef of its composite; InputError when nothing is drawn."""
    import numpy as np
    from PIL import Image

    composite = value.get("composite") if isinstance(value, dict) else value
    if composite is None:
        raise InputError("the drawing is empty: draw something first")
    if isinstance(composite, str):
        from studio.images import open_checked

        composite = open_checked(composite, settings.max_upload_bytes, settings.max_upload_pixels, "drawing")
    image = composite if isinstance(composite, Image.Image) else Image.fromarray(np.asarray(composite))
    if image.width * image.height > settings.max_upload_pixels:
        raise InputError(f"the drawing is {image.width}x{image.height} pixels; the limit is "
                         f"{settings.max_upload_pixels}")
    if image.mode == "RGBA":  # transparent canvas: paint it black (ink is what was drawn)
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image).convert("RGB")
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    if grey.std() < 1.0:
        raise InputError("the drawing is empty: draw something first")
    return {"png_b64": _png_b64(image.convert("RGB"))}


def dataset_ref(dataset: str | None, split: str | None, index: int | float | None) -> dict:
    if not dataset:
        raise InputError("pick a dataset")
    if index is None or int(index) < 0:
        raise InputError("the dataset index must be 0 or more")
    return {"dataset": dataset, "split": split or "test", "index": int(index)}


def parse_seeds(text: str | None, what: str) -> list[int]:
    """'1, 5, 7' or '0-3' -> seeds."""
    from studio.cli.common import parse_ints

    if not text or not text.strip():
        return []
    seeds = parse_ints(text, what)
    if any(s < 0 for s in seeds):
        raise InputError(f"{what} must be 0 or more")
    return seeds


def parse_options(text: str | None) -> dict:
    """Backend options typed as a JSON object (empty -> {})."""
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"backend options must be a JSON object: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(value, dict):
        raise InputError("backend options must be a JSON object, like {\"steps\": 20}")
    return value


def read_png_record(path: str | None, settings: Settings) -> dict:
    """The reproducibility record of an uploaded or stored PNG (size-checked)."""
    from studio.images import open_checked
    from studio.record import read_record

    if not path:
        raise InputError("no image: pick or upload a PNG made by the studio")
    image = open_checked(path, settings.max_upload_bytes, settings.max_upload_pixels, what="image")
    return read_record(image)


def trusted_path(path: str | None, settings: Settings) -> str:
    """`path` if it lies in the artifact store or Gradio's upload cache (where the page's own files are);
    InputError otherwise (a gallery event names a path the browser sent: never trust it blindly)."""
    import os
    import tempfile
    from pathlib import Path

    if not path:
        raise InputError("no image selected")
    resolved = Path(path).resolve()
    roots = [Path(settings.store_path).resolve(),
             Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()]
    if not any(resolved == r or r in resolved.parents for r in roots):
        raise InputError("that file is not one of the studio's images")
    return str(resolved)


def generate_params(record: dict) -> dict:
    """Generate-tab parameters that reproduce an image from its record.

    A single sampled image restores its own seed with n=1; a grid restores the whole job; an image of any
    other job restores the backend, model, options and the seed of its source when it had one.
    """
    spec = record.get("spec") if isinstance(record, dict) else None
    if not isinstance(spec, dict):
        raise InputError("this record holds no job spec")
    item = record.get("item") or {}
    options = dict(spec.get("options") or {})
    params: dict[str, Any] = {"backend": spec.get("backend") or record.get("backend"),
                              "model": spec.get("model") or record.get("model"),
                              "temperature": 1.0, "truncation": 0.0, "n": 1, "seed": 0}
    if spec.get("op") == "sample":
        params.update(temperature=spec.get("temperature", 1.0), truncation=spec.get("truncation") or 0.0)
        if "seed" in item:
            params.update(seed=int(item["seed"]), n=1)
        else:
            params.update(seed=int(spec.get("seed", 0)), n=int(spec.get("n", 1)))
    else:
        sources = [spec.get(k) for k in ("source", "start", "a") if isinstance(spec.get(k), dict)]
        seeded = next((s for s in sources if s.get("seed") is not None), None)
        if seeded is not None:
            params["seed"] = int(seeded["seed"])
            options.update(seeded.get("options") or {})
    for key in ("prompt", "negative_prompt", "steps", "guidance"):
        params[key] = options.pop(key, None)
    params["options"] = options
    return params
