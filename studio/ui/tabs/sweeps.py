"""Sweeps: an X/Y/Z plot of the sample op over any two or three parameters (spec fields or backend options), a
prompt matrix and a batch count, run as one `grid` job; shows the labelled grid(s) and every cell."""

from __future__ import annotations

import gradio as gr

from studio.errors import InputError
from studio.ui.context import UIContext
from studio.ui.jobs import ui_errors
from studio.ui.sendto import send_to_row
from studio.ui.views import plural

OPS = ("sample",)
PARAMS = ["seed", "temperature", "truncation", "n", "prompt", "negative_prompt", "steps", "guidance", "scheduler"]
NONE = "(none)"


def sweep_spec(base: dict, op: str, n: float | None, seed: float | None, axes: list[tuple[str | None, str | None]],
               matrix: str | None = None, batch_count: float | None = None) -> dict:
    """The grid job spec of the tab's inputs: `base` (backend, model, options from the page's pickers), the base op
    with its n and seed, up to three (param, "v1,v2,...") axes, then a prompt matrix and a batch count on the next
    free axes. InputError (one line naming the field) for a bad axis or none at all."""
    from studio.builtin_ops.grid import add_axis, axis_from_text

    if op not in OPS:
        raise InputError(f"base op: one of {', '.join(OPS)}, got {op!r}")
    spec: dict = {"op": "grid", **base, "base": {"op": op, "n": int(n or 1), "seed": int(seed or 0)}}
    for name, (param, values) in zip("XYZ", axes, strict=False):
        param = (param or "").strip()
        if not param or param == NONE:
            continue
        if not (values or "").strip():
            raise InputError(f"{name} values: give the values of {param}, e.g. 1,2,3 ('|' between values with commas)")
        add_axis(spec, axis_from_text(f"{param}={values}", f"{name} values"), f"{name} axis")
    if matrix and matrix.strip():
        add_axis(spec, {"param": "prompt", "matrix": matrix.strip()}, "prompt matrix")
    if batch_count and int(batch_count) > 1:
        add_axis(spec, {"param": "seed", "batch_count": int(batch_count)}, "batch count")
    if spec.get("x") is None:
        raise InputError("pick at least one axis: a parameter and its values (e.g. seed and 1,2,3), a prompt matrix "
                         "or a batch count")
    return spec


def build(ctx: UIContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            op = gr.Dropdown(list(OPS), value=OPS[0], label="Base op", elem_id="sweeps-op")
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id="sweeps-seed")
                n = gr.Slider(1, min(64, ctx.max_images), value=min(4, ctx.max_images), step=1,
                              label="Images per cell (batch size)", elem_id="sweeps-n")
            axes = []
            for name, default, values in (("X", "seed", "1,2,3"), ("Y", "temperature", "0.5,1.0"), ("Z", NONE, "")):
                with gr.Row():
                    param = gr.Dropdown([NONE, *PARAMS], value=default, label=f"{name} parameter",
                                        allow_custom_value=True, elem_id=f"sweeps-{name.lower()}-param",
                                        info="A field of the op or any backend option (type its name).", scale=2)
                    vals = gr.Textbox(value=values, label=f"{name} values", placeholder="1,2,3 or a cat|a dog",
                                      elem_id=f"sweeps-{name.lower()}-values", scale=3)
                axes += [param, vals]
            matrix = gr.Textbox(label="Prompt matrix", placeholder="a cat|red|watercolour",
                                info="Every combination of the parts after the first (text backends), as the next "
                                     "free axis.", elem_id="sweeps-matrix")
            batch_count = gr.Number(label="Batch count", value=1, precision=0, minimum=1,
                                    info="More than 1: batches of seeds (seed, seed + n, ...) as the next free axis.",
                                    elem_id="sweeps-batch-count")
            status = gr.Markdown("Pick the axes and press **Run sweep**.", elem_classes=["ls-status"],
                                 elem_id="sweeps-status", render=False)
            with gr.Row():
                go = gr.Button("Run sweep", variant="primary", elem_id="sweeps-run", scale=3)
                from studio.ui.tabs.queue import cancel_button

                cancel_button(ctx, "grid", status, elem_id="sweeps-cancel")
        with gr.Column(scale=3):
            grid = gr.Image(label="Labelled grid", type="filepath", format="png", interactive=False,
                            elem_id="sweeps-grid", elem_classes=["ls-pixel"], buttons=["download", "fullscreen"])
            grids = gr.Gallery(label="Every grid (one per Z value)", columns=2, height="auto", object_fit="contain",
                               elem_id="sweeps-grids", elem_classes=["ls-gallery", "ls-pixel"], visible=False,
                               buttons=["download", "fullscreen"], format="png")
            status.render()
            cells = gr.Gallery(label="Cells (each image replays alone from its record)", columns=6, height="auto",
                               object_fit="contain", elem_id="sweeps-cells", elem_classes=["ls-gallery", "ls-pixel"],
                               buttons=["download", "fullscreen"], format="png")
            send_to_row(ctx, cells)
            with gr.Accordion("Cells: axis values, artifacts and metrics", open=False):
                summary = gr.JSON(label="Cells", elem_id="sweeps-summary")

    @ui_errors
    def run_sweep(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float,
                  guidance: float, options_json: str, form: dict | None, op_name: str, n_: float, seed_: float,
                  xp: str, xv: str, yp: str, yv: str, zp: str, zv: str, matrix_: str, count: float,
                  progress: gr.Progress = gr.Progress()) -> tuple:
        """Run the sweep as one grid job; returns the first labelled grid, every grid, the cells' images, a status
        line and the cells' list."""
        base = ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance, options_json, form)
        spec = sweep_spec(base, op_name, n_, seed_, [(xp, xv), (yp, yv), (zp, zv)], matrix_, count)
        done = ctx.runner.run(spec, progress)
        shown_grids = [(done.path(name), name) for name in done.metrics.get("grids", []) if done.path(name)]
        listed = done.metrics.get("cells") or []
        items = []
        for cell in listed:
            names = [a for a in cell.get("artifacts", []) if a.endswith(".png")]
            own = [a for a in names if a.endswith("_grid.png")] or names
            for name in own:
                path = done.path(name)
                if path:
                    items.append((path, cell.get("label", name)))
        line = f"{done.summary()} · {plural(len(listed), 'cell')}, {plural(done.metrics.get('n', 0), 'image')}"
        first = shown_grids[0][0] if shown_grids else None
        return first, gr.update(value=shown_grids, visible=len(shown_grids) > 1), items, line, listed

    inputs = [*ctx.common_inputs(), op, n, seed, *axes, matrix, batch_count]
    ctx.job_event(go.click, run_sweep, inputs=inputs, outputs=[grid, grids, cells, status, summary],
                  api_visibility="private", show_progress="full")
    ctx.components.update(sweeps_grids=grids, sweeps_cells=cells)
