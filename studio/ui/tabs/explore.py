"""Explore: a PCA / t-SNE / UMAP map of an encoded dataset (hover or click a point to see its image), and an
anomaly ranking by reconstruction error."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from studio.errors import StudioError
from studio.ui.catalog import DATASETS
from studio.ui.context import UIContext
from studio.ui.jobs import ui_errors
from studio.ui.scatter import SCATTER_JS, empty_scatter, scatter_html
from studio.ui.sendto import send_to_row

OOD_CHOICES = ["none", "fashion", "animals", "mnist", "digits"]


def build(ctx: UIContext) -> None:
    def thumbnail(key: str | list) -> str:
        """A dataset image as a PNG data URI for the map's hover tooltip; key: "dataset|split|index"."""
        parts = key if isinstance(key, list) else str(key).rsplit("|", 2)
        if len(parts) != 3:
            return ""
        try:
            return ctx.images.thumbnail(str(parts[0]), str(parts[1]), int(parts[2]))
        except (StudioError, ValueError):
            return ""

    gr.Markdown("### Map of the latent space")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            dataset = gr.Dropdown(DATASETS, value="mnist", label="Dataset", allow_custom_value=True)
            split = gr.Radio(["test", "train"], value="test", label="Split")
            method = gr.Radio(["pca", "tsne", "umap"], value="pca", label="Projection",
                              info="PCA is instant; t-SNE and UMAP show clusters (UMAP's first run compiles, ~20 s).")
            limit = gr.Slider(100, 10000, value=1000, step=100, label="Images")
            seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
            go = gr.Button("Project", variant="primary", elem_id="project-button")
        with gr.Column(scale=3):
            scatter = gr.HTML(empty_scatter(), js_on_load=SCATTER_JS, elem_id="explore-scatter",
                              server_functions=[thumbnail])
            status = gr.Markdown("", label="Status", elem_classes=["ls-status"])
        with gr.Column(scale=1, min_width=200):
            point = gr.Image(label="Clicked point", interactive=False, height=220, elem_classes=["ls-pixel", "ls-big"],
                             format="png",
                             elem_id="explore-point", buttons=[])
            point_info = gr.Markdown("Hover a point to peek at it; click to pin it here.", label="Point",
                                     elem_classes=["ls-status"])
            with gr.Accordion("Plot as PNG", open=False):
                plot = gr.Image(label="Plot", type="filepath", interactive=False, buttons=["download"])
    shown = gr.State({})

    @ui_errors
    def project(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float, guidance: float,
                options_json: str, form: dict | None,
                dataset: str, split: str, method: str, limit: float, seed: float,
                progress: gr.Progress = gr.Progress()) -> tuple:
        """Encode a dataset and project it to 2-D; returns the interactive map, the PNG plot and a status line."""
        spec = {"op": "project", **ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance,
                                                options_json, form),
                "dataset": dataset, "split": split, "method": method, "limit": int(limit), "seed": int(seed or 0)}
        done = ctx.runner.run(spec, progress)
        data_path = done.path("projection.json")
        data = json.loads(Path(data_path).read_text()) if data_path else {}
        title = f"{backend} · {dataset} {split} · {method} · {len(data.get('labels', []))} images"
        html = scatter_html(data.get("coords", []), data.get("labels", []), data.get("classes", []), dataset, split,
                            title)
        cached = " (from cache)" if done.metrics.get("cached") else ""
        return html, done.path("plot.png"), done.summary() + cached, {"dataset": dataset, "split": split}

    ctx.job_event(go.click, project, inputs=[*ctx.common_inputs(), dataset, split, method, limit, seed],
                  outputs=[scatter, plot, status, shown], api_name="project", show_progress="full")

    @ui_errors
    def pin(state: dict, evt: gr.EventData) -> tuple:
        index = int(getattr(evt, "index", -1))
        if not state or index < 0:
            return gr.skip(), gr.skip()
        image, label = ctx.images.image(state["dataset"], state["split"], index, scale=8)
        return image, f"**#{index}** of {state['dataset']} {state['split']} · class **{label}**"

    scatter.click(pin, inputs=shown, outputs=[point, point_info], api_visibility="private")

    gr.Markdown("### Anomalies: the images the model reconstructs worst")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            a_dataset = gr.Dropdown(DATASETS, value="mnist", label="Dataset", allow_custom_value=True)
            a_split = gr.Radio(["test", "train"], value="test", label="Split")
            a_ood = gr.Dropdown(OOD_CHOICES, value="fashion", label="Out-of-distribution set (for AUROC)",
                                allow_custom_value=True)
            a_limit = gr.Slider(100, 10000, value=1000, step=100, label="Images per set")
            a_top = gr.Slider(4, 64, value=24, step=1, label="Show the top")
            a_go = gr.Button("Rank anomalies", variant="primary", elem_id="anomalies-button")
        with gr.Column(scale=3):
            auroc = gr.Markdown("", label="Summary", elem_id="anomalies-auroc")
            gallery = gr.Gallery(label="Highest reconstruction error first", columns=8, height=300,
                                 elem_classes=["ls-gallery", "ls-pixel"], format="png", elem_id="anomalies-gallery")
            send_to_row(ctx, gallery, exclude=("generate",))  # dataset images: no record to restore
            table = gr.Dataframe(headers=["Rank", "Set", "Index", "Label", "Score (MSE)"], value=[],
                                 interactive=False, label="Ranking", max_height=260)
            a_status = gr.Markdown("", label="Status", elem_classes=["ls-status"])

    @ui_errors
    def rank(backend: str, model: str, prompt: str, negative_prompt: str, denoise_steps: float, guidance: float,
             options_json: str, form: dict | None,
             dataset: str, split: str, ood: str, limit: float, top: float,
             progress: gr.Progress = gr.Progress()) -> tuple:
        """Rank images by reconstruction error; returns the AUROC line, the top images and the ranking table."""
        ood_dataset = None if not ood or ood == "none" else ood
        spec = {"op": "anomalies", **ctx.job_base(backend, model, prompt, negative_prompt, denoise_steps, guidance,
                                                  options_json, form),
                "dataset": dataset, "split": split, "limit": int(limit), "ood_dataset": ood_dataset,
                "top": int(top)}
        done = ctx.runner.run(spec, progress)
        data_path = done.path("anomalies.json")
        data = json.loads(Path(data_path).read_text()) if data_path else {}
        ranking = data.get("ranking") or done.metrics.get("top") or []
        names = {"in": dataset, "ood": ood_dataset or "?"}
        items = []
        for r in ranking[: int(top)]:
            try:
                image, label = ctx.images.image(names[r["source"]], split, int(r["index"]), scale=1)
            except Exception:  # a folder dataset that moved: leave the picture out, keep the ranking
                continue
            items.append((image, f"{names[r['source']]} #{r['index']} · {label} · {r['score']:.4f}"))
        rows = [[i + 1, names.get(r["source"], r["source"]), r["index"], r["label"], round(r["score"], 5)]
                for i, r in enumerate(ranking[:100])]
        m = done.metrics
        line = f"**{m.get('n', len(ranking))} images** · mean error {m.get('mean_score', 0):.4f} on {dataset}"
        if isinstance(m.get("auroc"), (int, float)):
            line += (f" vs {m.get('mean_score_ood', 0):.4f} on {ood_dataset} · **AUROC {m['auroc']:.3f}** "
                     f"({dataset} vs {ood_dataset}, reconstruction error as the score)")
        return line, items, rows, done.summary()

    ctx.job_event(a_go.click, rank, inputs=[*ctx.common_inputs(), a_dataset, a_split, a_ood, a_limit, a_top],
                  outputs=[auroc, gallery, table, a_status], api_name="anomalies", show_progress="full")
