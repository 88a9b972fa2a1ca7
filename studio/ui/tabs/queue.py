"""Queue: every job with its state and progress bar; cancel, retry, replay; a history gallery with each image's
record, a download, and "send to Generate"."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.errors import InputError
from studio.ui.artifacts import ArtifactShelf
from studio.ui.context import UIContext
from studio.ui.inputs import generate_params, job_id_field, read_png_record, trusted_path
from studio.ui.jobs import ScopedClient, shown_artifact, ui_errors
from studio.ui.tabs.generate import restore_outputs, restore_targets
from studio.ui.views import job_table, without_paths

STATES = ["all", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
MAIN_ARTIFACTS = ("grid.png", "strip.png", "side_by_side.png", "plot.png", "top_anomalies.png", "comparison.png",
                  "result.png")
HISTORY_JOBS = 40
REFRESH_S = 1.5


def _state(value: str | None) -> str | None:
    return None if not value or value == "all" else value


def job_label(job: dict) -> str:
    return f"{job['id']} · {job.get('op', '?')} · {job.get('backend', '?')} · {str(job.get('state', '')).lower()}"


def main_image(client: Any, job: dict, shelf: ArtifactShelf | None = None) -> str | None:
    """The picture that stands for a finished job in the history."""
    images = {a["name"]: a for a in job.get("artifacts") or [] if a.get("kind") == "image"}
    order = [n for n in MAIN_ARTIFACTS if n in images] + sorted(n for n in images if n not in MAIN_ARTIFACTS)
    for name in order:
        path = shown_artifact(client, shelf, job["id"], images[name])
        if path is not None:
            return path
    return None


def build(ctx: UIContext) -> None:
    client = ScopedClient(ctx.client)  # every call sees only the signed-in user's jobs (admins: all)
    with gr.Row(equal_height=False):
        state = gr.Dropdown(STATES, value="all", label="Show", scale=2, min_width=160)
        with gr.Column(scale=1, min_width=200):
            auto = gr.Checkbox(value=True, label=f"Refresh every {REFRESH_S:g} s")
            refresh = gr.Button("Refresh now", size="sm", elem_id="queue-refresh")
    table = gr.HTML(job_table([]), elem_id="queue-table")
    with gr.Row(equal_height=False):
        job = gr.Dropdown([], label="Job", allow_custom_value=True, scale=2, elem_id="queue-job",
                          info="Pick a job from the table (or type its id).")
        with gr.Column(scale=3):
            with gr.Row():
                cancel = gr.Button("Cancel", variant="stop", size="md", elem_id="queue-cancel")
                retry = gr.Button("Retry", size="md", elem_id="queue-retry")
                replay = gr.Button("Replay", size="md", elem_id="queue-replay")
                show = gr.Button("Show its images", size="md")
    action = gr.Markdown("", label="Status", elem_classes=["ls-status"], elem_id="queue-action")
    with gr.Accordion("Job details", open=False):
        details = gr.JSON(label="Status")

    gr.Markdown("### History")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            history = gr.Gallery(label="Recent results (click one to see its record)", columns=5, height="auto",
                                 object_fit="contain", elem_classes=["ls-gallery", "ls-pixel"], format="png",
                                 elem_id="queue-history", allow_preview=False)
        with gr.Column(scale=2):
            record = gr.JSON(label="Record (embedded in the PNG)", elem_id="queue-record")
            download = gr.File(label="Download the PNG (it carries its record)", interactive=False, height=100)
            with gr.Row():
                send = gr.Button("Send to Generate", variant="primary", elem_id="send-to-generate")
                replay_image = gr.Button("Replay this image")
    selected = gr.State(None)
    selected_job = gr.State(None)  # the id of the picked image's job (replayed by id, never from a file)
    timer = gr.Timer(REFRESH_S, active=False)
    ctx.components.update(queue_timer=timer, queue_auto=auto)

    def jobs_view(state_filter: str) -> str:
        return job_table(client.jobs(_state(state_filter), limit=60))

    @ui_errors
    def refresh_all(state_filter: str, current: str | None) -> tuple:
        jobs = client.jobs(_state(state_filter), limit=60)
        choices = [(job_label(j), j["id"]) for j in jobs]
        value = current if current in {j["id"] for j in jobs} else (jobs[0]["id"] if jobs else None)
        return job_table(jobs), gr.update(choices=choices, value=value), history_items()

    def history_items() -> list:
        items = []
        for j in client.jobs("SUCCEEDED", limit=HISTORY_JOBS):
            path = main_image(client, j, ctx.runner.shelf)
            if path:
                items.append((path, f"{j.get('op')} · {j.get('backend')} · {j['id']}"))
        return items

    refresh.click(refresh_all, inputs=[state, job], outputs=[table, job, history], api_visibility="private")
    state.change(refresh_all, inputs=[state, job], outputs=[table, job, history], api_visibility="private")
    timer.tick(ui_errors(jobs_view), inputs=state, outputs=table, api_visibility="private", show_progress="hidden")
    auto.change(lambda on: gr.Timer(active=bool(on)), inputs=auto, outputs=timer, api_visibility="private",
                queue=False)
    ctx.components["queue_refresh"] = (refresh_all, [state, job], [table, job, history])

    def status_of(job_id: str) -> dict:
        st = dict(client.status(job_id))
        st.pop("preview_png_b64", None)
        return without_paths(st)

    @ui_errors
    def on_job(job_id: str | None) -> dict | None:
        return status_of(job_id) if job_id else None

    job.change(on_job, inputs=job, outputs=details, api_visibility="private")

    def need(job_id: str | None) -> str:
        if not job_id or not str(job_id).strip():
            raise InputError("pick a job first")
        return str(job_id).strip()

    @ui_errors
    def cancel_job(job_id: str, state_filter: str) -> tuple:
        """Cancel a job: a queued job never runs, a running one stops at its next step."""
        st = client.cancel(need(job_id))
        return f"Cancel requested for job `{st.get('id', job_id)}` (now {str(st.get('state', '?')).lower()}).", \
            jobs_view(state_filter)

    @ui_errors
    def retry_job(job_id: str, state_filter: str) -> tuple:
        """Submit the same spec again; returns the new job's id."""
        new = client.retry(need(job_id))
        return f"Retrying as job `{new}`.", jobs_view(state_filter)

    @ui_errors
    def replay_job(job_id: str, state_filter: str) -> tuple:
        """Re-run a job (by id, one you see) from its record; returns the new job's id."""
        new = client.replay_job(job_id_field(job_id))
        return f"Replaying as job `{new}`.", jobs_view(state_filter)

    cancel.click(cancel_job, inputs=[job, state], outputs=[action, table], api_name="cancel")
    retry.click(retry_job, inputs=[job, state], outputs=[action, table], api_name="retry")
    replay.click(replay_job, inputs=[job, state], outputs=[action, table], api_name="replay")

    @ui_errors
    def job_images(job_id: str) -> list:
        job_id = need(job_id)
        result = client.result(job_id)
        shelf = ctx.runner.shelf
        found = result.get("id") or job_id
        items = [(shown_artifact(client, shelf, found, a), f'{a["name"]} · {found}')
                 for a in result.get("artifacts", []) if a.get("kind") == "image"]
        return [(p, name) for p, name in items if p is not None]

    show.click(job_images, inputs=job, outputs=history, api_visibility="private")

    @ui_errors
    def pick(evt: gr.SelectData) -> tuple:
        value = evt.value or {}
        image = value.get("image") if isinstance(value, dict) else None
        path = image.get("path") if isinstance(image, dict) else None
        if not path:
            return None, None, None, None
        path = trusted_path(path, ctx.settings)
        try:
            record = read_png_record(path, ctx.settings)
        except InputError as exc:  # a plot or a GIF frame: still downloadable, just without a record
            record = {"note": str(exc)}
        return record, path, path, caption_job(value.get("caption") if isinstance(value, dict) else None)

    def caption_job(caption: object) -> str | None:
        """The job id that ends a history caption, when it is a job this user sees (else None)."""
        if not isinstance(caption, str) or " · " not in caption:
            return None
        try:
            return str(client.status(job_id_field(caption.rsplit(" · ", 1)[1]))["id"])
        except Exception:
            return None

    history.select(pick, outputs=[record, download, selected, selected_job], api_visibility="private")

    @ui_errors
    def send_to_generate(path: str | None) -> tuple:
        if not path:
            raise InputError("click an image in the history first")
        params = generate_params(read_png_record(trusted_path(path, ctx.settings), ctx.settings))
        return (*restore_outputs(ctx, params), gr.Tabs(selected="generate"))

    send.click(send_to_generate, inputs=selected, outputs=[*restore_targets(ctx), ctx["tabs"]],
               api_visibility="private")

    @ui_errors
    def replay_png(job_id: str | None, state_filter: str) -> tuple:
        """Replay the picked image's job, by its id (the page never replays from a file path)."""
        if not job_id:
            raise InputError("click an image in the history first")
        new = client.replay_job(job_id_field(job_id))
        return f"Replaying the image's job as `{new}`.", jobs_view(state_filter)

    replay_image.click(replay_png, inputs=[selected_job, state], outputs=[action, table], api_visibility="private")
