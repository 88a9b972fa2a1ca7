"""Queue: every job with its state and progress bar; cancel, retry, replay; a history gallery with each image's
record, a download, and "send to Generate"."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.errors import InputError, StudioError
from studio.ui.artifacts import ArtifactShelf
from studio.ui.context import UIContext
from studio.ui.inputs import generate_params, job_id_field, read_png_record, trusted_path
from studio.ui.jobs import ScopedClient, shown_artifact, ui_errors
from studio.ui.sendto import send_to_row
from studio.ui.tabs.generate import restore_outputs, restore_targets
from studio.ui.views import job_table, without_paths

STATES = ["all", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
MAIN_ARTIFACTS = ("grid.png", "strip.png", "side_by_side.png", "plot.png", "top_anomalies.png", "comparison.png",
                  "result.png")
HISTORY_JOBS = 40
REFRESH_S = 1.5


def _state(value: str | None) -> str | None:
    return None if not value or value == "all" else value


def json_safe(value: Any) -> Any:
    """`value` as the JSON view can show it: every dict key a string (a job's metrics may be keyed by numbers)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


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


PAGE_SIZE = 20
LISTED = 200  # the most recent jobs the table pages through
# A click on a row of the table picks its job (the row's data-job attribute; see studio.ui.views.job_table).
ROW_CLICK_JS = """
element.addEventListener('click', (event) => {
  const row = event.target.closest('tr[data-job]');
  if (!row || !element.contains(row)) return;
  element.dataset.picked = row.dataset.job;
  element.querySelectorAll('tr.ls-picked').forEach((r) => r.classList.remove('ls-picked'));
  row.classList.add('ls-picked');
  trigger('select', {index: row.rowIndex - 1, value: row.dataset.job});
});
watch('value', () => {
  const picked = element.dataset.picked;
  element.querySelectorAll('tr[data-job]').forEach((r) => r.classList.toggle('ls-picked', r.dataset.job === picked));
});
"""
ROW_CSS = ("tr[data-job] { cursor: pointer; } tr[data-job]:hover td { background: var(--background-fill-secondary); } "
           "tr.ls-picked td { background: var(--color-accent-soft) !important; font-weight: 600; }")


def page_of(jobs: list[dict], page: int | None, size: int = PAGE_SIZE) -> tuple[list[dict], int, int]:
    """The jobs of page `page` (0-based, clamped to the pages there are), that page and the number of pages."""
    pages = max(1, -(-len(jobs) // size))
    page = min(max(int(page or 0), 0), pages - 1)
    return jobs[page * size:(page + 1) * size], page, pages


def page_label(count: int, page: int, pages: int) -> str:
    more = "+" if count >= LISTED else ""
    return f"Page {page + 1} of {pages}{more} · {count}{more} job{'s' if count != 1 else ''}"


def newest_unfinished(jobs: list[dict], op: str, user: str | None) -> dict | None:
    """The newest QUEUED or RUNNING job of `op` that `user` started (jobs newest first), or None."""
    return next((j for j in jobs if j.get("op") == op and j.get("state") in ("QUEUED", "RUNNING")
                 and j.get("owner", user) == user), None)


def cancel_button(ctx: UIContext, op: str, status: gr.components.Component, label: str = "Cancel",
                  elem_id: str | None = None) -> gr.Button:
    """A Cancel button, placed where it is called (e.g. beside Generate), that cancels the newest job of `op` the
    signed-in user started and is still queued or running; the handler that follows that job then ends (its
    job is CANCELLED). `status` gets one line saying what was cancelled."""
    from studio.ui.jobs import current_user

    client = ScopedClient(ctx.client)
    button = gr.Button(label, variant="stop", elem_id=elem_id)

    @ui_errors
    def cancel_running() -> str:
        """Cancel the newest running or queued job of this op that the signed-in user started."""
        running = client.jobs("RUNNING", limit=50) + client.jobs("QUEUED", limit=50)
        running.sort(key=lambda j: j.get("created") or 0, reverse=True)
        job = newest_unfinished(running, op, current_user(ctx.settings))
        if job is None:
            raise InputError(f"no {op} job of yours is running or queued")
        st = client.cancel(job["id"])
        return f"Cancel requested for job `{job['id']}` (now {str(st.get('state', '?')).lower()})."

    button.click(cancel_running, outputs=status, api_visibility="private", queue=False)
    return button


def build(ctx: UIContext) -> None:
    client = ScopedClient(ctx.client)  # every call sees only the signed-in user's jobs (admins: all)
    with gr.Row(equal_height=False):
        state = gr.Dropdown(STATES, value="all", label="Show", scale=2, min_width=160)
        with gr.Column(scale=1, min_width=200):
            auto = gr.Checkbox(value=True, label=f"Refresh every {REFRESH_S:g} s")
            refresh = gr.Button("Refresh now", size="sm", elem_id="queue-refresh")
    # the actions come before the table: however many jobs there are, they stay in view
    with gr.Row(equal_height=False):
        job = gr.Dropdown([], label="Job", allow_custom_value=True, scale=2, elem_id="queue-job",
                          info="Click a row of the table (or type a job id).")
        with gr.Column(scale=3):
            with gr.Row():
                cancel = gr.Button("Cancel", variant="stop", size="md", elem_id="queue-cancel")
                retry = gr.Button("Retry", size="md", elem_id="queue-retry")
                replay = gr.Button("Replay", size="md", elem_id="queue-replay")
                show = gr.Button("Show its images", size="md")
    action = gr.Markdown("", label="Status", elem_classes=["ls-status"], elem_id="queue-action")
    table = gr.HTML(job_table([]), elem_id="queue-table", js_on_load=ROW_CLICK_JS, css_template=ROW_CSS)
    with gr.Row(equal_height=True):
        prev = gr.Button("◀ Newer", size="sm", scale=0, min_width=110, elem_id="queue-prev")
        where = gr.Markdown(page_label(0, 0, 1), elem_id="queue-page")
        following = gr.Button("Older ▶", size="sm", scale=0, min_width=110, elem_id="queue-next")
    page = gr.State(0)
    with gr.Accordion("Job details", open=False):
        details = gr.JSON(label="Status", elem_id="queue-details")

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
    send_to_row(ctx, history, selected=selected, exclude=("generate",))  # Generate: the button above
    selected_job = gr.State(None)  # the id of the picked image's job (replayed by id, never from a file)
    timer = gr.Timer(REFRESH_S, active=False)
    ctx.components.update(queue_timer=timer, queue_auto=auto)

    def listed(state_filter: str, page_: int | None) -> tuple[list[dict], int, str]:
        jobs = client.jobs(_state(state_filter), limit=LISTED)
        shown, page_, pages = page_of(jobs, page_)
        return shown, page_, page_label(len(jobs), page_, pages)

    def jobs_view(state_filter: str, page_: int | None = 0) -> tuple:
        """The table and page label of the timer's refresh. It never sets the page: a tick that began before a
        click on Older or Newer would put the old page back."""
        shown, _, label = listed(state_filter, page_)
        return job_table(shown), label

    def table_view(state_filter: str, page_: int | None = 0) -> str:
        return job_table(listed(state_filter, page_)[0])

    @ui_errors
    def refresh_all(state_filter: str, current: str | None, page_: int | None = 0) -> tuple:
        shown, page_, label = listed(state_filter, page_)
        choices = [(job_label(j), j["id"]) for j in shown]
        value = current if current else (shown[0]["id"] if shown else None)  # a picked or typed id stays
        return job_table(shown), gr.update(choices=choices, value=value), history_items(), page_, label

    def history_items() -> list:
        items = []
        for j in client.jobs("SUCCEEDED", limit=HISTORY_JOBS):
            path = main_image(client, j, ctx.runner.shelf)
            if path:
                items.append((path, f"{j.get('op')} · {j.get('backend')} · {j['id']}"))
        return items

    listing = [table, job, history, page, where]
    refresh.click(refresh_all, inputs=[state, job, page], outputs=listing, api_visibility="private")
    @ui_errors
    def first_page(state_filter: str, current: str | None) -> tuple:
        return refresh_all(state_filter, current, 0)

    def turn(step: int) -> Any:
        @ui_errors
        def to_page(state_filter: str, current: str | None, page_: int | None) -> tuple:
            """Another page of the table (and its jobs in the picker); quick: the history stays as it is."""
            shown, page_, label = listed(state_filter, (page_ or 0) + step)
            choices = [(job_label(j), j["id"]) for j in shown]
            return job_table(shown), gr.update(choices=choices, value=current or None), page_, label

        return to_page

    paging = [table, job, page, where]
    state.change(first_page, inputs=[state, job], outputs=listing, api_visibility="private")
    for button, step in ((prev, -1), (following, 1)):  # the timer pauses while the page turns: a tick that read
        # the old page must not paint it over the new one
        button.click(lambda: gr.Timer(active=False), outputs=timer, api_visibility="private", queue=False) \
            .then(turn(step), inputs=[state, job, page], outputs=paging, api_visibility="private") \
            .then(lambda on: gr.Timer(active=bool(on)), inputs=auto, outputs=timer, api_visibility="private",
                  queue=False)
    timer.tick(ui_errors(jobs_view), inputs=[state, page], outputs=[table, where], api_visibility="private",
               show_progress="hidden")
    auto.change(lambda on: gr.Timer(active=bool(on)), inputs=auto, outputs=timer, api_visibility="private",
                queue=False)
    ctx.components["queue_refresh"] = (refresh_all, [state, job, page], listing)

    def pick_row(evt: gr.SelectData) -> str | None:
        """A click on a table row: its job becomes the picked one."""
        return str(evt.value) if evt.value else gr.skip()

    table.select(pick_row, outputs=job, api_visibility="private", queue=False)

    def status_of(job_id: str) -> dict:
        st = dict(client.status(job_id))
        st.pop("preview_png_b64", None)
        return json_safe(without_paths(st))

    @ui_errors
    def on_job(job_id: str | None) -> dict | None:
        """The picked job's details. An id that is no job shows none, without an error: the action taken on it
        (Cancel, Retry, ...) says so, once."""
        if not job_id or not str(job_id).strip():
            return None
        try:
            return status_of(str(job_id).strip())
        except StudioError:
            return None

    job.change(on_job, inputs=job, outputs=details, api_visibility="private")

    def need(job_id: str | None) -> str:
        if not job_id or not str(job_id).strip():
            raise InputError("pick a job first")
        return str(job_id).strip()

    @ui_errors
    def cancel_job(job_id: str, state_filter: str, page_: int | None = 0) -> tuple:
        """Cancel a job: a queued job never runs, a running one stops at its next step."""
        st = client.cancel(need(job_id))
        return (f"Cancel requested for job `{st.get('id', job_id)}` (now {str(st.get('state', '?')).lower()}).",
                table_view(state_filter, page_))

    @ui_errors
    def retry_job(job_id: str, state_filter: str, page_: int | None = 0) -> tuple:
        """Submit the same spec again; returns the new job's id."""
        new = client.retry(need(job_id))
        return f"Retrying as job `{new}`.", table_view(state_filter, page_)

    @ui_errors
    def replay_job(job_id: str, state_filter: str, page_: int | None = 0) -> tuple:
        """Re-run a job (by id, one you see) from its record; returns the new job's id."""
        new = client.replay_job(job_id_field(job_id))
        return f"Replaying as job `{new}`.", table_view(state_filter, page_)

    acted = [action, table]  # the API's /cancel, /retry, /replay: (job_id, state_filter) -> (message, table)
    cancel.click(cancel_job, inputs=[job, state, page], outputs=acted, api_name="cancel")
    retry.click(retry_job, inputs=[job, state, page], outputs=acted, api_name="retry")
    replay.click(replay_job, inputs=[job, state, page], outputs=acted, api_name="replay")

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
    def replay_png(job_id: str | None, state_filter: str, page_: int | None = 0) -> tuple:
        """Replay the picked image's job, by its id (the page never replays from a file path)."""
        if not job_id:
            raise InputError("click an image in the history first")
        new = client.replay_job(job_id_field(job_id))
        return f"Replaying the image's job as `{new}`.", table_view(state_filter, page_)

    replay_image.click(replay_png, inputs=[selected_job, state, page], outputs=acted, api_visibility="private")
