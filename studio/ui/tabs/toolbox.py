"""Latent tools: a traversal grid over latent dimensions, an analogy (A - B + C) and a multi-keyframe walk (a GIF or
an MP4), each one job (TraverseSpec, AnalogySpec and WalkSpec in studio.builtin_ops.generate)."""

from __future__ import annotations

import gradio as gr

from studio.config import Settings
from studio.errors import InputError, clip
from studio.parsing import parse_ints
from studio.ui.components import checked_image
from studio.ui.context import UIContext
from studio.ui.inputs import upload_ref
from studio.ui.jobs import ui_errors
from studio.ui.sendto import send_to_row
from studio.ui.tabs.queue import cancel_button

KINDS = ["Seed", "Image"]
KEY_IMAGES = 3  # image slots a walk's keyframes may name (img1..img3)
PROMPTS = {"traverse": "Pick a point and the dimensions, then press **Traverse**.",
           "analogy": "Pick A, B and C, then press **Analogy**: the result is A - B + C.",
           "walk": "List the keyframes (seeds, or img1-img3 for the images below), then press **Walk**."}


def source_of(kind: str | None, seed: float | None, image: str | None, settings: Settings, what: str) -> dict:
    """A spec Source from a seed/image picker: the seed, or the uploaded image (checked first)."""
    if kind == "Image":
        return {"image": upload_ref(image, settings, f"{what} image")}
    if seed is None or int(seed) < 0:
        raise InputError(f"{what}: give a seed of 0 or more")
    return {"seed": int(seed)}


def parse_keyframes(text: str | None, images: list[str | None], settings: Settings) -> list[dict]:
    """The walk's keyframes from '1, 2, img1, 5': seeds, and imgN for the N-th image slot (uploaded)."""
    keyframes: list[dict] = []
    for raw in (text or "").split(","):
        token = raw.strip().lower()
        if not token:
            continue
        if token.startswith("img"):
            number = token[3:]
            if not number.isdigit() or not 1 <= int(number) <= len(images):
                raise InputError(f"keyframes: {clip(raw.strip(), 20)!r} is no image slot (img1 to "
                                 f"img{len(images)})")
            keyframes.append({"image": upload_ref(images[int(number) - 1], settings, f"keyframe image {token}")})
            continue
        if not token.isdigit():
            raise InputError(f"keyframes: {clip(raw.strip(), 20)!r} is neither a seed (0 or more) nor img1 to "
                             f"img{len(images)}")
        keyframes.append({"seed": int(token)})
    if len(keyframes) < 2:
        raise InputError(f"keyframes: give at least two (seeds or img1 to img{len(images)}), got {len(keyframes)}")
    return keyframes


def _point_picker(settings: Settings, label: str, default_seed: int, prefix: str) -> tuple:
    """A seed-or-image picker: (kind, seed, image)."""
    with gr.Group():
        kind = gr.Radio(KINDS, value="Seed", label=label, elem_id=f"{prefix}-kind")
        seed = gr.Number(label=f"{label}: seed", value=default_seed, precision=0, minimum=0, elem_id=f"{prefix}-seed")
        image = checked_image(settings, f"{prefix.replace('-', '_')}_image", label=f"{label}: image",
                              sources=["upload", "clipboard"], visible=False, height=160, elem_classes=["ls-pixel"])
    kind.change(lambda k: (gr.update(visible=k == "Seed"), gr.update(visible=k == "Image")), inputs=kind,
                outputs=[seed, image], api_visibility="private", queue=False)
    return kind, seed, image


def _status(sub: str) -> gr.Markdown:
    return gr.Markdown(PROMPTS[sub], label="Status", elem_classes=["ls-status"], elem_id=f"toolbox-status-{sub}")


def build(ctx: UIContext) -> None:
    with gr.Tabs(elem_id="toolbox-tabs"):
        with gr.Tab("Traverse", id="toolbox-traverse", elem_id="toolbox-tab-traverse"):
            _traverse(ctx)
        with gr.Tab("Analogy", id="toolbox-analogy", elem_id="toolbox-tab-analogy"):
            _analogy(ctx)
        with gr.Tab("Walk", id="toolbox-walk", elem_id="toolbox-tab-walk"):
            _walk(ctx)


