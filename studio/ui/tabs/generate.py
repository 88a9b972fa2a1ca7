"""Generate: seeds, count, temperature/truncation -> a result grid with a click-to-enlarge gallery. While the job
runs, the gallery shows its live preview (when the backend sends one) and the status line its step and ETA."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

import gradio as gr

from studio.errors import InputError
from studio.ui.context import UIContext
from studio.ui.inputs import generate_params, read_png_record, trusted_path
from studio.ui.jobs import FINAL_STATES, live_line, preview_image, refused, ui_errors
from studio.ui.options import restored_widgets
from studio.ui.sendto import send_to_row
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
            send_to_row(ctx, gallery)
            with gr.Row(equal_height=False):
                live = gr.Image(label="Live preview", type="pil", format="png", interactive=False, visible=False,
                                height=160, buttons=[], elem_id="generate-preview", elem_classes=["ls-pixel"],
                                scale=0, min_width=180)
                live_note = gr.Markdown("", elem_classes=["ls-status"], elem_id="generate-live")
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
    go.click(follow_live(ctx), outputs=[live, live_note], api_visibility="private", show_progress="hidden")
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

    @ui_errors
    def dropped_record(path: str | None) -> tuple:
        """A PNG dropped anywhere on the page (studio.ui.components.PAGE_JS): its record goes to Generate, which
        opens; the drop box is emptied for the next one."""
        if not path:
            return (*(gr.skip(),) * len(restore_targets(ctx)), gr.skip(), gr.skip())
        try:
            params = generate_params(read_png_record(path, ctx.settings))
        except InputError as exc:  # one line; Generate stays as it was
            return (*refused(InputError(f"dropped PNG: {exc}"), len(restore_targets(ctx)) + 1), None)
        return (*restore_outputs(ctx, params), gr.Tabs(selected="generate"), None)

    drop = ctx["page_drop"]
    drop.upload(dropped_record, inputs=drop, outputs=[*restore_targets(ctx), ctx["tabs"], drop],
                api_visibility="private")


LIVE_FIND_S = 60.0  # how long the live view looks for the job a click submitted (a busy server may take a while)


def follow_live(ctx: UIContext) -> Callable[[], Iterator[tuple]]:
    """The live view of a Generate click: it finds the sample job the click submitted (the signed-in user's newest
    one, created since the click) and, until it ends, shows its preview (when the backend sends
    one: `preview_png_b64`) and a line with its step and time left; then hides both. It never touches the gallery
    the job's own handler fills."""
    from studio.ui.jobs import current_user, scoped

    @ui_errors
    def generate_live() -> Iterator[tuple]:
        clicked = time.time() - 2.0  # the worker's and this clock may differ a little
        client, user = scoped(ctx.client), current_user(ctx.settings)
        job = None
        deadline = time.monotonic() + LIVE_FIND_S
        while job is None and time.monotonic() < deadline:  # the click's job: submitted once its form is read
            job = next((j for j in client.jobs(None, limit=10) if j.get("op") == "sample"
                        and float(j.get("created") or 0) >= clicked and j.get("owner", user) == user), None)
            if job is None:
                time.sleep(0.25)
        if job is None or job.get("state") in FINAL_STATES:  # none, or over already: nothing to show
            yield gr.update(visible=False), ""
            return
        shown: tuple = (None, None)
        for status in ctx.runner.watch(job["id"]):
            if status.get("state") in FINAL_STATES:
                break
            line, b64 = live_line(job["id"], status), status.get("preview_png_b64")
            if (line, b64) == shown:
                continue  # only what changed reaches the page
            image = preview_image(status) if b64 != shown[1] else None
            shown = (line, b64)
            yield (gr.update(value=image, visible=True) if image is not None else gr.skip()), line
        yield gr.update(value=None, visible=False), ""

    return generate_live


def restore_targets(ctx: UIContext) -> list:
    """Components that "send to Generate" fills, in the order `restore_outputs` returns them."""
    c = ctx.components
    return [c["model"], c["gen_restore_backend"], c["gen_seed"], c["gen_n"], c["gen_temperature"], c["gen_truncation"],
            c["prompt"], c["negative_prompt"], c["scheduler"], c["width"], c["height"], c["steps"], c["guidance"],
            c["options_json"]]


def restore_outputs(ctx: UIContext, params: dict) -> tuple:
    """Values for `restore_targets`: the model (with its backend's choices), the backend to pick next (see
    `gen_restore_backend`), seed, count, temperature, truncation, prompt, negative prompt, the scheduler, width and
    height widgets (studio.ui.options.restored_widgets: those options leave the JSON for their widgets), steps and
    guidance (0, the backend's default, when the record has none) and the options JSON."""
    import json
    import time

    scheduler, width, height, options = restored_widgets(params.get("options"))
    backend = params.get("backend")
    models = ctx.catalog.models(backend)
    model = params.get("model")
    return (gr.update(choices=models, value=model if model else ctx.catalog.default_model(backend)),
            {"backend": backend, "at": time.time_ns()},  # a new value each time: its change always fires
            int(params.get("seed") or 0), max(1, min(int(params.get("n") or 1), ctx.max_images)),
            float(params.get("temperature") or 1.0), float(params.get("truncation") or 0.0),
            params.get("prompt") or "", params.get("negative_prompt") or "", scheduler, width, height,
            _number(params.get("steps")), _number(params.get("guidance")), json.dumps(options) if options else "")


def _number(value: object) -> float:
    """A record's steps or guidance for its number field: 0 (the backend's default) when it has none."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
