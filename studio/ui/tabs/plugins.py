"""Plugins: installed backends with versions, capabilities, models and load errors; live workers."""

from __future__ import annotations

import gradio as gr

from studio.ui.context import UIContext
from studio.ui.jobs import ui_errors
from studio.ui.views import plugin_cards, without_paths, workers_view


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
        return plugin_cards(info), workers_view(ctx.client.workers()), without_paths(info)

    details = gr.JSON(visible=False)
    refresh.click(rescan, outputs=[cards, workers, details], api_name="plugins")
    ctx.components["plugins_refresh"] = (lambda: workers_view(ctx.client.workers()), workers)
