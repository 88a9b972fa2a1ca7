"""Train: import a dataset (a folder of images or a zip), train a backend on it as a `train` job, watch samples after
each epoch, and use the new model at once (it is put in the header's pickers)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from studio.errors import InputError, clip
from studio.spec import MAX_SEED
from studio.ui.catalog import DATASETS
from studio.ui.context import UIContext
from studio.ui.inputs import gradio_cache, int_field
from studio.ui.jobs import FINAL_STATES, preview_image, ui_errors

TRAIN = "train"


def trainable(ctx: UIContext) -> list[str]:
    """Backends the train job can train (capability `train`), in the catalog's order."""
    return [entry.name for entry in ctx.catalog.backends() if entry.can(TRAIN)]


def dataset_choices(ctx: UIContext) -> list[str]:
    """The built-in datasets, then the imported ones (studio.datasets.imported_datasets)."""
    from studio.datasets import imported_datasets

    return [*DATASETS, *[n for n in imported_datasets(ctx.settings) if n not in DATASETS]]


def uploaded(paths: object) -> list[Path]:
    """The files of an upload event that lie in Gradio's upload folder (a path sent by an API client that is
    anything else is refused: the import never reads a server file)."""
    items = paths if isinstance(paths, list) else [paths] if paths else []
    root = gradio_cache()
    out = []
    for item in items:
        path = item.get("path") if isinstance(item, dict) else item
        if not isinstance(path, str) or not path:
            raise InputError("upload: expected uploaded files")
        resolved = Path(path).resolve()
        if root not in resolved.parents:
            raise InputError("upload: that file was not uploaded to this page")
        out.append(resolved)
    return out


def suggested_name(path: object) -> str:
    """A dataset name from an uploaded zip's file name ("My faces (2).zip" -> "My-faces-2"), or ""."""
    if not isinstance(path, str) or not path:
        return ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).stem).strip("-._")[:64]


def progress_line(job_id: str, status: dict, now: float | None = None) -> str:
    """The running job's line: state, message (the epoch), step and time left, estimated from the whole run so far
    (the worker's own estimate restarts with each epoch's message)."""
    state = str(status.get("state") or "?").lower()
    if state == "queued":
        return f"⏳ job `{job_id}` · queued · waiting for a worker"
    step, total = status.get("step"), status.get("total")
    message = (status.get("message") or "").strip()
    parts = [f"⏳ job `{job_id}` · {state}"]
    if message and message.lower() != state:
        parts.append(clip(message, 80))
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        parts.append(f"step {step}/{total}")
        started = status.get("started")
        if isinstance(started, (int, float)) and 0 < step <= total:
            elapsed = (now or time.time()) - float(started)
            left = elapsed * (total - step) / step
            parts.append(f"about {left:.0f} s left" if left >= 1 else "finishing")
    return " · ".join(parts)


