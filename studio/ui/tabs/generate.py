"""Generate: seeds, count, temperature/truncation -> a result grid with a click-to-enlarge gallery."""

from __future__ import annotations

import random

import gradio as gr

from studio.ui.context import UIContext
from studio.ui.inputs import generate_params, read_png_record, trusted_path
from studio.ui.jobs import ui_errors
from studio.ui.views import plural

MAX_SEED = 2**31 - 1


def build(ctx: UIContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, info="Image i uses seed + i.",
                                 scale=3, elem_id="generate-seed")
                dice = gr.Button("Random", scale=1, min_width=70, size="sm")
            n = gr.Slider(1, min(64, ctx.max_images), value=min(16, ctx.max_images), step=1, label="How many images")
            temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature",
                                    info="Scales the seed latent: lower is tamer, higher is wilder.")
            truncation = gr.Slider(0.0, 3.0, value=0.0, step=0.1, label="Truncation",
                                   info="Clip the prior to ±t (0 = off). Trades variety for quality.")
            status = gr.Markdown("Pick a seed and press **Generate**.", label="Status", elem_classes=["ls-status"],
                                 elem_id="generate-status", render=False)  # rendered under the gallery
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="generate-button", scale=3)
                from studio.ui.tabs.queue import cancel_button  # here: queue.py imports this module

                cancel_button(ctx, "sample", status, elem_id="generate-cancel")
            with gr.Accordion("Reproduce an image from its PNG record", open=False):
                record_file = gr.File(label="PNG made by the studio", file_types=[".png"], type="filepath",
                                      elem_id="generate-record-file")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Results (click to enlarge)", columns=8, height="auto", object_fit="contain",
                                 elem_id="generate-gallery", elem_classes=["ls-gallery", "ls-pixel"],
                                 buttons=["download", "fullscreen"], format="png")
            status.render()
            with gr.Accordion("Record of the selected image", open=False):
                record = gr.JSON(label="Record", elem_id="generate-record")

    # A restore sets the model first and the backend one event later, from this state's change: the backend
    # picker's change handler reads the model picker, which must show the restored model by then (set in the same
    # event, the handler saw the old one and put the backend's default model back: gan/faces came out gan/mnist).
    restore_backend = gr.State(None)
    ctx.components.update(gen_seed=seed, gen_n=n, gen_temperature=temperature, gen_truncation=truncation,
                          gen_gallery=gallery, gen_restore_backend=restore_backend)
    restore_backend.change(lambda pending: gr.update(value=pending["backend"]) if pending else gr.skip(),
                           inputs=restore_backend, outputs=ctx["backend"], api_visibility="private", queue=False)

    @ui_errors
    def generate(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float, guidance: float,
                 options_json: str, form: dict | None,
                 seed: float, n: float, temperature: float, truncation: float,
                 progress: gr.Progress = gr.Progress()) -> tuple:
        """Sample `n` images from seeds seed..seed+n-1; returns the gallery, a status line and the job's summary."""
        base = ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance, options_json, form)
        spec = {"op": "sample", **base,
                "seed": int(seed or 0), "n": int(n), "temperature": float(temperature),
                "truncation": float(truncation) if truncation and truncation > 0 else None}
        done = ctx.runner.run(spec, progress)
        seeds = done.metrics.get("seeds") or [spec["seed"] + i for i in range(spec["n"])]
        images = done.images("sample_")
        items = [(path, f"seed {s}") for path, s in zip(images, seeds, strict=False)]
        summary = {"job_id": done.job_id, "seeds": seeds, "metrics": done.metrics}
        return items, done.summary() + f" · {plural(len(items), 'image')}", summary

    ctx.job_event(go.click, generate, inputs=[*ctx.common_inputs(), seed, n, temperature, truncation],
                  outputs=[gallery, status, record], api_name="generate", show_progress="full")
    dice.click(lambda: random.randint(0, MAX_SEED), outputs=seed, api_visibility="private", queue=False)

    @ui_errors
    def show_record(evt: gr.SelectData) -> dict:
        value = evt.value or {}
        image = value.get("image") if isinstance(value, dict) else None
        path = image.get("path") if isinstance(image, dict) else None
        return read_png_record(trusted_path(path, ctx.settings), ctx.settings)

    gallery.select(show_record, outputs=record, api_visibility="private")

    @ui_errors
    def load_record(path: str | None) -> tuple:
        if not path:
            return (gr.skip(),) * len(restore_targets(ctx))
        params = generate_params(read_png_record(path, ctx.settings))
        return restore_outputs(ctx, params)

    record_file.upload(load_record, inputs=record_file, outputs=restore_targets(ctx), api_visibility="private")


def restore_targets(ctx: UIContext) -> list:
    """Components that "send to Generate" fills, in the order `restore_outputs` returns them."""
    c = ctx.components
    return [c["model"], c["gen_restore_backend"], c["gen_seed"], c["gen_n"], c["gen_temperature"], c["gen_truncation"],
            c["prompt"], c["negative_prompt"], c["steps"], c["guidance"], c["options_json"]]


def restore_outputs(ctx: UIContext, params: dict) -> tuple:
    """Values for `restore_targets`: the model (with its backend's choices), the backend to pick next (see
    `gen_restore_backend`), seed, count, temperature, truncation, prompt, negative prompt, steps and guidance (0,
    the backend's default, when the record has none) and the options JSON."""
    import json
    import time

    backend = params.get("backend")
    models = ctx.catalog.models(backend)
    model = params.get("model")
    return (gr.update(choices=models, value=model if model else ctx.catalog.default_model(backend)),
            {"backend": backend, "at": time.time_ns()},  # a new value each time: its change always fires
            int(params.get("seed") or 0), max(1, min(int(params.get("n") or 1), ctx.max_images)),
            float(params.get("temperature") or 1.0), float(params.get("truncation") or 0.0),
            params.get("prompt") or "", params.get("negative_prompt") or "",
            _number(params.get("steps")), _number(params.get("guidance")),
            json.dumps(params.get("options") or {}) if params.get("options") else "")


def _number(value: object) -> float:
    """A record's steps or guidance for its number field: 0 (the backend's default) when it has none."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
