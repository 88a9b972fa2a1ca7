"""The page: a header with the backend and model pickers (and the prompt for text backends), the chosen backend's
options as a form generated from its Options schema (studio.ui.options), then the tabs."""

from __future__ import annotations

import gradio as gr

from studio.config import Settings
from studio.ui.artifacts import ArtifactShelf
from studio.ui.catalog import Catalog
from studio.ui.components import StudioBlocks, any_name_in_api
from studio.ui.context import TEXT, TEXT_ROW, UIContext
from studio.ui.jobs import JobRunner, QueueClient, building_with, end_building, scoped, ui_errors
from studio.ui.options import (
    DEFAULT_CHOICE,
    TEXT_WIDGETS,
    Layout,
    build_pool,
    form_options,
    pool_order,
    pool_updates,
    widget_choices,
    widget_fields,
    widget_options,
    widget_updates,
)
from studio.ui.scatter import DatasetImages
from studio.ui.sendto import wire_send_to
from studio.ui.tabs import (
    compress,
    edit,
    explore,
    gallery,
    generate,
    img2img,
    interpolate,
    plugins,
    queue,
    sweeps,
    toolbox,
    train,
)
from studio.ui.views import chips, esc, without_paths

TABS = [("Generate", "generate", generate), ("Img2Img", "img2img", img2img),
        ("Interpolate", "interpolate", interpolate), ("Edit", "edit", edit), ("Latent tools", "toolbox", toolbox),
        ("Compress", "compress", compress), ("Sweeps", "sweeps", sweeps), ("Explore", "explore", explore),
        ("Gallery", "gallery", gallery), ("Train", "train", train), ("Queue", "queue", queue),
        ("Plugins", "plugins", plugins)]
HEADER = ('<h1>Latent Studio</h1><p class="ls-sub">Generate, walk, edit, compress and explore latent spaces. '
          'Every action runs as a job on the queue.</p>')


def backend_line(ctx: UIContext, backend: str | None) -> str:
    """Capabilities of the chosen backend and whether any worker is there to run jobs."""
    entry = ctx.catalog.get(backend)
    parts = []
    if entry is None:
        parts.append('<span class="ls-error">No backend chosen.</span>' if not backend else
                     f'<span class="ls-error">Backend {esc(backend)} is not installed.</span>')
    else:
        parts.append(f"<b>{esc(entry.name)}</b> v{esc(entry.version)} {chips(entry.capabilities)}")
        if entry.error:
            parts.append(f'<span class="ls-error">{esc(entry.error)}</span>')
        elif not entry.models:
            parts.append('<span class="ls-error">no models installed</span>')
    try:
        workers = ctx.client.workers()
    except Exception:  # the page still works without the worker list
        workers = []
    if workers:
        serving = [w for w in workers if not backend or backend in (w.get("backends") or [backend])]
        parts.append(f'<span class="ls-muted">{len(workers)} worker(s) online, {len(serving)} serve this backend'
                     "</span>")
    else:
        parts.append('<span class="ls-warn">No worker is running: jobs will wait in the queue. '
                     'Start one with <code>studio worker</code>.</span>')
    return " &nbsp; ".join(parts)


def pickers_now(ctx: UIContext, backend: str | None, model: str | None) -> tuple:
    """Updates for the backend and model pickers from the catalog as it is now (described again when a model root
    changed), and the model they show: `model` when it is still one of the backend's, else its default."""
    ctx.catalog.refresh_if_changed()
    models = ctx.catalog.models(backend)
    if model in models:  # choices only: a value here could undo a restore that raced this page-load event
        return gr.update(choices=ctx.catalog.names()), gr.update(choices=models), model
    chosen = ctx.catalog.default_model(backend) or model
    return gr.update(choices=ctx.catalog.names()), gr.update(choices=models, value=chosen), chosen


def form_layout(catalog: Catalog, backend: str | None) -> Layout:
    """The options form of `backend`: every field of its Options but those the text row shows (TEXT backends: the
    prompt, steps and guidance, and the scheduler, width and height widgets)."""
    entry = catalog.get(backend)
    skip = TEXT_ROW + TEXT_WIDGETS if entry is not None and entry.can(TEXT) else ()
    return Layout.of(backend, catalog.options_schema(backend), skip)


