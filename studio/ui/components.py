"""Image inputs that are checked before anything decodes them, and a Blocks whose input errors are one line.

`gr.Image` decodes an upload (and converts it to RGB) before any handler runs, so a 164 KB PNG claiming
13000x13000 pixels cost ~830 MB before the studio's pixel check. The studio's image inputs (`checked_image`,
`checked_sketchpad`) are stock components marked with their limits; `StudioBlocks` reads only the header of each
of their files (`studio.images.check_image_header`) before Gradio touches them, so a file over the byte or pixel
limit is refused before one pixel is decoded (image inputs are type "filepath" with no mode conversion, so Gradio
itself never decodes them). Whatever Gradio still raises while reading inputs (a value of the wrong type, a file
not uploaded to this app) reaches the user as one line naming the field, instead of "The upstream Gradio app has
raised an exception". (No Component subclasses here: Gradio writes a .pyi stub next to any module defining one.)
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio.config import Settings
from studio.errors import InputError, StudioError, clip
from studio.ui.jobs import scrub, user_error

FILE_HINT = "expected a file uploaded to this app (gradio_client: handle_file(path))"


@dataclass(frozen=True)
class UploadCheck:
    """The limits an image input enforces from the header, and the name its messages use."""

    max_pixels: int
    max_bytes: int
    what: str

    @classmethod
    def of(cls, settings: Settings, what: str) -> UploadCheck:
        return cls(int(settings.max_upload_pixels), int(settings.max_upload_bytes), what)

    def header(self, source: bytes | str) -> tuple[int, int]:
        """(width, height) from the header, or a one-line InputError naming the field."""
        from studio.images import check_image_header

        return check_image_header(source, self.max_pixels, self.max_bytes, self.what)

    def fail(self, exc: BaseException) -> Exception:
        """`exc` as the gr.Error a user sees, naming the field."""
        if isinstance(exc, StudioError):
            return user_error(exc)
        return user_error(InputError(f"{self.what}: not a readable image ({type(exc).__name__})"))


def checked_image(settings: Settings, what: str, **kwargs: Any) -> gr.Image:
    """An image upload input (type "filepath", no mode conversion) whose file `StudioBlocks` checks from its header
    before Gradio opens it; `what` names the field in messages."""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    image.studio_check = UploadCheck.of(settings, what)  # type: ignore[attr-defined]
    return image


def checked_sketchpad(settings: Settings, what: str, **kwargs: Any) -> gr.Sketchpad:
    """A drawing input whose background, layers and composite `StudioBlocks` checks from their headers before
    Gradio decodes them."""
    pad = gr.Sketchpad(**kwargs)
    pad.studio_check = UploadCheck.of(settings, what)  # type: ignore[attr-defined]
    return pad


def any_name_in_api(dropdown: gr.Dropdown) -> gr.Dropdown:
    """Type a picker (allow_custom_value) as any string in the API schema, instead of the choices it had when the page
    was built (Gradio writes them as an enum: `Literal['mnist']`); its handlers check the name."""
    dropdown.api_info = lambda: {"type": "string"}  # type: ignore[method-assign]
    return dropdown


def _files(value: Any, depth: int = 0) -> Iterator[dict]:
    """The file references ({"path": ..., "url": ...}) inside an input value."""
    if depth > 8:
        return
    if isinstance(value, dict):
        if "path" in value or "url" in value:
            yield value
        for v in value.values():
            yield from _files(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            yield from _files(v, depth + 1)


def _bounds(low: object, high: object) -> str:
    if low is not None and high is not None:
        return f"a number from {low:g} to {high:g}"
    if low is not None:
        return f"a number of at least {low:g}"
    return f"a number of at most {high:g}"


def value_problem(block: Any, value: Any) -> str | None:
    """Why `value` cannot be an input of `block` (a number out of range, a list for a text...), or None.

    Checked before Gradio's own processing, whose errors are long (a 400-digit number is printed in full) or not
    one line at all."""
    if isinstance(block, (gr.Slider, gr.Number)):
        if value is None and isinstance(block, gr.Number):
            return None  # an empty number field: the handler's default
        low, high = block.minimum, block.maximum
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or (isinstance(value, float) and not math.isfinite(value)):
            return f"expected {_bounds(low, high)}" if low is not None or high is not None else "expected a number"
        if (low is not None and value < low) or (high is not None and value > high):
            return f"expected {_bounds(low, high)}"
    elif isinstance(block, gr.Textbox):
        if value is not None and not isinstance(value, str):
            return "expected text"
    elif isinstance(block, gr.Checkbox):
        if value is not None and not isinstance(value, bool):
            return "expected true or false"
    elif isinstance(block, (gr.Dropdown, gr.Radio)) and not getattr(block, "multiselect", False):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
            return "expected one of the choices"
    return None


def check_uploads(block: Any, value: Any) -> None:
    """Check every image file of one input value from its header (InputError naming the field): uploads in
    Gradio's upload folder, and drawings sent as blobs. Anything else is left to Gradio, which refuses it."""
    from gradio import utils

    check: UploadCheck | None = getattr(block, "studio_check", None)
    if check is None or value is None:
        return
    upload_folder = utils.get_upload_folder()
    for ref in _files(value):
        url, path = ref.get("url"), ref.get("path")
        if isinstance(url, str) and url.startswith("data:") or isinstance(path, str) and path.startswith("data:"):
            raise InputError(f"{check.what}: send the image as a file upload, not a data URL")
        if isinstance(path, str) and path and utils.is_in_or_equal(path, upload_folder):
            check.header(path)
    blob_id = value.get("id") if isinstance(value, dict) else None
    cached = getattr(block, "blob_storage", {}).get(blob_id) if isinstance(blob_id, str) else None
    if cached is not None:
        for item in [cached.background, *(cached.layers or []), cached.composite]:
            if item is not None:
                check.header(bytes(item))


