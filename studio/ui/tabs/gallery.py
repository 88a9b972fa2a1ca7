"""Gallery: every image of the signed-in user's finished jobs, newest first, 48 a page; search by backend, model, op,
prompt and date; stars (favourites, kept per user in the records); zip downloads of a job or of a selection; the
picked image's record beside it.

Everything goes through the scoped client (a user sees only their own jobs, admins all), and filtering and paging
run in the job store (`JobStore.gallery`): a page never loads more than its own images. Images are shown from the
artifact shelf's copies (`shown_artifact`), the only files the page serves.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr

from studio.errors import InputError
from studio.ui.context import UIContext
from studio.ui.inputs import job_id_field, read_png_record, text_field, trusted_path
from studio.ui.jobs import QueueClient, ScopedClient, scoped, shown_artifact, ui_errors
from studio.ui.sendto import send_to_row
from studio.ui.views import esc, plural

PAGE_SIZE = 48
ANY = "any"
MAX_ZIP_FILES = 200  # images in one zip download
MAX_ZIP_BYTES = 256 * 1024 * 1024  # their stored bytes, checked from the records before anything is read
ZIP_KEEP_S = 900.0  # zips written for downloads are removed after this long (Gradio serves its own copy)
DAY_S = 86400.0


def parse_day(value: object, name: str, end: bool = False) -> float | None:
    """A date filter as Unix seconds: None for empty; "YYYY-MM-DD" (a time after it is ignored) is that day's
    local midnight, or with `end` the next midnight (the day is included); a number is taken as Unix seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) + (DAY_S if end else 0.0)
    text = text_field(value, name, 40).strip()
    if not text:
        return None
    try:
        day = datetime.strptime(text[:10], "%Y-%m-%d")
    except ValueError:
        raise InputError(f"{name}: expected a date like 2026-01-31, got {text[:40]!r}") from None
    start = time.mktime(day.timetuple())
    return start + DAY_S if end else start


def gallery_filters(backend: str | None, model: str | None, op: str | None, prompt: str | None, since: object,
                    until: object, favourites_only: bool | None) -> dict:
    """The store's gallery filters from the tab's controls ("any" and empty mean no filter)."""
    def pick(value: str | None, name: str) -> str | None:
        text = text_field(value, name, 200, default="").strip()
        return None if not text or text == ANY else text

    first, last = parse_day(since, "from"), parse_day(until, "to", end=True)
    if first is not None and last is not None and last <= first:
        raise InputError("the 'to' date is before the 'from' date")
    return {"backend": pick(backend, "backend"), "model": pick(model, "model"), "op": pick(op, "op"),
            "prompt": pick(prompt, "prompt"), "since": first, "until": last,
            "favourites_only": bool(favourites_only)}


def page_label(total: int, page: int, pages: int) -> str:
    return f"Page {page + 1} of {pages} · {plural(total, 'image')}"


def caption(item: dict) -> str:
    star = "★ " if item.get("favourite") else ""
    return f"{star}{item.get('op')} · {item['name']}"


def job_refs(client: QueueClient, job_id: str) -> list[tuple[str, str]]:
    """(job id, name) of every image of a finished job this client's user sees."""
    result = client.result(job_id_field(job_id))
    return [(result["id"], a["name"]) for a in result.get("artifacts", []) if a.get("kind") == "image"]