def form_box(layout: Layout, is_text: bool) -> dict:
    """The form accordion's label, visibility and state: hidden for a backend without options, open for TEXT."""
    return {"label": f"Backend options: {layout.backend}", "visible": bool(layout.slots or layout.elsewhere),
            "open": is_text}


def form_outputs(layout: Layout, is_text: bool) -> tuple:
    """Updates for the form's accordion, note, layout state and pool (in that order) to show `layout`."""
    return (gr.update(**form_box(layout, is_text)), layout.note(), layout, *pool_updates(layout))


def collect_form(layout: Layout | None, backend: str | None, *values: object) -> dict:
    """The form's option values for `backend` (see studio.ui.options.form_options): the pool's values, then (when
    sent) the text row's scheduler, width and height widgets (studio.ui.options.widget_options)."""
    pool = len(pool_order())
    form = form_options(layout, backend, values[:pool])
    if layout is not None and layout.backend == backend and len(values) > pool:
        form.update(widget_options(*values[pool:pool + len(TEXT_WIDGETS)]))
    return form


def options_hint(layout: Layout) -> str:
    """An example for the JSON box: one of the backend's own option names, or a note that it takes none."""
    names = [f.name for f in layout.slots.values()] + layout.elsewhere
    return f'{{"{names[0]}": ...}}' if names else "this backend takes no options"


def build_app(client: QueueClient, settings: Settings, catalog: Catalog | None = None,
              auth_mode: str | None = None) -> gr.Blocks:
    """Build the studio's Gradio app on a queue client (nothing runs a model in this process).

    `auth_mode` is how its login is checked (studio.ui.security.auth_mode; default: from `settings` now): the
    signed-in name is a studio user only for "users" (studio.ui.jobs.current_user)."""
    from studio.ui.security import auth_mode as mode_of

    token = building_with(auth_mode or mode_of(settings))
    try:
        return _build(client, settings, catalog)
    finally:
        end_building(token)