def build(ctx: UIContext) -> None:
    backends = trainable(ctx)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            backend = gr.Dropdown(backends, value=("vae" if "vae" in backends else (backends or [None])[0]),
                                  label="Backend to train", elem_id="train-backend",
                                  info="Backends that can train fresh weights.")
            dataset = gr.Dropdown(dataset_choices(ctx), value="mnist", label="Dataset", allow_custom_value=True,
                                  elem_id="train-dataset", info="Built-in, imported, or folder:PATH in a data root.")
            with gr.Accordion("Import a dataset (a folder of images or a zip)", open=False, elem_id="train-import-box"):
                import_name = gr.Textbox(label="Dataset name", placeholder="my-faces", elem_id="train-dataset-name",
                                         info="Sub-folders become classes; files that are not images are skipped.")
                folder = gr.File(label="Folder of images", file_count="directory", type="filepath",
                                 elem_id="train-upload-folder")
                archive = gr.File(label="…or a zip", file_types=[".zip"], type="filepath", elem_id="train-upload-zip")
                import_button = gr.Button("Import", elem_id="train-import")
                import_status = gr.Markdown("", elem_id="train-import-status")
            with gr.Row():
                epochs = gr.Number(label="Epochs", value=1, precision=0, minimum=1, maximum=1000,
                                   elem_id="train-epochs")
                limit = gr.Number(label="Limit", value=0, precision=0, minimum=0, elem_id="train-limit",
                                  info="First N images; 0: all")
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id="train-seed")
                batch = gr.Number(label="Batch size", value=0, precision=0, minimum=0, elem_id="train-batch",
                                  info="0: the recipe's")
            name = gr.Textbox(label="New model name", placeholder="my-model", elem_id="train-name",
                              info="Letters, digits, '_', '.', '-'. Every tab can use it when training ends.")
            ready = ("Pick a dataset, name the model and press **Train**." if backends else
                     "No installed backend can train (capability `train`; vae, gan and sd can).")
            status = gr.Markdown(ready, elem_id="train-status", elem_classes=["ls-status"], render=False)
            with gr.Row():
                run = gr.Button("Train", variant="primary", elem_id="train-run", scale=3, interactive=bool(backends))
                from studio.ui.tabs.queue import cancel_button  # here: queue.py imports the tab modules

                cancel_button(ctx, TRAIN, status, elem_id="train-cancel")
        with gr.Column(scale=2):
            samples = gr.Gallery(label="Samples after each epoch (the same seeds every time)", columns=4,
                                 height="auto", object_fit="contain", elem_id="train-samples",
                                 elem_classes=["ls-gallery", "ls-pixel"], format="png", allow_preview=True)
            status.render()
            with gr.Accordion("New model", open=False):
                summary = gr.JSON(label="Model", elem_id="train-summary")

    @ui_errors
    def import_dataset(name: str, folder: object, archive: object) -> tuple:
        """Import the uploaded folder or zip as dataset `name`; returns the dataset picker (choices, the new one
        picked) and one line saying what was imported and skipped."""
        from studio.dataset_import import import_images

        name = (name or "").strip()
        if not name:
            raise InputError("dataset name: give the dataset a name")
        files = uploaded(archive) + uploaded(folder)
        if not files:
            raise InputError("upload: choose a folder of images or a zip first")
        report = import_images(ctx.settings, name, files)
        return gr.update(choices=dataset_choices(ctx), value=report.name), f"✓ {report.line()}"

    import_button.click(import_dataset, inputs=[import_name, folder, archive], outputs=[dataset, import_status],
                        api_name="import_dataset")
    archive.upload(lambda path, current: current or suggested_name(path), inputs=[archive, import_name],
                   outputs=import_name, api_visibility="private", queue=False)
    dataset.focus(lambda current: gr.update(choices=dataset_choices(ctx), value=current), inputs=dataset,
                  outputs=dataset, api_visibility="private", queue=False)

    @ui_errors
    def train(backend: str, dataset: str, epochs: float, limit: float, seed: float, name: str,
              batch_size: float = 0, progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        """Train `backend` on `dataset` as model `name`; yields the samples after each epoch and a progress line
        while it runs; at the end the header's pickers show the new model (its backend is picked too)."""
        if backend not in trainable(ctx):
            raise InputError(f"backend: {clip(backend)!r} cannot train here (choose one of "
                             f"{', '.join(trainable(ctx)) or 'none installed'})")
        name = (name or "").strip()
        if not name:
            raise InputError("new model name: give the model a name")
        if not dataset:
            raise InputError("dataset: pick a dataset")
        limit_n = int_field(limit, "limit", 0, 10_000_000, default=0)
        batch_n = int_field(batch_size, "batch_size", 0, 100_000, default=0)
        spec = {"op": "train", "backend": backend, "dataset": str(dataset), "name": name,
                "epochs": int_field(epochs, "epochs", 1, 1000, default=1),
                "seed": int_field(seed, "seed", 0, MAX_SEED, default=0), "limit": limit_n or None,
                "options": {"batch_size": batch_n} if batch_n else {}}
        job_id = ctx.runner.submit(spec)
        gallery: list = []
        status: dict = {}
        shown = (None, None)
        for status in ctx.runner.watch(job_id, progress):
            if status.get("state") in FINAL_STATES:
                break
            line, b64 = progress_line(job_id, status), status.get("preview_png_b64")
            if (line, b64) == shown:
                continue
            image = preview_image(status) if b64 and b64 != shown[1] else None
            if image is not None:  # new samples: the end of an epoch
                epoch = re.search(r"epoch \d+/\d+", status.get("message") or "")
                gallery.append((image, f"after {epoch.group(0)}" if epoch else "samples"))
            shown = (line, b64)
            yield (list(gallery) if image is not None else gr.skip()), line, gr.skip(), gr.skip(), gr.skip()
        last = status.get("preview_png_b64")
        image = preview_image(status) if last and last != shown[1] else None
        if image is not None:  # the last epoch's samples, written just before the job ended
            gallery.append((image, f"after epoch {spec['epochs']}/{spec['epochs']}"))
        done = ctx.runner.finish(job_id, status)
        ctx.catalog.refresh()  # a registered model is listed from the records: describe again now
        model = done.metrics.get("name", name)
        picker = gr.update(choices=ctx.catalog.models(backend), value=model)
        restore = {"backend": backend, "at": time.time_ns()}  # the header picks the backend after the model
        line = (done.summary() + f" · model **{model}** of {backend} is ready and picked above: "
                "every tab uses it now")
        yield (list(gallery) or gr.skip(), line, without_out(done.metrics), picker, restore)

    run.click(train, inputs=[backend, dataset, epochs, limit, seed, name, batch],
              outputs=[samples, status, summary, ctx["model"], ctx["gen_restore_backend"]], api_name="train",
              show_progress="full", show_progress_on=[status])


def without_out(metrics: dict) -> dict:
    """The train job's summary for the page: name, backend, sha256, size and the training metrics."""
    keep = ("name", "backend", "sha256", "size", "metrics")
    return {k: metrics[k] for k in keep if k in metrics}