def _traverse(ctx: UIContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            kind, seed, image = _point_picker(ctx.settings, "Centre", 0, "toolbox-traverse")
            dims = gr.Textbox(value="0-7", label="Dimensions", max_lines=1, elem_id="toolbox-traverse-dims",
                              info="Latent dimensions, one row each: e.g. 0-7 or 0,3,5")
            with gr.Row():
                low = gr.Number(value=-3.0, label="Low", minimum=-100, maximum=100)
                high = gr.Number(value=3.0, label="High", minimum=-100, maximum=100)
            steps = gr.Slider(2, 15, value=7, step=1, label="Values per dimension (columns)",
                              elem_id="toolbox-traverse-steps")
            go = gr.Button("Traverse", variant="primary", elem_id="toolbox-run-traverse",
                           elem_classes=["ls-run"])  # Ctrl+Enter
        with gr.Column(scale=3):
            grid = gr.Image(label="Grid: one row per dimension, low (left) to high (right)", type="filepath",
                            interactive=False, height=420, elem_id="toolbox-traverse-grid",
                            elem_classes=["ls-pixel", "ls-big"], buttons=["download", "fullscreen"])
            status = _status("traverse")

    @ui_errors
    def traverse(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float, guidance: float,
                 options_json: str, form: dict | None, source_kind: str, seed: float | None,
                 image: str | None = None, dims: str = "0-7", low: float = -3.0, high: float = 3.0,
                 steps: float = 7, progress: gr.Progress = gr.Progress()) -> tuple:
        """A traversal grid around a seed or an image: one row per dimension; returns the grid and a status."""
        chosen = parse_ints(dims or "", "dimensions")
        if not chosen:
            raise InputError("dimensions: give at least one, e.g. 0-7")
        if low is None or high is None or float(low) >= float(high):
            raise InputError(f"low must be below high, got {low} and {high}")
        spec = {"op": "traverse",
                **ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance, options_json, form),
                "source": source_of(source_kind, seed, image, ctx.settings, "centre"), "dims": chosen,
                "low": float(low), "high": float(high), "steps": int(steps)}
        done = ctx.runner.run(spec, progress)
        space = done.metrics.get("space")
        return done.path("grid.png"), done.summary() + (f" · {len(chosen)} dimension(s) of `{space}` × "
                                                        f"{int(steps)} values from {float(low):g} to {float(high):g}")

    ctx.job_event(go.click, traverse, inputs=[*ctx.common_inputs(), kind, seed, image, dims, low, high, steps],
                  outputs=[grid, status], api_name="traverse", show_progress="full")


def _analogy(ctx: UIContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            a = _point_picker(ctx.settings, "A", 1, "toolbox-analogy-a")
            b = _point_picker(ctx.settings, "B", 2, "toolbox-analogy-b")
            c = _point_picker(ctx.settings, "C", 3, "toolbox-analogy-c")
            go = gr.Button("Analogy", variant="primary", elem_id="toolbox-run-analogy",
                           elem_classes=["ls-run"])  # Ctrl+Enter
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="A, B, C and A - B + C", columns=4, height="auto", allow_preview=True,
                                 elem_classes=["ls-gallery", "ls-pixel"], format="png",
                                 elem_id="toolbox-analogy-gallery")
            send_to_row(ctx, gallery)
            status = _status("analogy")

    @ui_errors
    def analogy(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float, guidance: float,
                options_json: str, form: dict | None, a_kind: str, a_seed: float | None, a_image: str | None = None,
                b_kind: str = "Seed", b_seed: float | None = 2, b_image: str | None = None, c_kind: str = "Seed",
                c_seed: float | None = 3, c_image: str | None = None,
                progress: gr.Progress = gr.Progress()) -> tuple:
        """A - B + C in latent space ("B is to A as C is to ?"); returns the four images and a status."""
        spec = {"op": "analogy",
                **ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance, options_json, form),
                "a": source_of(a_kind, a_seed, a_image, ctx.settings, "A"),
                "b": source_of(b_kind, b_seed, b_image, ctx.settings, "B"),
                "c": source_of(c_kind, c_seed, c_image, ctx.settings, "C")}
        done = ctx.runner.run(spec, progress)
        captions = {"a": "A", "b": "B", "c": "C", "result": "A - B + C"}
        items = [(p, captions[name]) for name in captions if (p := done.path(f"{name}.png")) is not None]
        return items, done.summary() + " · A - B + C"

    ctx.job_event(go.click, analogy, inputs=[*ctx.common_inputs(), *a, *b, *c], outputs=[gallery, status],
                  api_name="analogy", show_progress="full")