def _build(client: QueueClient, settings: Settings, catalog: Catalog | None) -> gr.Blocks:
    catalog = catalog or Catalog(settings)
    ctx = UIContext(client=client, settings=settings, catalog=catalog,
                    runner=JobRunner(client, timeout_s=float(settings.job_time_limit_s) + 300.0,
                                     shelf=ArtifactShelf.for_settings(settings)),
                    images=DatasetImages(settings))
    default = catalog.default_backend()
    models = catalog.models(default)
    is_text = bool(catalog.get(default) and catalog.get(default).can(TEXT))
    layout = form_layout(catalog, default)

    with StudioBlocks(title="Latent Studio", analytics_enabled=False) as demo:
        with gr.Row(elem_id="ls-header", equal_height=True):
            gr.HTML(HEADER, elem_id="ls-title")
            backend = gr.Dropdown(catalog.names(), value=default, label="Backend", allow_custom_value=True,
                                  scale=0, min_width=180, elem_id="backend-picker")
            model = gr.Dropdown(models, value=catalog.default_model(default), label="Model", allow_custom_value=True,
                                scale=0, min_width=220, elem_id="model-picker")
        any_name_in_api(backend)  # the API takes any name (choices change with plugins and backends); checked later
        any_name_in_api(model)
        line = gr.HTML(backend_line(ctx, default), elem_id="ls-backend-line")
        with gr.Row(visible=is_text) as text_row:
            prompt = gr.Textbox(value="", label="Prompt", placeholder="a watercolour fox in the snow", scale=4,
                                elem_id="prompt")
            negative = gr.Textbox(value="", label="Negative prompt", placeholder="blurry, text", scale=2)
            steps = gr.Number(label="Denoising steps", value=0, precision=0, minimum=0, maximum=200, scale=1,
                              info="0: the backend's default")
            guidance = gr.Number(label="Guidance", value=0, minimum=0, maximum=30, scale=1,
                                 info="0: the backend's default")
            text_fields = widget_fields(catalog.options_schema(default) if is_text else None)
            scheduler, width, height = (
                gr.Dropdown(widget_choices(text_fields.get(name)), value=DEFAULT_CHOICE, label=label, scale=1,
                            min_width=165, allow_custom_value=True, elem_id=f"ls-{name}",
                            visible=name in text_fields)
                for name, label in (("scheduler", "Sampler"), ("width", "Width"), ("height", "Height")))
        # a PNG dropped anywhere on the page lands here (studio.ui.components.PAGE_JS): Generate restores it
        page_drop = gr.File(file_types=[".png"], type="filepath", visible="hidden", elem_id="ls-drop-file")
        with gr.Accordion(**form_box(layout, is_text), elem_id="ls-form") as box:
            form_note = gr.Markdown(layout.note(), elem_id="ls-form-note")
            with gr.Row(equal_height=False):
                pool = build_pool(layout)
        with gr.Accordion("Backend options (JSON, advanced)", open=False):
            options_json = gr.Textbox(value="", label="Options (JSON object, on top of the form's values)",
                                      placeholder=options_hint(layout), max_lines=3, elem_id="ls-options",
                                      container=False)
        layout_state, options_form = gr.State(layout), gr.State({})
        ctx.components.update(backend=backend, model=model, prompt=prompt, negative_prompt=negative, steps=steps,
                              guidance=guidance, options_json=options_json, options_form=options_form,
                              scheduler=scheduler, width=width, height=height, page_drop=page_drop,
                              form=[box, form_note, layout_state, *pool],
                              collect_form=(ui_errors(collect_form),
                                            [layout_state, backend, *pool, scheduler, width, height], options_form))

        with gr.Tabs(selected="generate", elem_id="ls-tabs") as tabs:
            ctx.components["tabs"] = tabs
            tab_blocks = {}
            for label, tab_id, module in TABS:
                with gr.Tab(label, id=tab_id, elem_id=f"tab-{tab_id}") as tab:
                    module.build(ctx)
                tab_blocks[tab_id] = tab

        _wire(ctx, demo, tab_blocks, text_row, line)
    demo.queue(default_concurrency_limit=16)
    return demo


def _wire(ctx: UIContext, demo: gr.Blocks, tabs: dict, text_row: gr.Row, line: gr.HTML) -> None:
    backend, model = ctx["backend"], ctx["model"]
    vector, note = ctx["edit_vector"], ctx["edit_note"]
    refresh_vectors = ctx["refresh_vectors"]

    def on_backend(backend_: str, model_: str | None, vector_: str | None, *widgets: object) -> tuple:
        """The backend's own models (its default unless the model shown is one of them), text row (with its
        scheduler, width and height widgets: `widgets` are their values now) and form."""
        ctx.catalog.refresh_if_changed()
        models = ctx.catalog.models(backend_)
        chosen = model_ if model_ in models else ctx.catalog.default_model(backend_)
        entry = ctx.catalog.get(backend_)
        is_text = bool(entry and entry.can(TEXT))
        layout = form_layout(ctx.catalog, backend_)
        return (gr.update(choices=models, value=chosen), gr.update(visible=is_text), backend_line(ctx, backend_),
                gr.update(placeholder=options_hint(layout)), *refresh_vectors(backend_, chosen, vector_),
                *form_outputs(layout, is_text),
                *widget_updates(ctx.catalog.options_schema(backend_) if is_text else None,
                                (*widgets, *[DEFAULT_CHOICE] * len(TEXT_WIDGETS))[:len(TEXT_WIDGETS)]))

    # every handler that lists vectors is wrapped, so that it knows the event's user (studio.ui.jobs.current_user)
    widgets = [ctx["scheduler"], ctx["width"], ctx["height"]]
    backend.change(ui_errors(on_backend), inputs=[backend, model, vector, *widgets],
                   outputs=[model, text_row, line, ctx["options_json"], vector, note, *ctx["form"], *widgets],
                   api_visibility="private")
    model.change(ui_errors(refresh_vectors), inputs=[backend, model, vector], outputs=[vector, note],
                 api_visibility="private")

    preview_fn, preview_inputs, preview_out = ctx["compress_preview"]

    def on_load(backend_: str, model_: str, vector_: str | None, *preview_args: object) -> tuple:
        """Every page load lists the models as they are now (one added while the studio runs shows on reload)."""
        backend_update, model_update, model_ = pickers_now(ctx, backend_, model_)
        vectors = refresh_vectors(backend_, model_, vector_)
        no_vectors = not ctx.catalog.vectors(backend_, model_)
        return (backend_update, model_update, backend_line(ctx, backend_), *vectors, gr.Accordion(open=no_vectors),
                preview_fn(*preview_args))

    demo.load(ui_errors(on_load), inputs=[backend, model, vector, *preview_inputs],
              outputs=[backend, model, line, vector, note, ctx["edit_fit_box"], preview_out],
              api_visibility="private")

    timer, auto = ctx["queue_timer"], ctx["queue_auto"]
    refresh_all, refresh_inputs, refresh_outputs = ctx["queue_refresh"]
    for tab_id, tab in tabs.items():
        if tab_id == "queue":
            tab.select(lambda on: gr.Timer(active=bool(on)), inputs=auto, outputs=timer, api_visibility="private",
                       queue=False)
            tab.select(refresh_all, inputs=refresh_inputs, outputs=refresh_outputs, api_visibility="private")
        else:
            tab.select(lambda: gr.Timer(active=False), outputs=timer, api_visibility="private", queue=False)
    workers_fn, workers_out = ctx["plugins_refresh"]
    tabs["plugins"].select(workers_fn, outputs=workers_out, api_visibility="private")
    wire_send_to(ctx)
    _api(ctx)