# ----- Gradio's own input errors, as one line naming the field -----

SPECIAL = {"progress", "evt", "request"}


def _injected(param: inspect.Parameter, hint: object) -> bool:
    """True for a parameter Gradio fills itself (request, event data, progress), not from an input component."""
    from gradio.events import EventData

    if param.name in SPECIAL or isinstance(param.default, gr.Progress):
        return True
    return inspect.isclass(hint) and issubclass(hint, (gr.Request, EventData))


def field_names(block_fn: Any) -> list[str]:
    """The handler's parameter names, in the order of its input components."""
    from gradio import utils

    try:
        params = inspect.signature(block_fn.fn).parameters.values()
        hints = utils.get_type_hints(block_fn.fn)
    except Exception:
        return []
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and not _injected(p, hints.get(p.name))]


def _field(block_fn: Any, index: int | None) -> str:
    if index is None:
        return "an input"
    names = field_names(block_fn)
    if index < len(names):
        return names[index]
    block = block_fn.inputs[index] if index < len(block_fn.inputs) else None
    label = getattr(block, "label", None)
    return str(label) if label else f"input {index + 1}"


def _foreign_file(value: Any) -> bool:
    """True when `value` holds a file reference outside Gradio's upload folder."""
    from gradio import utils

    folder = utils.get_upload_folder()
    return any(isinstance(path := ref.get("path"), str) and not path.startswith(("http://", "https://", "data:"))
               and not utils.is_in_or_equal(path, folder) for ref in _files(value))


def _failing_input(block_fn: Any, inputs: list[Any]) -> int | None:
    """Which input Gradio could not read: the first whose value its data model refuses, or that names a file
    that was not uploaded here."""
    for i, block in enumerate(block_fn.inputs):
        value = inputs[i] if i < len(inputs) else None
        model = getattr(block, "data_model", None)
        if model is not None and value is not None:
            try:
                model.model_validate(value, context={"validate_meta": True})
            except Exception:
                return i
        if _foreign_file(value):
            return i
    return None


def input_problem(block_fn: Any, inputs: list[Any], exc: BaseException) -> str:
    """One line naming the field Gradio could not read, and why (no values, paths or reprs)."""
    from gradio.exceptions import ComponentProcessingError, InvalidPathError

    if len(inputs) < len(block_fn.inputs):
        return f"expected {len(block_fn.inputs)} input values, got {len(inputs)}"
    if isinstance(exc, ComponentProcessingError):
        found = re.search(r"at index (\d+)", str(exc))
        index = int(found.group(1)) if found else None
        cause = exc.__cause__ or exc
        if isinstance(cause, StudioError):
            return str(cause)
        return f"{_field(block_fn, index)}: could not read the value ({type(cause).__name__}: " \
               f"{clip(scrub(str(cause)), 80)})"
    index = _failing_input(block_fn, inputs)
    if isinstance(exc, InvalidPathError):
        return f"{_field(block_fn, index)}: that file was not uploaded to this app"
    block = block_fn.inputs[index] if index is not None and index < len(block_fn.inputs) else None
    wants_file = block is not None and isinstance(block, (gr.Image, gr.File, gr.ImageEditor, gr.Gallery))
    reason = FILE_HINT if wants_file else f"not a valid value ({type(exc).__name__})"
    return f"{_field(block_fn, index)}: {reason}"