def _walk(ctx: UIContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            keyframes = gr.Textbox(value="1, 2, 3", label="Keyframes", max_lines=1, elem_id="toolbox-walk-keyframes",
                                   info="In order: seeds, or img1-img3 for the images below (e.g. 4, img1, 9)")
            with gr.Accordion("Images as keyframes", open=False, elem_id="toolbox-walk-images"):
                with gr.Row():
                    images = [checked_image(ctx.settings, f"keyframe_image_{i + 1}", label=f"img{i + 1}",
                                            sources=["upload", "clipboard"], height=120, elem_classes=["ls-pixel"],
                                            min_width=100) for i in range(KEY_IMAGES)]
            frames = gr.Slider(1, 32, value=8, step=1, label="Frames per segment", elem_id="toolbox-walk-frames")
            method = gr.Radio(["slerp", "lerp"], value="slerp", label="Path")
            video = gr.Radio(["gif", "mp4"], value="gif", label="Animation", elem_id="toolbox-walk-video",
                             info="mp4 also writes an H.264 video (needs PyAV where the job runs)")
            with gr.Row():
                go = gr.Button("Walk", variant="primary", elem_id="toolbox-run-walk",
                               elem_classes=["ls-run"])  # Ctrl+Enter
            status = _status("walk")
            cancel_button(ctx, "walk", status, elem_id="toolbox-cancel")
        with gr.Column(scale=3):
            with gr.Row():
                gif = gr.Image(label="Animated GIF", type="filepath", interactive=False, height=280, scale=1,
                               elem_id="toolbox-walk-gif", elem_classes=["ls-pixel", "ls-big"], buttons=["download"])
                movie = gr.Video(label="MP4", interactive=False, height=280, scale=1, visible=False,
                                 elem_id="toolbox-walk-mp4")
            gallery = gr.Gallery(label="Frames", columns=8, height="auto", allow_preview=True, format="png",
                                 elem_classes=["ls-gallery", "ls-pixel"], elem_id="toolbox-walk-gallery")
            send_to_row(ctx, gallery)

    @ui_errors
    def walk(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float, guidance: float,
             options_json: str, form: dict | None, keyframes: str, frames_per_segment: float = 8,
             method: str = "slerp", video: str = "gif", img1: str | None = None, img2: str | None = None,
             img3: str | None = None, progress: gr.Progress = gr.Progress()) -> tuple:
        """A walk through several keyframes (seeds or images) as one job; returns the GIF, the MP4 (with
        video="mp4"), the frames and a status."""
        keys = parse_keyframes(keyframes, [img1, img2, img3], ctx.settings)
        spec = {"op": "walk",
                **ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance, options_json, form),
                "keyframes": keys, "frames_per_segment": int(frames_per_segment), "method": method, "video": video}
        done = ctx.runner.run(spec, progress)
        shots = done.images("frame_")
        mp4 = done.path("walk.mp4") if video == "mp4" else None
        return (done.path("walk.gif"), gr.update(value=mp4, visible=mp4 is not None),
                [(p, f"frame {i}") for i, p in enumerate(shots)],
                done.summary() + f" · {len(keys)} keyframes, {len(shots)} frames"
                + (" · and an MP4" if mp4 else ""))

    ctx.job_event(go.click, walk, inputs=[*ctx.common_inputs(), keyframes, frames, method, video, *images],
                  outputs=[gif, movie, gallery, status], api_name="walk", show_progress="full")
