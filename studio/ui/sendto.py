""""Send to": a row of buttons under a gallery that puts its selected image (or its first) into another tab.

Usage, inside a tab's `build(ctx)`, right after its gallery:

    from studio.ui.sendto import send_to_row
    send_to_row(ctx, gallery)                       # tracks the gallery's selection itself
    send_to_row(ctx, gallery, selected=path_state)  # or: a gr.State the tab already fills with the picked path
    send_to_row(ctx, gallery, exclude=("edit",))    # leave out the tab the gallery is on

The buttons are "Send to Img2Img / Edit / Interpolate / Compress" (the image becomes that tab's input, and the
tab opens) and "Send to Generate" (the image's PNG record is restored into Generate: backend, model, seed,
options; see studio.ui.tabs.generate.restore_outputs). The page wires every row once all tabs are built
(`wire_send_to`, called by studio.ui.app): a target tab built after the gallery's is found all the same, and a
button whose target is not on the page (no `img2img_image` component, say) is hidden.

A target is an image input registered in `ctx.components` under a fixed key, with the radio that switches its tab
to an image source where it has one (TARGETS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio.errors import InputError
from studio.ui.context import UIContext
from studio.ui.jobs import refused, ui_errors

PENDING = "sendto_rows"  # ctx.components key: the rows waiting for `wire_send_to`


@dataclass(frozen=True)
class Target:
    """A tab's image input that "Send to" fills: ctx.components[image] (and the radio ctx.components[source], set
    to `choice`, that makes the tab use an image rather than a seed or a dataset)."""

    label: str
    tab: str
    image: str
    source: str | None = None
    choice: str = "Image"


TARGETS = (Target("Img2Img", "img2img", "img2img_image"),
           Target("Edit", "edit", "edit_image", "edit_kind", "Image"),
           Target("Interpolate", "interpolate", "interp_start_image", "interp_start_kind", "Image"),
           Target("Compress", "compress", "compress_upload", "compress_source", "Upload"))
GENERATE = "generate"


@dataclass
class SendRow:
    """One row of buttons, built under a gallery, wired by `wire_send_to`."""

    gallery: Any
    selected: Any
    buttons: dict[str, Any]  # target tab id (or "generate") -> its button


def chosen_image(items: Any, selected: Any = None) -> str:
    """The image a Send to button sends: the selected one (a path), else the gallery's first; InputError when the
    gallery is empty. `items` is the gallery's value as a handler gets it: (image, caption) pairs or paths."""
    if isinstance(selected, str) and selected:
        return selected
    for item in items or []:
        image = item[0] if isinstance(item, (tuple, list)) and item else item
        if isinstance(image, dict):
            image = image.get("path") or (image.get("image") or {}).get("path")
        if isinstance(image, str) and image:
            return image
    raise InputError("no image to send: make or pick one first")


def selected_path(evt: gr.SelectData) -> str | None:
    """The path of the gallery image a select event names, or None."""
    value = evt.value if isinstance(evt.value, dict) else {}
    image = value.get("image") if isinstance(value.get("image"), dict) else value
    path = image.get("path") if isinstance(image, dict) else None
    return path if isinstance(path, str) and path else None


def available(ctx: UIContext, exclude: tuple[str, ...] = ()) -> list[Target]:
    """The targets whose input is on the page (registered in ctx.components), but those of `exclude`."""
    return [t for t in TARGETS if t.tab not in exclude and t.image in ctx.components
            and (t.source is None or t.source in ctx.components)]


def send_to_row(ctx: UIContext, gallery: Any, selected: Any = None, exclude: tuple[str, ...] = ()) -> SendRow:
    """Add a row of "Send to" buttons under `gallery` (call it right after creating the gallery, in the same
    layout). `selected`: a gr.State holding the picked image's path, when the tab keeps one; otherwise the row
    tracks the gallery's selection itself (reset when the gallery changes: then the first image goes). `exclude`:
    tab ids to leave out (the gallery's own tab). Returns the row (its buttons by target tab id)."""
    if getattr(gallery, "interactive", None) is None:
        gallery.interactive = False  # read as an input here, Gradio would otherwise offer an upload area in it
    if selected is None:
        selected = gr.State(None)
        gallery.select(selected_path, outputs=selected, api_visibility="private", queue=False)
        gallery.change(lambda: None, outputs=selected, api_visibility="private", queue=False)
    buttons = {}
    with gr.Row(elem_classes=["ls-send-to"]):
        for target in TARGETS:
            if target.tab not in exclude:
                buttons[target.tab] = gr.Button(f"Send to {target.label}", size="sm", min_width=90,
                                                elem_classes=[f"ls-send-{target.tab}"])
        if GENERATE not in exclude:
            buttons[GENERATE] = gr.Button("Send to Generate", size="sm", min_width=90,
                                          elem_classes=[f"ls-send-{GENERATE}"])
    row = SendRow(gallery, selected, buttons)
    ctx.components.setdefault(PENDING, []).append(row)
    return row


def _sender(ctx: UIContext, target: Target) -> Any:
    from studio.ui.inputs import trusted_path

    source = (target.choice,) if target.source else ()

    @ui_errors
    def send(items: Any, selected: Any) -> tuple:
        try:
            path = trusted_path(chosen_image(items, selected), ctx.settings)
        except InputError as exc:  # nothing to send: say so, and leave the target tab as it is
            return refused(exc, len(source) + 2)
        return (*source, gr.update(value=path, visible=True), gr.Tabs(selected=target.tab))

    send.__name__ = f"send_to_{target.tab}"
    return send


def _to_generate(ctx: UIContext) -> Any:
    from studio.ui.inputs import generate_params, read_png_record, trusted_path
    from studio.ui.tabs.generate import restore_outputs, restore_targets

    @ui_errors
    def send_to_generate(items: Any, selected: Any) -> tuple:
        try:
            path = trusted_path(chosen_image(items, selected), ctx.settings)
            params = generate_params(read_png_record(path, ctx.settings))
        except InputError as exc:  # no image, or one without a record: Generate stays as it is
            return refused(exc, len(restore_targets(ctx)) + 1)
        return (*restore_outputs(ctx, params), gr.Tabs(selected=GENERATE))

    return send_to_generate


def wire_send_to(ctx: UIContext) -> None:
    """Wire every row `send_to_row` built (call once, after all tabs are built): each button sends to its tab, or
    is hidden when that tab's input is not on the page."""
    from studio.ui.tabs.generate import restore_targets

    tabs = ctx["tabs"]
    for row in ctx.components.pop(PENDING, []):
        inputs = [row.gallery, row.selected]
        present = {t.tab: t for t in available(ctx)}
        for tab, button in row.buttons.items():
            if tab == GENERATE:
                button.click(_to_generate(ctx), inputs=inputs, outputs=[*restore_targets(ctx), tabs],
                             api_visibility="private")
                continue
            target = present.get(tab)
            if target is None:
                button.visible = False  # read when the page's config is made (after the build)
                continue
            outputs = ([ctx[target.source]] if target.source else []) + [ctx[target.image], tabs]
            button.click(_sender(ctx, target), inputs=inputs, outputs=outputs, api_visibility="private")


__all__ = ["TARGETS", "SendRow", "Target", "available", "chosen_image", "send_to_row", "wire_send_to"]
