"""Img2Img: redraw an uploaded image under the prompt, optionally only where a brush mask is painted (inpainting),
with a live preview while the job runs. Needs a backend with the img2img capability (sd)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
import numpy as np

from studio.contract import IMG2IMG
from studio.errors import InputError
from studio.ui.components import checked_image, checked_sketchpad
from studio.ui.context import UIContext
from studio.ui.inputs import upload_ref
from studio.ui.jobs import FINAL_STATES, live_line, preview_image, ui_errors
from studio.ui.sendto import send_to_row
from studio.ui.views import esc, plural

EDITOR_SIDE = 256  # the mask painter shows the image at least this large (a 32x32 image is hard to paint on)
READY = "Upload an image (or send one here from a gallery), paint what to redraw, and press **Redraw**."


def capability_note(ctx: UIContext, backend: str | None) -> tuple[str, bool]:
    """The tab's one line about the chosen backend, and whether it can run img2img."""
    entry = ctx.catalog.get(backend)
    if entry is None or not entry.can(IMG2IMG):
        name = esc(backend or "no backend")
        return (f'<div class="ls-warn">The <b>{name}</b> backend cannot redraw images (no img2img capability): '
                "pick one that can, such as <b>sd</b>.</div>", False)
    return (f"<b>{esc(entry.name)}</b> redraws images: white in the mask is redrawn, the rest is kept.", True)


