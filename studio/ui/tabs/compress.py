"""Compress: upload, draw or pick an image; set bits; compare the reconstruction with JPEG and WebP at the same
bytes (PSNR, SSIM, bytes)."""

from __future__ import annotations

import gradio as gr
import numpy as np

from studio.ui.catalog import DATASETS
from studio.ui.components import checked_image, checked_sketchpad
from studio.ui.context import UIContext
from studio.ui.inputs import dataset_ref, sketch_ref, upload_ref
from studio.ui.jobs import ui_errors
from studio.ui.sendto import send_to_row
from studio.ui.views import compression_rows, panel_label

SOURCES = ["Dataset", "Upload", "Draw"]
CANVAS = 280


def _blank_canvas() -> dict:
    black = np.zeros((CANVAS, CANVAS, 3), dtype=np.uint8)
    return {"background": black, "layers": [], "composite": black}


def placeholder(text: str, size: int = 224):
    """A dark tile with a short note, for a baseline that has no image."""
    import textwrap

    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (size, size), (40, 40, 48))
    draw = ImageDraw.Draw(tile)
    draw.multiline_text((12, size // 2 - 24), "\n".join(textwrap.wrap(text, 28)), fill=(220, 220, 230), spacing=4)
    return tile


def build(ctx: UIContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            source = gr.Radio(SOURCES, value="Dataset", label="Image", elem_id="compress-source")
            with gr.Group(visible=True) as dataset_group:
                dataset = gr.Dropdown(DATASETS, value="mnist", label="Dataset", allow_custom_value=True)
                with gr.Row():
                    split = gr.Radio(["test", "train"], value="test", label="Split")
                    index = gr.Number(label="Index", value=0, precision=0, minimum=0)
                preview = gr.Image(label="Preview", interactive=False, height=140, format="png", buttons=[],
                                   elem_classes=["ls-pixel", "ls-big"], elem_id="compress-preview")
            upload = checked_image(ctx.settings, "upload", label="Upload an image", sources=["upload", "clipboard"],
                                   visible=False, height=220, elem_classes=["ls-pixel"])
            sketch = checked_sketchpad(ctx.settings, "sketch", label="Draw", type="numpy", visible=False,
                                       elem_id="compress-sketch", value=_blank_canvas(),
                                       canvas_size=(CANVAS, CANVAS), fixed_canvas=True, layers=False, transforms=(),
                                       brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", default_size=18,
                                                      color_mode="fixed"))
            bits = gr.Slider(1, 12, value=6, step=1, label="Bits per latent value",
                             info="Fewer bits, fewer bytes; the reconstruction degrades gracefully.")
            go = gr.Button("Compress", variant="primary", elem_id="compress-button")
        with gr.Column(scale=3):
            panels = gr.Gallery(label="Original · reconstruction · JPEG · WebP at the same bytes", columns=4,
                                height="auto", object_fit="contain", format="png", elem_id="compress-panels",
                                elem_classes=["ls-gallery", "ls-pixel"], buttons=["download", "fullscreen"])
            send_to_row(ctx, panels, exclude=("compress",))
            table = gr.Dataframe(headers=["Method", "PSNR", "SSIM", "Bytes"], value=[], interactive=False,
                                 label="At the same number of bytes", elem_id="compress-table")
            status = gr.Markdown("Pick an image and press **Compress**.", label="Status",
                                 elem_classes=["ls-status"], elem_id="compress-status")

    ctx.components.update(compress_source=source, compress_upload=upload)  # "Send to Compress" fills these
    source.change(lambda s: (gr.update(visible=s == "Dataset"), gr.update(visible=s == "Upload"),
                             gr.update(visible=s == "Draw")),
                  inputs=source, outputs=[dataset_group, upload, sketch], api_visibility="private", queue=False)

    def show_preview(dataset_: str, split_: str, index_: float):
        try:
            image, label = ctx.images.image(dataset_, split_, int(index_ or 0), scale=4)
        except Exception:  # a half-typed index or unknown dataset: no preview, no error
            return gr.update(value=None, label="Preview")
        return gr.update(value=image, label=f"Preview · class {label}")

    for trigger in (dataset.change, split.change, index.change):
        trigger(show_preview, inputs=[dataset, split, index], outputs=preview, api_visibility="private")

    @ui_errors
    def compress(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float, guidance: float,
                 options_json: str, form: dict | None,
                 source: str, dataset: str, split: str, index: float, upload: str | None = None,
                 sketch: dict | None = None, bits: float = 6, progress: gr.Progress = gr.Progress()) -> tuple:
        """Round-trip one image through the latent codec; returns the four panels, the metric table, a status."""
        if source == "Upload":
            image = upload_ref(upload, ctx.settings)
        elif source == "Draw":
            image = sketch_ref(sketch, ctx.settings)
        else:
            image = dataset_ref(dataset, split, index)
        spec = {"op": "roundtrip", **ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance,
                                                  options_json, form),
                "bits": int(bits), "image": image}
        done = ctx.runner.run(spec, progress)
        m = done.metrics
        ours = panel_label(f"Latent codec, {int(bits)} bits", m.get("psnr"), m.get("ssim"), m.get("bytes_per_image"))
        items = [(done.path("original.png"), "Original"), (done.path("reconstruction.png"), ours)]
        for fmt, name, suffix in (("jpeg", "JPEG", "jpg"), ("webp", "WebP", "webp")):
            path = done.path(f"baseline.{suffix}") or done.path(f"{fmt}.png")
            if m.get(f"{fmt}_bytes") is not None:
                caption = panel_label(f"{name}, same bytes", m.get(f"{fmt}_psnr"), m.get(f"{fmt}_ssim"),
                                      m.get(f"{fmt}_bytes"))
            else:
                caption = panel_label(f"{name} cannot get this small; its smallest file",
                                      m.get(f"{fmt}_psnr_at_min_bytes"), m.get(f"{fmt}_ssim_at_min_bytes"),
                                      m.get(f"{fmt}_min_bytes"))
            items.append((path or placeholder(caption), caption))
        items = [(p, c) for p, c in items if p is not None]
        return items, compression_rows(m), done.summary() + f" · {m.get('bytes_per_image', 0):.0f} bytes, " \
            f"{m.get('bpp', 0):.3f} bits per pixel"

    ctx.job_event(go.click, compress, inputs=[*ctx.common_inputs(), source, dataset, split, index, upload, sketch,
                                              bits],
                  outputs=[panels, table, status], api_name="compress", show_progress="full")
    ctx.components["compress_preview"] = (show_preview, [dataset, split, index], preview)