def write_zip(client: QueueClient, refs: list[tuple[str, str]] | list[list[str]], target: str | Path,
              max_files: int = MAX_ZIP_FILES, max_bytes: int = MAX_ZIP_BYTES) -> Path:
    """Write the images `refs` ((job id, name) pairs, read through `client`, so only its user's) into the zip file
    `target` as `<job id>/<name>`, byte for byte (each PNG keeps its record). The count and the stored sizes are
    checked against the bounds before any image is read; InputError (one line) when they are passed."""
    wanted = list(dict.fromkeys((str(j), str(n)) for j, n in refs))
    if not wanted:
        raise InputError("nothing to zip: pick some images first")
    if len(wanted) > max_files:
        raise InputError(f"{len(wanted)} images is more than one zip may hold ({max_files})")
    sizes: dict[tuple[str, str], int] = {}
    for job_id in dict.fromkeys(j for j, _ in wanted):
        result = client.result(job_id_field(job_id))
        for a in result.get("artifacts", []):
            sizes[(job_id, a["name"])] = int(a.get("size") or 0) if a.get("kind") == "image" else -1
    missing = [f"{j}/{n}" for j, n in wanted if sizes.get((j, n), -1) < 0]
    if missing:
        raise InputError(f"no image {missing[0][:120]} in your finished jobs")
    total = sum(sizes[r] for r in wanted)
    if total > max_bytes:
        raise InputError(f"those images hold {total / 1e6:.1f} MB; one zip may hold {max_bytes / 1e6:.0f} MB")
    target = Path(target)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as out:  # PNGs are compressed already
        for job_id, name in wanted:
            out.writestr(f"{job_id}/{name}", client.artifact_bytes(job_id, name))
    return target


def zip_folder(ctx: UIContext) -> Path:
    """A new private folder for one zip download: on the artifact shelf (a served root, under a random name; zips
    older than ZIP_KEEP_S are removed), or a temporary folder without a shelf."""
    shelf = getattr(ctx.runner, "shelf", None)
    if shelf is None:
        return Path(tempfile.mkdtemp(prefix="studio-gallery-zip-"))
    now = time.time()
    for old in shelf.root.glob("zip-*"):
        try:
            if old.is_dir() and not old.is_symlink() and now - old.stat().st_mtime > ZIP_KEEP_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    folder = shelf.root / f"zip-{secrets.token_hex(12)}"
    folder.mkdir(parents=True)
    return folder


def selection_text(selection: list) -> str:
    if not selection:
        return "No images selected: pick one and press **+ Select**."
    names = ", ".join(f"`{n}` ({j})" for j, n in selection[:6]) + (" …" if len(selection) > 6 else "")
    return f"**{plural(len(selection), 'image')} selected:** {names}"