def painter_value(path: str | None, ctx: UIContext) -> dict | None:
    """The mask painter's value for an input image: the image (enlarged to EDITOR_SIDE, nearest neighbour) as its
    background, with no strokes; None when there is no image."""
    from PIL import Image

    from studio.images import open_checked

    if not path:
        return None
    image = open_checked(path, ctx.settings.max_upload_bytes, ctx.settings.max_upload_pixels, what="image")
    image = image.convert("RGB")
    scale = max(1, -(-EDITOR_SIDE // max(image.size)))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    background = np.asarray(image)
    return {"background": background, "layers": [], "composite": background}


def enlarged(image: Any, side: int = 192) -> Any:
    """A small preview (32x32, say) enlarged by a whole factor to about `side` pixels, nearest neighbour, so the
    page shows its pixels instead of a speck."""
    from PIL import Image

    scale = max(1, side // max(image.size))
    return image if scale == 1 else image.resize((image.width * scale, image.height * scale),
                                                 Image.Resampling.NEAREST)


def mask_ref(value: Any, settings: Any) -> dict | None:
    """An inline ImageRef of the painted mask (white where any stroke was painted, black elsewhere) from the mask
    painter's value; None when nothing is painted (the whole image is redrawn)."""
    from PIL import Image

    from studio.images import b64_png

    layers = value.get("layers") if isinstance(value, dict) else None
    painted: np.ndarray | None = None
    for layer in layers or []:
        if isinstance(layer, str):
            from studio.images import open_checked

            layer = open_checked(layer, settings.max_upload_bytes, settings.max_upload_pixels, what="mask")
        a = np.asarray(layer)
        if a.ndim != 3 or a.shape[2] != 4:  # a layer without alpha marks nothing
            continue
        if a.shape[0] * a.shape[1] > settings.max_upload_pixels:
            raise InputError(f"the mask is {a.shape[1]}x{a.shape[0]} pixels; the limit is {settings.max_upload_pixels}")
        alpha = a[:, :, 3] > 0
        painted = alpha if painted is None or painted.shape != alpha.shape else painted | alpha
    if painted is None or not painted.any():
        return None
    return {"png_b64": b64_png(Image.fromarray(np.where(painted, 255, 0).astype(np.uint8), "L"))}


def build(ctx: UIContext) -> None:
    backend_now = getattr(ctx.components.get("backend"), "value", None)
    note_text, can = capability_note(ctx, backend_now)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            note = gr.HTML(note_text, elem_id="img2img-note")
            image = checked_image(ctx.settings, "image", label="Image to redraw", sources=["upload", "clipboard"],
                                  height=220, elem_id="img2img-image", elem_classes=["ls-pixel"])
            painter = checked_sketchpad(ctx.settings, "mask", label="Mask (paint to redraw)",
                                        type="numpy", sources=(), layers=False, transforms=(), height=300,
                                        elem_id="img2img-mask", elem_classes=["ls-pixel"],
                                        brush=gr.Brush(colors=["#ff4d6d"], default_color="#ff4d6d",
                                                       default_size=24, color_mode="fixed"))
            strength = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Strength", elem_id="img2img-strength",
                                 info="How much of the schedule is re-noised: 0 keeps the image, 1 redraws it all.")
            with gr.Row():
                n = gr.Slider(1, min(16, ctx.max_images), value=min(4, ctx.max_images), step=1, label="How many")
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, info="Image i uses seed + i.")
            status = gr.Markdown(READY, label="Status", elem_classes=["ls-status"], elem_id="img2img-status",
                                 render=False)  # rendered under the results
            with gr.Row():
                go = gr.Button("Redraw", variant="primary", elem_id="img2img-run", scale=3, interactive=can)
                from studio.ui.tabs.queue import cancel_button  # here: queue.py imports the tab modules

                cancel_button(ctx, "img2img", status, elem_id="img2img-cancel")
        with gr.Column(scale=2):
            with gr.Row(equal_height=False):
                preview = gr.Image(label="Live preview", interactive=False, height=200, format="png", buttons=[],
                                   elem_id="img2img-preview", elem_classes=["ls-pixel"], scale=1)
                gallery = gr.Gallery(label="Results (click to enlarge)", columns=4, height="auto",
                                     object_fit="contain", elem_id="img2img-gallery", format="png", scale=3,
                                     elem_classes=["ls-gallery", "ls-pixel"], buttons=["download", "fullscreen"])
            send_to_row(ctx, gallery, exclude=("img2img",))  # a result goes on to another redraw from Generate's
            status.render()
    ctx.components.update(img2img_image=image, img2img_gallery=gallery)

    def on_image(path: str | None) -> Any:
        return painter_value(path, ctx)

    image.change(ui_errors(on_image), inputs=image, outputs=painter, api_visibility="private")

    def on_backend(backend_: str | None) -> tuple:
        text, ok = capability_note(ctx, backend_)
        return text, gr.update(interactive=ok)

    ctx["backend"].change(ui_errors(on_backend), inputs=ctx["backend"], outputs=[note, go],
                          api_visibility="private", queue=False)

    @ui_errors
    def img2img(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float, guidance: float,
                options_json: str, form: dict | None, image: str | None, mask: Any, strength: float, n: float,
                seed: float, progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        """Redraw the image `n` times (seeds seed..seed+n-1) at `strength`, only under the painted mask when there
        is one; streams the job's live preview and its step and time left, then the results and a status line."""
        if not capability_note(ctx, backend)[1]:
            raise InputError(f"backend {backend!r} cannot redraw images (no img2img capability): pick one that can, "
                             "such as sd")
        base = ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance, options_json, form)
        spec = {"op": "img2img", **base, "image": upload_ref(image, ctx.settings, "image to redraw"),
                "mask": mask_ref(mask, ctx.settings), "n": int(n), "seed": int(seed or 0)}
        spec["options"] = {**spec["options"], "strength": float(strength)}
        job_id = ctx.runner.submit(spec)
        status: dict = {}
        shown: tuple = (None, None)
        for status in ctx.runner.watch(job_id, progress):
            if status.get("state") in FINAL_STATES:
                break
            line, b64 = live_line(job_id, status), status.get("preview_png_b64")
            if (line, b64) != shown:  # only what changed reaches the page
                picture = preview_image(status) if b64 and b64 != shown[1] else None
                picture = enlarged(picture) if picture is not None else None
                shown = (line, b64)
                yield gr.skip(), line, picture if picture is not None else gr.skip()
        done = ctx.runner.finish(job_id, status)
        seeds = done.metrics.get("seeds") or [spec["seed"] + i for i in range(spec["n"])]
        items = [(path, f"seed {s}") for path, s in zip(done.images("img2img_"), seeds, strict=False)]
        masked = done.metrics.get("masked_share")
        where = f" · {masked:.0%} of the image redrawn" if isinstance(masked, (int, float)) else ""
        yield items, done.summary() + f" · {plural(len(items), 'image')}{where}", gr.skip()

    ctx.job_event(go.click, img2img, inputs=[*ctx.common_inputs(), image, painter, strength, n, seed],
                  outputs=[gallery, status, preview], api_name="img2img", show_progress="full",
                  show_progress_on=[status])  # the preview and results stay clear while it runs
