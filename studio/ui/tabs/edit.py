"""Edit: apply an attribute vector with a strength slider (a live strip), or several at once (a chained edit: more
vectors picked under "Combine with", each with its own slider), build vectors from dataset attributes, or from
examples picked out of a generated grid (the smile-vector workflow)."""

from __future__ import annotations

import gradio as gr

from studio.errors import InputError
from studio.ui.catalog import ATTRIBUTES, DATASETS
from studio.ui.components import checked_image
from studio.ui.context import UIContext
from studio.ui.inputs import parse_seeds, upload_ref
from studio.ui.jobs import ui_errors


def strengths_for(strength: float, frames: int) -> list[float]:
    """The strip's strengths: from 0 (the original) to `strength` in `frames` steps."""
    frames = max(2, int(frames))
    return [round(strength * i / (frames - 1), 4) + 0.0 for i in range(frames)]  # + 0.0: no -0.0


def vector_choices(ctx: UIContext, backend: str | None, model: str | None) -> list[str]:
    return [v["name"] for v in ctx.catalog.vectors(backend, model)]


def vector_note(ctx: UIContext, backend: str | None, model: str | None, name: str | None) -> str:
    vectors = {v["name"]: v for v in ctx.catalog.vectors(backend, model)}
    if not vectors:
        return ("No vectors for this model yet: build one below, from dataset attributes or from examples you "
                "pick.")
    v = vectors.get(name or "")
    if v is None:
        return f"{len(vectors)} vector(s) for this model."
    parts = [f"space `{v.get('space')}`", v.get("method") or "", v.get("attribute") or ""]
    if isinstance(v.get("auc"), (int, float)):
        parts.append(f"AUC {v['auc']:.3f} as a classifier")
    return " · ".join(p for p in parts if p)


EDIT_PROMPT = "Choose a vector and a strength."
MAX_MORE = 4  # vectors "Combine with" adds to the main one: a fixed pool of that many strength sliders
MORE_STRENGTH = 1.0  # a newly combined vector's strength


def combined_vectors(vector: str | None, strength: float, more: list[str] | None,
                     more_strengths: list[float]) -> dict[str, float]:
    """The chained edit's vectors in order, name -> strength: the main vector at `strength`, then each of `more`
    (the main one and repeats left out) at its slider's strength."""
    terms = {vector: float(strength)} if vector else {}
    for name, value in zip(list(more or [])[:MAX_MORE], more_strengths, strict=False):
        if name and name not in terms:
            terms[name] = float(value)
    return terms


def more_sliders(more: list[str] | None, before: list[str] | None, values: list[float]) -> list[dict]:
    """gr.update kwargs for the pool of MAX_MORE sliders showing `more`: one per vector, labelled with its name,
    keeping the strength a vector had in `before` (the previous pick) wherever it moved to."""
    kept = dict(zip(list(before or []), values, strict=False))
    names = list(more or [])[:MAX_MORE]
    out = []
    for i in range(MAX_MORE):
        if i < len(names):
            out.append({"visible": True, "label": f"Strength of {names[i]}",
                        "value": kept.get(names[i], MORE_STRENGTH)})
        else:
            out.append({"visible": False, "value": MORE_STRENGTH})
    return out


def strength_line(terms: dict[str, float]) -> str:
    """How the status shows a chained edit's vectors: `thick +1.50, slant -1.00`."""
    return ", ".join(f"{name} {value:+.2f}" for name, value in terms.items())
FIT_LIMIT = 300  # images a dataset vector uses by default: minutes, not most of an hour, where encoding is slow
COSTLY_S_PER_IMAGE = 0.76  # a GAN's inversion on a CPU: 3000 images took about 38 minutes (issue 14)


def encode_cost(backend: str | None) -> str:
    """How the backend's encoder costs ("cheap": a forward pass; "costly": an optimisation per image, as a GAN's
    inversion), from its class (studio.contract.Backend.encode_cost); "cheap" when unknown."""
    from studio.registry import load_registry

    try:
        cls = load_registry().backends.get(backend or "")
    except Exception:  # the note is a hint: a registry problem shows elsewhere
        return "cheap"
    return str(getattr(cls, "encode_cost", "cheap")) if cls is not None else "cheap"