def build(ctx: UIContext) -> None:
    client = ScopedClient(ctx.client)  # every call sees only the signed-in user's jobs (admins: all)
    with gr.Row(equal_height=False):
        backend = gr.Dropdown([ANY], value=ANY, label="Backend", elem_id="gallery-backend", min_width=120)
        model = gr.Dropdown([ANY], value=ANY, label="Model", elem_id="gallery-model", min_width=120)
        op = gr.Dropdown([ANY], value=ANY, label="Op", elem_id="gallery-op", min_width=120)
        prompt = gr.Textbox(label="Prompt contains", elem_id="gallery-prompt", max_lines=1, scale=2,
                            placeholder="any case; Enter searches")
    with gr.Row(equal_height=True):
        since = gr.DateTime(label="From (day)", include_time=False, type="string", elem_id="gallery-from")
        until = gr.DateTime(label="To (day, included)", include_time=False, type="string", elem_id="gallery-to")
        favourites = gr.Checkbox(label="★ Favourites only", elem_id="gallery-favourites", min_width=120)
        search = gr.Button("Search", variant="primary", elem_id="gallery-run", scale=0, min_width=120)
    status = gr.Markdown("", elem_classes=["ls-status"], elem_id="gallery-status")
    with gr.Row(equal_height=True):
        prev = gr.Button("◀ Newer", size="sm", scale=0, min_width=110, elem_id="gallery-prev")
        where = gr.Markdown(page_label(0, 0, 1), elem_id="gallery-page")
        following = gr.Button("Older ▶", size="sm", scale=0, min_width=110, elem_id="gallery-next")
    picked_path = gr.State(None)  # the picked image's served copy (what the "Send to" row sends)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            grid = gr.Gallery(label="Your images (click one to see its record)", columns=6, height="auto",
                              object_fit="contain", elem_classes=["ls-gallery", "ls-pixel"], format="png",
                              elem_id="gallery-grid", allow_preview=False, interactive=False)
            send_to_row(ctx, grid, picked_path)  # "Send to" Img2Img / Edit / ... (the picked image)
        with gr.Column(scale=2):
            picked_line = gr.Markdown("Click an image to see its record.", elem_id="gallery-picked")
            with gr.Row():
                star = gr.Button("☆ Star", size="sm", elem_id="gallery-star")
                choose = gr.Button("+ Select", size="sm", elem_id="gallery-select")
                clear = gr.Button("Clear selection", size="sm", elem_id="gallery-clear")
            chosen_line = gr.Markdown(selection_text([]), elem_id="gallery-selection")
            with gr.Row():
                zip_job = gr.Button("Zip this image's job", size="sm", elem_id="gallery-zip-job")
                zip_chosen = gr.Button("Zip the selection", size="sm", elem_id="gallery-zip-selection")
            download = gr.File(label="Download (.zip: PNGs with their records)", interactive=False, height=100,
                               elem_id="gallery-zip", visible=False)  # shown with a zip
            record = gr.JSON(label="Record (embedded in the PNG)", elem_id="gallery-record")
    page = gr.State(0)
    items = gr.State([])  # the shown page's images: {job_id, name, favourite, path, ...}, in grid order
    picked = gr.State(None)  # the clicked image's item
    selection = gr.State([])  # [[job id, name], ...] for "Zip the selection"
    filters = [backend, model, op, prompt, since, until, favourites]

    def listing(backend_: str | None, model_: str | None, op_: str | None, prompt_: str | None, since_: object,
                until_: object, favourites_: bool | None, page_: int | None) -> tuple:
        """The grid, its items, the page, the page label, a status line and the filter choices."""
        chosen = gallery_filters(backend_, model_, op_, prompt_, since_, until_, favourites_)
        me = scoped(ctx.client)  # the event's user, looked up once for the whole page
        page_ = max(int(page_ or 0), 0)
        found = me.gallery(offset=page_ * PAGE_SIZE, limit=PAGE_SIZE, **chosen)
        pages = max(1, -(-found["total"] // PAGE_SIZE))
        if page_ >= pages and page_ > 0:  # past the end (the history shrank, or a filter narrowed it)
            page_ = pages - 1
            found = me.gallery(offset=page_ * PAGE_SIZE, limit=PAGE_SIZE, **chosen)
        shown = []
        for item in found["items"]:
            path = shown_artifact(me, ctx.runner.shelf, item["job_id"], item)
            if path is not None:
                shown.append({**item, "path": path})
        facets = me.gallery_facets()
        choices = [gr.update(choices=[ANY, *facets[key], *([value] if value and value not in facets[key] and
                                                            value != ANY else [])])
                   for key, value in (("backend", backend_), ("model", model_), ("op", op_))]
        line = "No images match." if not found["total"] else ""
        return ([(i["path"], caption(i)) for i in shown], shown, page_, page_label(found["total"], page_, pages),
                line, *choices)

    listed = [grid, items, page, where, status, backend, model, op]

    @ui_errors
    def first_page(*values: Any) -> tuple:
        return listing(*values, 0)

    def turn(step: int) -> Any:
        @ui_errors
        def to_page(*values: Any) -> tuple:
            *chosen, page_ = values
            return listing(*chosen, max(int(page_ or 0) + step, 0))

        return to_page

    search.click(first_page, inputs=filters, outputs=listed, api_visibility="private")
    prompt.submit(first_page, inputs=filters, outputs=listed, api_visibility="private")
    for control in (backend, model, op, favourites):
        control.input(first_page, inputs=filters, outputs=listed, api_visibility="private")
    for day in (since, until):  # nothing else sets them: a change is the user's
        day.change(first_page, inputs=filters, outputs=listed, api_visibility="private")
    prev.click(turn(-1), inputs=[*filters, page], outputs=listed, api_visibility="private")
    following.click(turn(1), inputs=[*filters, page], outputs=listed, api_visibility="private")
    tab = gr.context.Context.block  # the Gallery tab being built: opening it shows the first page
    if isinstance(tab, gr.Tab):
        tab.select(first_page, inputs=filters, outputs=listed, api_visibility="private")

    def star_label(item: dict | None) -> str:
        return "★ Unstar" if item and item.get("favourite") else "☆ Star"

    @ui_errors
    def pick(shown: list, evt: gr.SelectData) -> tuple:
        index = evt.index if isinstance(evt.index, int) else -1
        if not 0 <= index < len(shown or []):
            return None, None, None, "Click an image to see its record.", star_label(None)
        item = shown[index]
        path = trusted_path(item["path"], ctx.settings)
        try:
            found = read_png_record(path, ctx.settings)
        except InputError as exc:  # a plot or a GIF: still zipped and starred, just without a record
            found = {"note": str(exc)}
        line = (f"**{esc(item['name'])}** of job `{item['job_id']}` · {esc(item.get('op'))} · "
                f"{esc(item.get('backend'))}/{esc(item.get('model') or '-')}")
        return found, item, path, line, star_label(item)

    grid.select(pick, inputs=items, outputs=[record, picked, picked_path, picked_line, star],
                api_visibility="private")

    def need(item: dict | None) -> dict:
        if not item:
            raise InputError("click an image in the gallery first")
        return item

    @ui_errors
    def toggle_star(item: dict | None, *values: Any) -> tuple:
        """Star or unstar the picked image, then show the page again (favourites-only may drop it)."""
        item = need(item)
        on = client.favourite(item["job_id"], item["name"], not item.get("favourite"))
        item = {**item, "favourite": on}
        *chosen, page_ = values
        listing_ = listing(*chosen, page_)
        said = f"{'Starred' if on else 'Unstarred'} `{item['name']}` of job `{item['job_id']}`."
        return (*listing_[:4], said, *listing_[5:], item, star_label(item))

    star.click(toggle_star, inputs=[picked, *filters, page], outputs=[*listed, picked, star],
               api_visibility="private")

    @ui_errors
    def add_to_selection(item: dict | None, chosen: list | None) -> tuple:
        item = need(item)
        chosen = [list(r) for r in chosen or []]
        ref = [item["job_id"], item["name"]]
        if ref not in chosen:
            if len(chosen) >= MAX_ZIP_FILES:
                raise InputError(f"a selection holds at most {MAX_ZIP_FILES} images")
            chosen.append(ref)
        return chosen, selection_text(chosen)

    choose.click(add_to_selection, inputs=[picked, selection], outputs=[selection, chosen_line],
                 api_visibility="private", queue=False)
    clear.click(lambda: ([], selection_text([]), gr.update(value=None, visible=False)),
                outputs=[selection, chosen_line, download], api_visibility="private", queue=False)

    @ui_errors
    def zip_of_job(item: dict | None) -> tuple:
        item = need(item)
        refs = job_refs(client, item["job_id"])
        path = write_zip(scoped(ctx.client), refs, zip_folder(ctx) / f"job-{item['job_id']}.zip")
        said = f"Zipped {plural(len(refs), 'image')} of job `{item['job_id']}`."
        return gr.update(value=str(path), visible=True), said

    @ui_errors
    def zip_of_selection(chosen: list | None) -> tuple:
        refs = [tuple(r) for r in chosen or []]
        path = write_zip(scoped(ctx.client), refs, zip_folder(ctx) / f"gallery-{len(refs)}-images.zip")
        return gr.update(value=str(path), visible=True), f"Zipped the {plural(len(refs), 'selected image')}."

    zip_job.click(zip_of_job, inputs=picked, outputs=[download, status], api_visibility="private")
    zip_chosen.click(zip_of_selection, inputs=selection, outputs=[download, status], api_visibility="private")