PUBLIC_FIELDS = ("id", "state", "op", "backend", "model", "progress", "step", "total", "message", "eta_s", "error",
                 "spec", "priority", "created", "started", "finished", "attempts", "max_attempts", "parent", "metrics")


def public_job(job: dict) -> dict:
    """A job status for API clients: no server paths or previews; artifacts by name and kind."""
    out = without_paths({k: job.get(k) for k in PUBLIC_FIELDS})
    out["artifacts"] = [{"name": a.get("name"), "kind": a.get("kind"), "size": a.get("size")}
                        for a in job.get("artifacts") or []]
    return out


def _api(ctx: UIContext) -> None:
    """Endpoints for programs: submit any job spec, follow it, list jobs. Arguments arrive as any JSON value:
    each is checked, and every rejection is one line naming the field."""
    from studio.errors import InputError, NotFound
    from studio.ui.inputs import int_field, job_id_field, parse_spec_json, state_field

    @ui_errors
    def submit(spec_json: str, priority: int = 5) -> str:
        """Validate and queue a job spec (a JSON object, as `studio submit` builds); returns the job id at once."""
        spec = parse_spec_json(spec_json, ctx.settings)
        level = int_field(priority, "priority", 0, 9, default=5)
        try:
            return ctx.runner.submit(spec, priority=level)
        except (InputError, NotFound) as exc:  # the spec's own problems: name the field they came in
            text = str(exc)
            kind = NotFound if isinstance(exc, NotFound) else InputError
            raise kind(text if text.startswith(("spec_json", "priority")) else f"spec_json: {text}") from None

    @ui_errors
    def status(job_id: str) -> dict:
        """A job's status: state, progress (0..1), message, error, timings, artifact names."""
        return public_job(scoped(ctx.client).status(job_id_field(job_id)))

    @ui_errors
    def jobs(state: str = "", limit: int = 50) -> list[dict]:
        """Recent jobs, newest first (state: QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED or empty for all)."""
        count = max(1, min(int_field(limit, "limit", 0, 10**9, default=50), 500))  # more than 500: 500
        return [public_job(r) for r in scoped(ctx.client).jobs(state_field(state), limit=count)]

    gr.api(submit, api_name="submit")
    gr.api(status, api_name="status")
    gr.api(jobs, api_name="jobs")