def fit_estimate(backend: str | None, limit: float, cost: str | None = None) -> str:
    """The line under "Images to use": how many images the fit encodes, and roughly how long a costly encoder
    takes for them."""
    n = max(0, int(limit or 0))
    line = f"Encodes {n} dataset image{'' if n == 1 else 's'} of the chosen attribute"
    if (cost or encode_cost(backend)) != "costly":
        return line + "."
    minutes = n * COSTLY_S_PER_IMAGE / 60
    took = f"about {minutes:.0f} min" if minutes >= 1.5 else f"about {n * COSTLY_S_PER_IMAGE:.0f} s"
    return (f"{line}: **{backend}** encodes each image by an optimisation (inversion), {took} on a CPU "
            f"(~{COSTLY_S_PER_IMAGE:.1f} s an image). Fewer images fit faster.")


def _seed_list(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def build(ctx: UIContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            with gr.Row():
                vector = gr.Dropdown([], label="Attribute vector", allow_custom_value=True, scale=4,
                                     elem_id="edit-vector")
                refresh = gr.Button("↻", scale=1, min_width=44, size="sm")
            note = gr.Markdown("", label="Vector", elem_classes=["ls-status"])
            more = gr.Dropdown([], value=[], multiselect=True, max_choices=MAX_MORE, label="Combine with",
                               allow_custom_value=True, elem_id="edit-more-vectors",
                               info="More vectors applied at the same time, each with its own strength")
            kind = gr.Radio(["Seed", "Image"], value="Seed", label="Start from", container=False)
            seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
            image = checked_image(ctx.settings, "image", label="Image", sources=["upload", "clipboard"],
                                  visible=False, height=180, elem_classes=["ls-pixel"])
            strength = gr.Slider(-4.0, 4.0, value=2.0, step=0.1, label="Strength", elem_id="edit-strength",
                                 info="Release the slider to update the strip.")
            pool = [gr.Slider(-4.0, 4.0, value=MORE_STRENGTH, step=0.1, label=f"Strength {i + 2}", visible=False,
                              elem_id=f"edit-strength-{i + 2}") for i in range(MAX_MORE)]
            frames = gr.Slider(2, 9, value=5, step=1, label="Frames in the strip")
            go = gr.Button("Apply", variant="primary", elem_id="edit-button")
        with gr.Column(scale=3):
            with gr.Row():
                result = gr.Image(label="Result", type="filepath", interactive=False, height=280, scale=1,
                                  elem_id="edit-result", elem_classes=["ls-pixel", "ls-big"],
                                  buttons=["download", "fullscreen"])
                with gr.Column(scale=2):
                    strip = gr.Image(label="Strip: from the original (left) to the whole edit (right)",
                                     type="filepath", interactive=False, height=140, elem_id="edit-strip",
                                     elem_classes=["ls-pixel", "ls-big"], buttons=["download", "fullscreen"])
                    gr.Markdown("Release the strength slider and the strip re-renders. Negative strengths remove "
                                "the attribute.", elem_classes=["ls-status"])
            status = gr.Markdown(EDIT_PROMPT, label="Status", elem_classes=["ls-status"], elem_id="edit-status")

    with gr.Accordion("Build a vector from dataset attributes", open=False, elem_id="fit-dataset") as fit_box:
        with gr.Row():
            fit_name = gr.Textbox(label="Vector name", value="thickness", max_lines=1)
            fit_dataset = gr.Dropdown(DATASETS, value="mnist", label="Dataset", allow_custom_value=True)
            fit_attribute = gr.Dropdown(ATTRIBUTES, value="thickness", label="Attribute", allow_custom_value=True,
                                        info="class:C, class:A-vs-B, thickness or slant")
        with gr.Row():
            fit_method = gr.Radio(["classifier", "balanced", "mean"], value="classifier", label="Method",
                                  info="classifier: a linear classifier's normal (keeps the class best); balanced: "
                                       "Tom White's bias correction; mean: the plain mean difference")
            fit_limit = gr.Slider(100, 20000, value=FIT_LIMIT, step=100, label="Images to use",
                                  elem_id="fit-dataset-limit")
        fit_estimate_note = gr.Markdown(fit_estimate(ctx.catalog.default_backend(), FIT_LIMIT),
                                        elem_classes=["ls-status"], elem_id="fit-dataset-estimate")
        fit_go = gr.Button("Fit vector", variant="secondary", elem_id="fit-dataset-button")
        # the job's progress shows here (show_progress_on), not over the vector picker it used to cover
        fit_status = gr.Markdown("", label="Status", elem_classes=["ls-status", "ls-job-status"],
                                 elem_id="fit-dataset-status")

    with gr.Accordion("Pick examples from a generated grid (the smile-vector workflow)", open=False):
        gr.Markdown("Generate a grid, click an image, and add it to **with** or **without**. The vector is the "
                    "difference between the two groups' mean latents.")
        with gr.Row():
            pick_seed = gr.Number(label="First seed", value=100, precision=0, minimum=0)
            pick_count = gr.Slider(4, min(32, ctx.max_images), value=min(16, ctx.max_images), step=1,
                                   label="Images")
            pick_go = gr.Button("Generate grid", elem_id="pick-grid-button")
        pick_gallery = gr.Gallery(label="Click an image to pick it", columns=8, height="auto", allow_preview=False,
                                  elem_classes=["ls-gallery", "ls-pixel"], format="png", elem_id="pick-gallery")
        from studio.ui.sendto import send_to_row  # "Send to" (helper D): this tab's image input is a target too

        ctx.components.update(edit_kind=kind, edit_image=image, edit_seed=seed)
        send_to_row(ctx, pick_gallery, exclude=("edit",))
        with gr.Row():
            add_with = gr.Button("With the attribute", icon=None)
            add_without = gr.Button("Without it")
            clear = gr.Button("Clear picks", size="sm")
        with gr.Row():
            with_seeds = gr.Textbox(label="Seeds WITH the attribute", placeholder="e.g. 101, 107, 112",
                                    elem_id="pick-with")
            without_seeds = gr.Textbox(label="Seeds WITHOUT it", placeholder="e.g. 100, 103", elem_id="pick-without")
        with gr.Row():
            pick_name = gr.Textbox(label="Vector name", value="picked", max_lines=1)
            pick_fit = gr.Button("Fit vector from picks", variant="secondary", elem_id="fit-picks-button")
        pick_status = gr.Markdown("", label="Status", elem_classes=["ls-status", "ls-job-status"],
                                  elem_id="pick-status")
    grid_state = gr.State({"first": 0, "count": 0})
    more_before = gr.State([])  # the vectors the pool's sliders showed last (their strengths follow their names)
    picked = gr.State(None)

    ctx.components.update(edit_vector=vector, edit_note=note, edit_fit_box=fit_box, edit_more_vectors=more)
    backend, model = ctx["backend"], ctx["model"]

    # another backend or model: the result and strip shown were made by the previous one, so they go
    for picker in (backend, model):
        picker.change(lambda: (None, None, EDIT_PROMPT), outputs=[result, strip, status], api_visibility="private",
                      queue=False)
        picker.change(ui_errors(lambda b, m: gr.update(choices=vector_choices(ctx, b, m), value=[])),
                      inputs=[backend, model], outputs=more, api_visibility="private")

    for trigger in (backend.change, fit_limit.change):
        trigger(lambda b, n: fit_estimate(b, n), inputs=[backend, fit_limit], outputs=fit_estimate_note,
                api_visibility="private", queue=False)

    kind.change(lambda k: (gr.update(visible=k == "Seed"), gr.update(visible=k == "Image")), inputs=kind,
                outputs=[seed, image], api_visibility="private", queue=False)

    def refresh_vectors(backend_: str, model_: str, current: str | None = None) -> tuple:
        names = vector_choices(ctx, backend_, model_)
        value = current if current in names else (names[0] if names else None)
        return gr.update(choices=names, value=value), vector_note(ctx, backend_, model_, value)

    # wrapped: the event's signed-in user is known while the vectors are listed (studio.ui.jobs.current_user)
    refresh.click(ui_errors(refresh_vectors), inputs=[backend, model, vector], outputs=[vector, note],
                  api_visibility="private")
    vector.change(ui_errors(lambda b, m, v: vector_note(ctx, b, m, v)), inputs=[backend, model, vector],
                  outputs=note, api_visibility="private", queue=False)

    def more_choices(backend_: str, model_: str, vector_: str | None, chosen: list[str] | None) -> dict:
        """The "Combine with" picker: every vector of the model but the main one, keeping the picks that remain."""
        names = [n for n in vector_choices(ctx, backend_, model_) if n != vector_]
        return gr.update(choices=names, value=[n for n in (chosen or []) if n in names])

    # the main slider names its vector, as the sliders of the vectors combined with it do
    vector.change(lambda v: gr.update(label=f"Strength of {v}" if v else "Strength"), inputs=vector, outputs=strength,
                  api_visibility="private", queue=False)
    # wrapped: listing vectors needs the event's user
    for trigger in (vector.change, refresh.click):
        trigger(ui_errors(more_choices), inputs=[backend, model, vector, more], outputs=more,
                api_visibility="private")

    def show_pool(chosen: list[str] | None, before: list[str] | None, *values: float) -> tuple:
        shown = list(chosen or [])[:MAX_MORE]
        return (shown, *(gr.update(**u) for u in more_sliders(shown, before, list(values))))

    more.change(show_pool, inputs=[more, more_before, *pool], outputs=[more_before, *pool], api_visibility="private",
                queue=False)
    ctx.components["refresh_vectors"] = refresh_vectors  # unwrapped: for handlers that are wrapped themselves

    @ui_errors
    def edit(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float, guidance: float,
             options_json: str, form: dict | None,
             vector: str, source_kind: str, seed: float, image: str | None = None,
             strength: float = 2.0, frames: float = 5, more_vectors: list[str] | None = None,
             strength_2: float = MORE_STRENGTH, strength_3: float = MORE_STRENGTH, strength_4: float = MORE_STRENGTH,
             strength_5: float = MORE_STRENGTH, progress: gr.Progress = gr.Progress()) -> tuple:
        """Apply `vector` at strengths 0..strength; with `more_vectors` (each at its strength_2.. in order), apply
        them all at once, the strip scaling their sum from 0 to 1. Returns the result image, the strip and a
        status line."""
        if not vector:
            raise InputError("choose an attribute vector first (or build one below)")
        if more_vectors is not None and (not isinstance(more_vectors, list)
                                         or not all(isinstance(n, str) for n in more_vectors)):
            raise InputError("more_vectors: expected a list of vector names")
        source = ({"image": upload_ref(image, ctx.settings, "image to edit")} if source_kind == "Image"
                  else {"seed": int(seed or 0)})
        terms = combined_vectors(vector, float(strength), more_vectors,
                                 [strength_2, strength_3, strength_4, strength_5])
        base = ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance, options_json, form)
        if len(terms) == 1:  # one vector: the strip runs from the original to its strength
            strengths = strengths_for(float(strength), int(frames))
            spec = {"op": "edit", **base, "vector": vector, "strengths": strengths, "source": source}
        else:  # a chained edit: the strip scales the sum of the vectors from 0 (the original) to 1
            strengths = strengths_for(1.0, int(frames))
            spec = {"op": "edit", **base, "vectors": terms, "strengths": strengths, "source": source}
        done = ctx.runner.run(spec, progress)
        paths = done.images("edit_")
        if len(terms) == 1:
            shown = ", ".join(f"{k:+.2f}" for k in strengths)
            line = f" · strength {float(strength):+.2f} (strip: {shown})"
        else:
            line = f" · vectors {strength_line(terms)} (strip: their sum ×{strengths[0]:.2f} to ×{strengths[-1]:.2f})"
        return (paths[-1] if paths else None), done.path("strip.png"), done.summary() + line

    edit_inputs = [*ctx.common_inputs(), vector, kind, seed, image, strength, frames, more, *pool]
    ctx.job_event(go.click, edit, inputs=edit_inputs, outputs=[result, strip, status], api_name="edit",
                  show_progress="full")
    for slider in (strength, *pool):
        ctx.job_event(slider.release, edit, inputs=edit_inputs, outputs=[result, strip, status],
                      api_visibility="private", show_progress="minimal", trigger_mode="always_last")

    @ui_errors
    def fit_from_dataset(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float,
                         guidance: float, options_json: str, form: dict | None,
                         name: str, dataset: str, attribute: str, method: str,
                         limit: float, progress: gr.Progress = gr.Progress()) -> tuple:
        """Fit and store a vector from a dataset attribute; returns the refreshed vector picker and a status."""
        spec = {"op": "fit_vector", **ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance,
                                                   options_json, form),
                "name": (name or "").strip(), "dataset": dataset, "attribute": (attribute or "").strip(),
                "method": method, "limit": int(limit)}
        done = ctx.runner.run(spec, progress)
        auc = done.metrics.get("auc")
        auc_text = f" · AUC {auc:.3f}" if isinstance(auc, (int, float)) else ""
        return spec["name"], done.summary() + f" · vector `{spec['name']}` saved{auc_text}"

    ctx.job_event(fit_go.click, fit_from_dataset,
                  inputs=[*ctx.common_inputs(), fit_name, fit_dataset, fit_attribute, fit_method, fit_limit],
                  outputs=[vector, fit_status], api_name="fit_vector_dataset", show_progress="full",
                  show_progress_on=[fit_status]
                  ).then(ui_errors(refresh_vectors), inputs=[backend, model, vector], outputs=[vector, note],
                         api_visibility="private")

    @ui_errors
    def pick_grid(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float, guidance: float,
                  options_json: str, form: dict | None,
                  first_seed: float, count: float, progress: gr.Progress = gr.Progress()) -> tuple:
        spec = {"op": "sample", **ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance,
                                               options_json, form),
                "seed": int(first_seed or 0), "n": int(count)}
        done = ctx.runner.run(spec, progress)
        seeds = done.metrics.get("seeds") or [spec["seed"] + i for i in range(spec["n"])]
        items = [(p, f"seed {s}") for p, s in zip(done.images("sample_"), seeds, strict=False)]
        return items, {"first": spec["seed"], "count": len(items), "seeds": seeds}, None

    ctx.job_event(pick_go.click, pick_grid, inputs=[*ctx.common_inputs(), pick_seed, pick_count],
                  outputs=[pick_gallery, grid_state, picked], api_visibility="undocumented", show_progress="full")

    def on_pick(state: dict, evt: gr.SelectData) -> int | None:
        seeds = state.get("seeds") or []
        return seeds[evt.index] if isinstance(evt.index, int) and 0 <= evt.index < len(seeds) else None

    pick_gallery.select(on_pick, inputs=grid_state, outputs=picked, api_visibility="private", queue=False)

    def add(seed_: int | None, text: str) -> str:
        if seed_ is None:
            gr.Warning("Click an image in the grid first.")
            return text
        seeds = parse_seeds(text, "seeds")
        return _seed_list(seeds if seed_ in seeds else [*seeds, int(seed_)])

    add_with.click(add, inputs=[picked, with_seeds], outputs=with_seeds, api_visibility="private", queue=False)
    add_without.click(add, inputs=[picked, without_seeds], outputs=without_seeds, api_visibility="private",
                      queue=False)
    clear.click(lambda: ("", ""), outputs=[with_seeds, without_seeds], api_visibility="private", queue=False)

    @ui_errors
    def fit_from_picks(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float,
                       guidance: float, options_json: str, form: dict | None,
                       name: str, with_seeds: str, without_seeds: str,
                       progress: gr.Progress = gr.Progress()) -> tuple:
        """Fit and store a vector from picked seeds (mean latent with minus without)."""
        pos, neg = parse_seeds(with_seeds, "seeds with"), parse_seeds(without_seeds, "seeds without")
        if not pos or not neg:
            raise InputError("pick at least one image WITH the attribute and one WITHOUT it")
        overlap = sorted(set(pos) & set(neg))
        if overlap:
            raise InputError(f"seeds {_seed_list(overlap)} are in both groups")
        spec = {"op": "fit_vector", **ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance,
                                                   options_json, form),
                "name": (name or "").strip(), "with_seeds": pos, "without_seeds": neg}
        done = ctx.runner.run(spec, progress)
        return spec["name"], done.summary() + f" · vector `{spec['name']}` from {len(pos)} with / {len(neg)} without"

    ctx.job_event(pick_fit.click, fit_from_picks, inputs=[*ctx.common_inputs(), pick_name, with_seeds, without_seeds],
                  outputs=[vector, pick_status], api_name="fit_vector_picks", show_progress="full",
                  show_progress_on=[pick_status]
                  ).then(ui_errors(refresh_vectors), inputs=[backend, model, vector], outputs=[vector, note],
                         api_visibility="private")