# The page's keyboard shortcuts and its drop-a-PNG-anywhere, run once when the page loads (StudioBlocks.launch):
# - Ctrl+Enter (Cmd+Enter on a Mac) clicks the visible tab's primary run button: an elem_id ending in "-run", or a
#   button with the class "ls-run", or one of the first tabs' buttons (their ids, which tests and users know, stay);
# - Escape, while an action of the visible tab runs (its progress shows), clicks that tab's Cancel: an elem_id
#   ending in "-cancel" or the class "ls-cancel" (not the Queue tab's Cancel: it cancels whatever job is picked);
# - a PNG dropped anywhere but on an upload area goes to the hidden file input "ls-drop-file", whose upload
#   restores its record into Generate (studio.ui.tabs.generate).
PAGE_JS = """
() => {
  if (window.__lsPage) return;
  window.__lsPage = true;
  const LEGACY_RUN = '#generate-button, #interpolate-button, #edit-button, #compress-button, #project-button';
  const shown = (el) => el && el.offsetParent !== null && !el.disabled;
  const first = (sel) => [...document.querySelectorAll(sel)].find(shown);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && !e.altKey && !e.shiftKey) {
      const run = first('button[id$="-run"], button.ls-run, ' + LEGACY_RUN);
      if (run) { e.preventDefault(); e.stopPropagation(); run.click(); }
    }
  }, true);
  document.addEventListener('keydown', (e) => {  // after the page's own Escape handlers (a dropdown, a lightbox)
    if (e.key !== 'Escape' || e.defaultPrevented) return;
    const t = e.target;
    if (t && t.closest && t.closest('[aria-expanded="true"], .options')) return;
    const cancel = first('button[id$="-cancel"]:not(#queue-cancel), button.ls-cancel');
    const panel = cancel && (cancel.closest('[role=tabpanel]') || document.body);
    if (panel && [...panel.querySelectorAll('.eta-bar, .progress-text, .progress-level')].some(shown)) {
      cancel.click();  // only while an action of this tab is running
    }
  });
  const onUpload = (t) => !!(t && t.closest && t.closest(
    'input[type=file], [data-testid="image"], [data-testid="file"], .upload-container, .image-container, ' +
    'button.center, [data-testid="sketchpad"], canvas'));
  const hasFiles = (e) => e.dataTransfer && [...(e.dataTransfer.types || [])].includes('Files');
  document.addEventListener('dragover', (e) => {
    if (hasFiles(e) && !onUpload(e.target)) { e.preventDefault(); e.dataTransfer.dropEffect = 'copy'; }
  });
  document.addEventListener('drop', (e) => {
    if (e.defaultPrevented || !hasFiles(e) || onUpload(e.target)) return;
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    const input = document.querySelector('#ls-drop-file input[type=file]');
    if (!file || !input) return;
    const box = new DataTransfer();
    box.items.add(file);
    input.files = box.files;
    input.dispatchEvent(new Event('change', {bubbles: true}));
  });
}
"""


class StudioBlocks(gr.Blocks):
    """`gr.Blocks` whose input and output processing errors reach the user as one line naming the field, and whose
    page has the studio's keyboard shortcuts and drop-a-PNG-anywhere (`PAGE_JS`)."""

    def launch(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("js"):
            kwargs["js"] = PAGE_JS
        return super().launch(*args, **kwargs)

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], *args: Any, **kwargs: Any) -> Any:
        props = set(getattr(block_fn, "component_prop_inputs", None) or ())
        state = args[0] if args else kwargs.get("state")
        for i, (block, value) in enumerate(zip(block_fn.inputs, inputs or [], strict=False)):
            if state is not None and not block.stateful and block._id in state:
                block = state[block._id]  # as an update left it in this session (a relabelled form control's range)
            problem = None if i in props else value_problem(block, value)
            if problem:
                raise user_error(InputError(f"{_field(block_fn, i)}: {problem}"))
        try:
            for block, value in zip(block_fn.inputs, inputs or [], strict=False):
                check_uploads(block, value)  # before Gradio opens (or decodes) any image
        except Exception as exc:
            check = getattr(block, "studio_check", None)
            raise check.fail(exc) if check is not None else user_error(exc) from None
        try:
            return await super().preprocess_data(block_fn, inputs, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise user_error(InputError(input_problem(block_fn, list(inputs or []), exc))) from None

    async def postprocess_data(self, block_fn: Any, predictions: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().postprocess_data(block_fn, predictions, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise user_error(StudioError(f"could not show the result ({type(exc).__name__})")) from None


__all__ = ["PAGE_JS", "StudioBlocks", "UploadCheck", "any_name_in_api", "check_uploads", "checked_image",
           "checked_sketchpad", "input_problem"]
