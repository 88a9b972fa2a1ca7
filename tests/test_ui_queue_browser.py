"""Issue 14 in a real browser: a model added while the studio runs shows in the picker after a reload, and the
Queue tab picks a job by a click on its row, pages through many jobs with its actions above the table, and says
"no job" for an unknown id once.

Drives Debian's chromium with the PyPI playwright package (launched as tests/test_ui_integration.py does) against
the UI served in this process on a real worker (studio.queue.testing.QueueHarness: the vae plugin's listing and
the toy backend's jobs). Screenshots go to test-output/ui/queue-*.png and models-reload.png.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from test_ui_integration import SHOTS, chromium_browser

from studio.ui.testing import served_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_MS = 20_000
JOBS = 45  # three pages of 20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """(harness, url, client): the UI on the embedded Redis with one worker, its first model root empty."""
    from studio.queue.testing import QueueHarness

    root = tmp_path_factory.mktemp("ui-queue")
    (root / "models").mkdir()
    harness = QueueHarness(root, broker_url=None, plugins="vae,toy", model_roots=str(root / "models"))
    try:
        with harness.active(), served_in_process(harness) as (_demo, url, client):
            yield harness, url, client
    finally:
        harness.close()


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as launched:
        yield launched


@pytest.fixture
def page(browser, served):
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.set_default_timeout(WAIT_MS)
    page.goto(served[1])
    page.locator("#generate-button").wait_for(state="visible")
    yield page
    page.close()


def _model_options(page) -> list[str]:  # noqa: ANN001 - a playwright Page
    """The names the model picker offers (opened, read, closed)."""
    page.locator("#ls-title").click()  # the picker closed and unfocused: the next click opens it
    page.locator("#model-picker input").click()
    options = page.get_by_role("option")
    options.first.wait_for(state="visible")
    names = [t.strip() for t in options.all_inner_texts()]
    page.locator("#ls-title").click()
    options.first.wait_for(state="hidden")
    return names


def test_a_model_added_while_the_studio_runs_is_listed_after_a_reload(page, served) -> None:
    from studio_vae.backend import SHIPPED

    harness = served[0]
    assert "fresh-vae" not in _model_options(page)
    folder = Path(harness.settings.model_root_paths[0]) / "vae"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(SHIPPED, folder / "fresh-vae.safetensors")  # as `studio train vae --name fresh-vae` leaves it
    page.reload()
    page.locator("#generate-button").wait_for(state="visible")
    deadline = time.monotonic() + 15
    while "fresh-vae" not in (names := _model_options(page)):  # the load event fills the picker
        assert time.monotonic() < deadline, f"the new model is not listed after a reload: {names}"
        time.sleep(0.5)
    page.screenshot(path=str(SHOTS / "models-reload.png"), full_page=True)


def _rows(page) -> list[str]:  # noqa: ANN001 - a playwright Page
    return page.locator("#queue-table tr[data-job]").evaluate_all("rows => rows.map(r => r.dataset.job)")


def test_queue_rows_pick_their_job_and_the_table_pages_below_its_actions(page, served) -> None:
    from playwright.sync_api import expect

    _harness, _url, client = served
    assert not client.jobs(limit=1), "this test counts the jobs: it runs first on the module's studio"
    ids = [client.submit({"op": "sample", "backend": "toy", "n": 1, "seed": i}) for i in range(JOBS)]
    page.get_by_role("tab", name="Queue", exact=True).click()
    page.locator("#queue-refresh").click()
    expect(page.locator("#queue-page")).to_contain_text(f"Page 1 of 3 · {JOBS} jobs", timeout=WAIT_MS)
    first = _rows(page)
    assert len(first) == 20 and first[0] == ids[-1]  # newest first, 20 a page
    cancel, table = page.locator("#queue-cancel").bounding_box(), page.locator("#queue-table").bounding_box()
    assert cancel["y"] + cancel["height"] <= table["y"]  # the actions are above the table, always in view
    assert cancel["y"] + cancel["height"] <= 900

    page.locator("#queue-next").click()
    expect(page.locator("#queue-page")).to_contain_text("Page 2 of 3", timeout=WAIT_MS)
    page.wait_for_function(f"document.querySelector('#queue-table tr[data-job]').dataset.job === '{ids[-21]}'")
    time.sleep(1.5)  # a refresh later it is still page 2
    second = _rows(page)
    assert second == ids[-21:-41:-1]  # the next 20, newest first
    picked = second[4]
    page.get_by_role("button", name="Job details").click()
    page.locator(f'#queue-table tr[data-job="{picked}"] td').nth(1).click()
    page.wait_for_function(f"document.querySelector('#queue-job input').value.startsWith('{picked} · ')")
    expect(page.locator("#queue-details")).to_contain_text(picked, timeout=WAIT_MS)  # its details are shown
    time.sleep(2 * 1.5)  # two refreshes of the table later the pick stays
    assert page.locator("#queue-job input").input_value().startswith(f"{picked} · ")
    assert page.locator(f'#queue-table tr.ls-picked[data-job="{picked}"]').count() == 1
    page.screenshot(path=str(SHOTS / "queue-paged.png"), full_page=True)
    page.locator("#queue-next").click()
    expect(page.locator("#queue-page")).to_contain_text("Page 3 of 3", timeout=WAIT_MS)
    page.wait_for_function(f"document.querySelector('#queue-table tr[data-job]').dataset.job === '{ids[-41]}'")
    assert _rows(page) == ids[-41::-1]


def test_an_unknown_job_id_says_so_once(page, served) -> None:
    client = served[2]
    client.wait(client.submit({"op": "sample", "backend": "toy", "n": 1, "seed": 99}), timeout=60)
    page.get_by_role("tab", name="Queue", exact=True).click()
    box = page.locator("#queue-job input")
    page.wait_for_function("document.querySelector('#queue-job input').value !== ''")  # the tab's refresh is done:
    time.sleep(0.5)  # what is typed now is not overwritten by it
    box.fill("deadbeef00000000")
    box.press("Enter")
    time.sleep(1.5)
    page.locator("#queue-cancel").click()
    page.locator(".toast-body").first.wait_for(state="visible")
    time.sleep(1.5)  # a second error, if any, has arrived by now
    text = " ".join(page.locator(".toast-body").all_inner_texts())
    page.screenshot(path=str(SHOTS / "queue-unknown-id.png"), full_page=True)
    assert text.count("no job 'deadbeef00000000'") == 1, text


def test_the_newest_unfinished_job_of_an_op_is_the_users_own() -> None:
    from studio.ui.tabs.queue import newest_unfinished, page_of

    jobs = [{"id": "a", "op": "sample", "state": "RUNNING", "owner": "bob"},
            {"id": "b", "op": "walk", "state": "RUNNING", "owner": "alice"},
            {"id": "c", "op": "sample", "state": "SUCCEEDED", "owner": "alice"},
            {"id": "d", "op": "sample", "state": "QUEUED", "owner": "alice"}]
    assert newest_unfinished(jobs, "sample", "alice")["id"] == "d"
    assert newest_unfinished(jobs, "sample", "bob")["id"] == "a"
    assert newest_unfinished(jobs, "edit", "alice") is None
    rows, page, pages = page_of([{"id": str(i)} for i in range(45)], 7)
    assert (page, pages, [r["id"] for r in rows]) == (2, 3, [str(i) for i in range(40, 45)])


def test_the_cancel_button_for_generate_cancels_the_users_running_job(served) -> None:
    """`cancel_button(ctx, "sample", status)` (for beside Generate) cancels the newest sample job still running."""
    import gradio as gr

    from studio.ui.tabs.queue import cancel_button

    harness, _url, client = served
    ctx = type("Ctx", (), {"client": client, "settings": harness.settings})()
    with gr.Blocks() as demo:
        status = gr.Markdown()
        cancel_button(ctx, "sample", status, elem_id="generate-cancel")
    cancel = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "cancel_running")
    slow = client.submit({"op": "sample", "backend": "toy", "n": 40, "seed": 0, "options": {"delay_ms": 250}})
    deadline = time.monotonic() + 30
    while client.status(slow)["state"] != "RUNNING":
        assert time.monotonic() < deadline, "the slow job never started"
        time.sleep(0.1)
    message = cancel()
    assert slow in message and "Cancel requested" in message
    assert client.wait(slow, timeout=30)["state"] == "CANCELLED"


def test_cancel_beside_generate_stops_the_running_job(page, served) -> None:
    """Generate a slow batch (the toy backend, 250 ms an image), press Cancel beside Generate: the job ends
    CANCELLED, the status line says the cancel was requested and Generate's one-line pop-up says the job was
    cancelled."""
    _harness, _url, client = served
    page.click("#backend-picker input")
    page.get_by_role("option", name="toy", exact=True).click()
    page.wait_for_function("document.querySelector('#model-picker input').value === 'toy'")
    page.get_by_text("Backend options: toy").click()
    delay = page.locator("#ls-opt-slider-0 input[type=number]")
    delay.fill("250")
    delay.press("Enter")
    before = {j["id"] for j in client.jobs(limit=100)}
    page.click("#generate-button")
    deadline = time.monotonic() + 30
    while not (new := [j for j in client.jobs(limit=100) if j["id"] not in before]) or new[0]["state"] != "RUNNING":
        assert time.monotonic() < deadline, "the slow job never started"
        time.sleep(0.1)
    page.click("#generate-cancel")
    assert client.wait(new[0]["id"], timeout=30)["state"] == "CANCELLED"
    page.locator("#generate-status").get_by_text("Cancel requested").wait_for(state="visible")
    page.get_by_text(f"job {new[0]['id']} was cancelled").first.wait_for(state="visible")  # Generate's pop-up
    page.screenshot(path=str(SHOTS / "generate-cancelled.png"))
