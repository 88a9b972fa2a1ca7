"""Turning what a creator gives the page (uploads, drawings, dataset picks, PNG records) into job inputs.

Uploads are checked for size in bytes and pixels (Settings.max_upload_bytes / max_upload_pixels) before
anything else reads them.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from studio.config import Settings
from studio.errors import InputError
from studio.parsing import parse_ints


def _png_b64(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def check_header(source: bytes | str, settings: Settings, what: str) -> tuple[int, int]:
    """Bytes and width x height from the header alone (nothing is decoded); one-line InputError naming `what`."""
    from studio.images import check_image_header

    if not isinstance(source, (bytes, str)):
        raise InputError(f"{what}: expected an uploaded file, got {type(source).__name__}")
    return check_image_header(source, settings.max_upload_pixels, settings.max_upload_bytes, what)


def upload_ref(path: str | None, settings: Settings, what: str = "uploaded image") -> dict:
    """An uploaded file -> an inline ImageRef (re-encoded as PNG after the size checks)."""
    from studio.images import open_checked

    if not path:
        raise InputError(f"no {what}: upload one first")
    check_header(path, settings, what)
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

        check_header(composite, settings, "drawing")
        composite = open_checked(composite, settings.max_upload_bytes, settings.max_upload_pixels, "drawing")
    elif not isinstance(composite, Image.Image) and not isinstance(composite, np.ndarray):
        raise InputError(f"drawing: expected an image, got {type(composite).__name__}")
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
    if not isinstance(text, str):
        raise InputError(f"options_json: backend options must be text holding a JSON object, got {_kind(text)}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"backend options must be a JSON object: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise InputError(f"options_json: nested too deeply; the limit is {MAX_SPEC_DEPTH} levels") from None
    except ValueError:  # an integer with more digits than Python converts
        raise InputError("options_json: a number has too many digits") from None
    if not isinstance(value, dict):
        raise InputError("backend options must be a JSON object, like {\"steps\": 20}")
    if _depth(value) > MAX_SPEC_DEPTH:
        raise InputError(f"options_json: nested too deeply; the limit is {MAX_SPEC_DEPTH} levels")
    return value


def read_png_record(path: str | None, settings: Settings) -> dict:
    """The reproducibility record of an uploaded or stored PNG (size-checked)."""
    from studio.images import open_checked
    from studio.record import read_record

    if not path:
        raise InputError("no image: pick or upload a PNG made by the studio")
    check_header(path, settings, "image")
    image = open_checked(path, settings.max_upload_bytes, settings.max_upload_pixels, what="image")
    return read_record(image)


def gradio_cache() -> Path:
    """Gradio's upload and cache folder (where the page's uploads and the copies it shows are)."""
    import os
    import tempfile

    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def trusted_path(path: str | None, settings: Settings) -> str:
    """`path` if it lies in Gradio's upload/cache folder or the artifact shelf (the copies the page shows);
    InputError otherwise. Never the store (another user's artifacts are there): a gallery event names a path the
    browser sent, so it is never trusted blindly."""
    from studio.ui.artifacts import shelf_root

    if not path or not isinstance(path, str):
        raise InputError("no image selected")
    try:
        resolved = Path(path).resolve()
    except (OSError, ValueError, RuntimeError):
        raise InputError("that file is not one of the studio's images") from None
    roots = [gradio_cache(), shelf_root(settings)]
    if not any(r in resolved.parents for r in roots):
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


# ----- API endpoint arguments (they arrive as any JSON value) -----

MAX_SPEC_DEPTH = 32
STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _depth(value: object) -> int:
    """How deeply lists and objects nest in `value` (iterative: a deep value cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_SPEC_DEPTH:
                return deepest
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _no_constant(name: str) -> float:
    raise InputError(f"spec_json: {name} is not a number a job spec can hold")


def parse_spec_json(spec_json: object, settings: Settings) -> dict:
    """The `/submit` endpoint's spec: a JSON object (as text, or already an object), bounded in size and depth."""
    if isinstance(spec_json, dict):
        spec = spec_json
    elif isinstance(spec_json, str):
        limit = int(settings.max_upload_bytes) * 2 + 65536  # an inline image travels as base64 inside the spec
        if len(spec_json) > limit:
            raise InputError(f"spec_json: {len(spec_json)} characters; the limit is {limit}")
        if not spec_json.strip():
            raise InputError("spec_json: empty; send a job spec as a JSON object, like {\"op\": \"sample\", ...}")
        try:
            spec = json.loads(spec_json, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise InputError(f"spec_json: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
                from None
        except RecursionError:
            raise InputError(f"spec_json: nested too deeply; the limit is {MAX_SPEC_DEPTH} levels") from None
        except InputError:
            raise
        except ValueError as exc:  # an integer with more digits than Python converts
            reason = "a number has too many digits" if "digits" in str(exc) else "a value cannot be read"
            raise InputError(f"spec_json: {reason}") from None
    else:
        raise InputError(f"spec_json: expected a job spec as a JSON object, got {_kind(spec_json)}")
    if not isinstance(spec, dict):
        raise InputError(f"spec_json: expected a JSON object, got {_kind(spec)}")
    if _depth(spec) > MAX_SPEC_DEPTH:
        raise InputError(f"spec_json: nested too deeply; the limit is {MAX_SPEC_DEPTH} levels")
    return spec


def int_field(value: object, name: str, low: int, high: int, default: int | None = None) -> int:
    """An integer API argument in [low, high]: ints, whole floats or digit strings; None means `default`."""
    if value is None and default is not None:
        return default
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value.strip()) <= 20:
        number = int(value.strip())
    if number is None or not low <= number <= high:
        small = isinstance(value, float) or (isinstance(value, int) and abs(value) < 10**20)
        shown = str(value) if small and not isinstance(value, bool) else _kind(value)
        raise InputError(f"{name} must be an integer from {low} to {high}, got {shown}")
    return number


def text_field(value: object, name: str, max_len: int = 200, default: str | None = None) -> str:
    """A short text API argument; None means `default`."""
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise InputError(f"{name} must be text, got {_kind(value)}")
    if len(value) > max_len:
        raise InputError(f"{name} is {len(value)} characters; the limit is {max_len}")
    return value


def job_id_field(value: object, name: str = "job_id") -> str:
    """A job id (or a unique prefix) typed or sent by a client."""
    text = text_field(value, name, 64).strip()
    if not text:
        raise InputError(f"{name}: pick a job first")
    if not all(c.isalnum() or c in "-_" for c in text):
        raise InputError(f"{name}: a job id has only letters, digits, '-' and '_'")
    return text


def state_field(value: object, name: str = "state") -> str | None:
    """A job state filter: one of STATES, or empty / "all" / None for every state."""
    text = text_field(value, name, 20, default="").strip()
    if not text or text.lower() == "all":
        return None
    if text.upper() not in STATES:
        raise InputError(f"{name} must be one of {', '.join(STATES)} or empty, got {text[:20]}")
    return text.upper()
