"""Plugins: installed backends with versions, capabilities, models and load errors; live workers."""

from __future__ import annotations

import gradio as gr

from studio.ui.context import UIContext
from studio.ui.jobs import current_user, scoped, ui_errors
from studio.ui.views import plugin_cards, without_paths, workers_view


def visible_workers(ctx: UIContext) -> list[dict]:
    """Live workers as the event's user may see them: the id of a job they run only when it is that user's own
    (admins and the single-user default see every id; without a trusted user, none)."""
    from studio.errors import StudioError
    from studio.users import viewer_for

    workers = [dict(w) for w in ctx.client.workers()]
    try:
        user = current_user(ctx.settings)
        if viewer_for(ctx.settings, user) is None:
            return workers
        own = {j["id"] for j in scoped(ctx.client).jobs("RUNNING", limit=1000)}
    except StudioError:
        own = set()
    for w in workers:
        if w.get("job_id") and w["job_id"] not in own:
            w["job_id"], w["busy"] = None, True
    return workers


def build(ctx: UIContext) -> None:
    with gr.Row():
        gr.Markdown("Backends are plugins registered through the `latent_studio.backends` entry point; the "
                    "built-in ones load the same way as third-party packages.")
        refresh = gr.Button("Rescan plugins", size="sm", scale=0, min_width=160)
    cards = gr.HTML(plugin_cards(ctx.catalog.info), elem_id="plugins-cards")
    gr.Markdown("### Workers")
    workers = gr.HTML("", elem_id="plugins-workers")

    @ui_errors
    def rescan() -> tuple:
        """Describe installed plugins (versions, capabilities, models, errors) and live workers."""
        info = ctx.catalog.refresh(rescan=True)
        return plugin_cards(info), workers_view(visible_workers(ctx)), without_paths(info)

    details = gr.JSON(visible=False)
    refresh.click(rescan, outputs=[cards, workers, details], api_name="plugins")

    def on_select() -> tuple:
        """Opening the tab: the cards as the model roots are now (a model added since shows) and live workers."""
        return plugin_cards(ctx.catalog.refresh_if_changed()), workers_view(visible_workers(ctx))

    ctx.components["plugins_refresh"] = (ui_errors(on_select), [cards, workers])
