"""Interpolate: two seeds or two uploaded images, lerp or slerp, N steps -> a strip and an animated GIF."""

from __future__ import annotations

import gradio as gr

from studio.config import Settings
from studio.ui.components import checked_image
from studio.ui.context import UIContext
from studio.ui.inputs import upload_ref
from studio.ui.jobs import ui_errors
from studio.ui.sendto import send_to_row

KINDS = ["Seed", "Image"]


def _endpoint(settings: Settings, label: str, default_seed: int) -> tuple:
    with gr.Group():
        gr.Markdown(f"**{label}**")
        kind = gr.Radio(KINDS, value="Seed", label="From", container=False)
        seed = gr.Number(label=f"{label} seed", value=default_seed, precision=0, minimum=0)
        image = checked_image(settings, f"{label.lower()}_image", label=f"{label} image",
                              sources=["upload", "clipboard"], visible=False, height=180, elem_classes=["ls-pixel"])
    kind.change(lambda k: (gr.update(visible=k == "Seed"), gr.update(visible=k == "Image")), inputs=kind,
                outputs=[seed, image], api_visibility="private", queue=False)
    return kind, seed, image


def build(ctx: UIContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            start_kind, start_seed, start_image = _endpoint(ctx.settings, "Start", 0)
            end_kind, end_seed, end_image = _endpoint(ctx.settings, "End", 1)
            method = gr.Radio(["slerp", "lerp"], value="slerp", label="Path",
                              info="slerp stays on the shell where Gaussian samples live; lerp is a straight line.")
            steps = gr.Slider(2, min(32, ctx.max_images), value=min(9, ctx.max_images), step=1, label="Steps")
            go = gr.Button("Interpolate", variant="primary", elem_id="interpolate-button")
        with gr.Column(scale=3):
            strip = gr.Image(label="Strip", type="filepath", interactive=False, height=200, elem_id="interpolate-strip",
                             elem_classes=["ls-pixel", "ls-big"], buttons=["download", "fullscreen"])
            with gr.Row():
                gif = gr.Image(label="Animated GIF", type="filepath", interactive=False, height=260,
                               elem_classes=["ls-pixel", "ls-big"], elem_id="interpolate-gif", buttons=["download"],
                               scale=1)
                frames = gr.Gallery(label="Frames", columns=5, height=260, elem_classes=["ls-gallery", "ls-pixel"],
                                    format="png", scale=2, elem_id="interpolate-frames")
            send_to_row(ctx, frames, exclude=("interpolate",))
            status = gr.Markdown("Choose two seeds (or two images) and press **Interpolate**.", label="Status",
                                 elem_classes=["ls-status"])

    # "Send to Interpolate" (studio.ui.sendto) puts an image into the start
    ctx.components.update(interp_start_kind=start_kind, interp_start_image=start_image,
                          interp_end_kind=end_kind, interp_end_image=end_image)

    def source(kind: str, seed: float | None, image: str | None, what: str) -> dict:
        if kind == "Image":
            return {"image": upload_ref(image, ctx.settings, what=f"{what} image")}
        return {"seed": int(seed or 0)}

    @ui_errors
    def interpolate(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float, guidance: float,
                    options_json: str, form: dict | None,
                    start_kind: str, start_seed: float, start_image: str | None = None,
                    end_kind: str = "Seed", end_seed: float = 1, end_image: str | None = None, method: str = "slerp",
                    steps: float = 9,
                    progress: gr.Progress = gr.Progress()) -> tuple:
        """Walk from a start to an end point; returns the strip, the GIF, the frames and a status line."""
        spec = {"op": "interpolate",
                **ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance, options_json, form),
                "start": source(start_kind, start_seed, start_image, "start"),
                "end": source(end_kind, end_seed, end_image, "end"), "method": method, "steps": int(steps)}
        done = ctx.runner.run(spec, progress)
        frame_items = [(p, f"frame {i}") for i, p in enumerate(done.images("frame_"))]
        return done.path("strip.png"), done.path("walk.gif"), frame_items, done.summary()

    ctx.job_event(go.click, interpolate,
                  inputs=[*ctx.common_inputs(), start_kind, start_seed, start_image, end_kind, end_seed, end_image,
                          method, steps],
                  outputs=[strip, gif, frames, status], api_name="interpolate", show_progress="full")
