"""A tour of every tab (issue 14) in Debian's chromium (PyPI playwright): each tab's empty, running and done states,
screenshotted to test-output/ui/tour-<tab id>-{empty,running,done}.png, with what each state shows asserted.

The stack: the UI served in this process on a real worker (studio.queue.testing.QueueHarness) with the toy backend
only (cheap: 8x8 images), slowed by its `delay_ms` option (per decoded image, with a progress step each) through the
"Backend options (JSON, advanced)" box, so that each job's running state lasts long enough to be seen. The toy has
a seed/codec space but no IMG2IMG and no TRAIN capability: Img2Img and Train get their empty state only (Img2Img
says in one line that the backend cannot redraw; Train lists no backend to train). Queue, Plugins and Gallery run
no job of their own: they get an empty shot (before any job) and a done shot (populated by the tour's jobs) only.
"""

from __future__ import annotations

import pytest
from test_ui_integration import SHOTS, chromium_browser, studio_page

from studio.ui.testing import served_in_process

pytestmark = [pytest.mark.integration]

WAIT_MS = 60_000  # the page under a loaded CI machine
VECTOR = "tour-vector"

# the tab's rendered text (innerText: visible text only) shows a job's progress line: "running · toy decode ..."
RUNNING = """(sel) => { const t = document.querySelector(sel); return !!t && /\\brunning\\b/.test(t.innerText); }"""
# every <img> under a selector has arrived and is drawn (the done shots show the pictures, not blank boxes)
LOADED = """(sel) => { const i = [...document.querySelectorAll(sel + ' img')];
  return i.length > 0 && i.every((e) => e.complete && e.naturalWidth > 0); }"""
FINISHED = """(sel) => { const t = document.querySelector(sel); return !!t && t.innerText.includes('finished'); }"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """The UI served on a worker with the toy backend."""
    from studio.queue.testing import QueueHarness

    harness = QueueHarness(tmp_path_factory.mktemp("tour-stack"), broker_url=None, plugins="toy")
    try:
        with harness.active(), served_in_process(harness) as (_demo, url, client):
            yield url, client
    finally:
        harness.close()


@pytest.fixture(scope="module")
def page(stack):
    url, _ = stack
    with chromium_browser() as browser:
        page = studio_page(browser, url, WAIT_MS, "backend", "toy")
        try:
            yield page
        finally:
            page.close()


def _shot(page, name: str) -> None:  # noqa: ANN001 - a playwright Page
    """test-output/ui/tour-<name>.png, taken at once (no settling sleep: a running job ends soon)."""
    page.screenshot(path=str(SHOTS / f"tour-{name}.png"), full_page=True)


def _open(page, label: str, tab_id: str) -> str:  # noqa: ANN001
    """Open the tab `label`; returns its container's selector."""
    page.get_by_role("tab", name=label, exact=True).click()
    sel = f"#tab-{tab_id}"
    page.locator(sel).wait_for(state="visible")
    return sel


def _text(page, sel: str) -> str:  # noqa: ANN001
    return page.inner_text(sel)


def _delay(page, ms: int) -> None:  # noqa: ANN001
    """Slow every following toy job down to `ms` per decoded image (the header's JSON options box)."""
    box = page.locator("#ls-options textarea")
    if not box.is_visible():
        page.get_by_text("Backend options (JSON, advanced)").click()
    box.fill(f'{{"delay_ms": {ms}}}')
    box.press("Tab")


def _empty(page, sel: str, name: str) -> None:  # noqa: ANN001
    """The tab as opened: no progress line, nothing finished, no result image."""
    text = _text(page, sel)
    assert not page.evaluate(RUNNING, sel) and "finished" not in text, text
    _shot(page, f"{name}-empty")


def _run(page, sel: str, button: str, name: str, results: str, count: int) -> str:  # noqa: ANN001
    """Press `button`, screenshot the running state (its progress line in the tab), then the done state (the
    finished line and `count` result images under `results`); returns the tab's text when done."""
    assert page.locator(f"{results} img").count() == 0  # empty: no result yet
    page.click(button)
    page.wait_for_function(RUNNING, arg=sel, polling="raf")
    _shot(page, f"{name}-running")
    page.wait_for_function(FINISHED, arg=sel)
    page.wait_for_function(f"document.querySelectorAll('{results} img').length >= {count}")
    page.wait_for_function(LOADED, arg=results)
    _shot(page, f"{name}-done")
    text = _text(page, sel)
    assert "finished" in text and not page.evaluate(RUNNING, sel), text
    return text


def test_browser_tour_of_every_tab_empty_running_done(page, stack) -> None:
    _, client = stack

    # no job yet: Gallery, Queue and Plugins as first opened (empty shots; they run no job: no running shot)
    sel = _open(page, "Gallery", "gallery")
    page.wait_for_selector("#gallery-page :text('0 images')")
    assert page.locator("#gallery-grid img").count() == 0
    _empty(page, sel, "gallery")
    sel = _open(page, "Queue", "queue")
    page.wait_for_selector("#queue-page :text('0 jobs')")
    assert page.locator("#queue-table :text('succeeded')").count() == 0
    _empty(page, sel, "queue")
    sel = _open(page, "Plugins", "plugins")
    page.wait_for_selector("#plugins-cards :text('toy')")
    page.wait_for_selector("#plugins-workers :text('serves toy')")  # the worker list has answered
    _empty(page, sel, "plugins")
    # the vector Edit applies, fitted from picked seeds on the queue meanwhile
    fit = client.submit({"op": "fit_vector", "backend": "toy", "model": "toy", "name": VECTOR,
                         "with_seeds": [1, 7, 11], "without_seeds": [0, 2, 3]})

    # Img2Img and Train (empty only): the toy can neither redraw (one line, the button disabled) nor train
    sel = _open(page, "Img2Img", "img2img")
    page.wait_for_selector("#img2img-note :text('cannot redraw')")
    assert page.locator("#img2img-run").is_disabled()
    _empty(page, sel, "img2img")
    sel = _open(page, "Train", "train")
    page.locator("#train-run").wait_for(state="visible")
    _empty(page, sel, "train")

    # Generate: 6 images at 100 ms each
    _delay(page, 100)
    sel = _open(page, "Generate", "generate")
    count = page.locator("#tab-generate input[type=number]").nth(1)  # "How many images"
    count.fill("6")
    count.press("Enter")
    _empty(page, sel, "generate")
    _run(page, sel, "#generate-button", "generate", "#generate-gallery .thumbnail-item", 6)
    assert "6 images" in _text(page, "#generate-status")

    # Interpolate: 5 steps
    sel = _open(page, "Interpolate", "interpolate")
    steps = page.locator(sel).get_by_label("number input for Steps", exact=True)
    steps.fill("5")
    steps.press("Enter")
    _empty(page, sel, "interpolate")
    _run(page, sel, "#interpolate-button", "interpolate", "#interpolate-strip", 1)

    # Edit: the fitted vector applied to a seed (a strip of 5 frames)
    assert client.wait(fit, timeout=60)["state"] == "SUCCEEDED"
    sel = _open(page, "Edit", "edit")
    page.locator("#tab-edit button", has_text="↻").click()  # the picker lists the vector fitted after page load
    page.wait_for_function(f"document.querySelector('#edit-vector input').value === {VECTOR!r}")
    _empty(page, sel, "edit")
    _run(page, sel, "#edit-button", "edit", "#edit-result", 1)
    assert "strength +2.00" in _text(page, "#edit-status")

    # Latent tools: each sub-tab
    _open(page, "Latent tools", "toolbox")
    page.get_by_role("tab", name="Traverse", exact=True).click()
    sub = "#toolbox-tab-traverse"
    page.locator("#toolbox-run-traverse").wait_for(state="visible")
    page.locator("#toolbox-traverse-dims input, #toolbox-traverse-dims textarea").first.fill("0")  # 7 images
    _empty(page, sub, "toolbox-traverse")
    _run(page, sub, "#toolbox-run-traverse", "toolbox-traverse", "#toolbox-traverse-grid", 1)
    page.get_by_role("tab", name="Analogy", exact=True).click()
    sub = "#toolbox-tab-analogy"
    page.locator("#toolbox-run-analogy").wait_for(state="visible")
    _empty(page, sub, "toolbox-analogy")
    _run(page, sub, "#toolbox-run-analogy", "toolbox-analogy", "#toolbox-analogy-gallery .thumbnail-item", 4)
    page.get_by_role("tab", name="Walk", exact=True).click()
    sub = "#toolbox-tab-walk"
    page.locator("#toolbox-run-walk").wait_for(state="visible")
    frames = page.locator("#toolbox-walk-frames input[type=number]")
    frames.fill("3")
    frames.press("Enter")
    _empty(page, sub, "toolbox-walk")
    _run(page, sub, "#toolbox-run-walk", "toolbox-walk", "#toolbox-walk-gallery .thumbnail-item", 7)

    # Compress: a dataset image through the latent codec
    sel = _open(page, "Compress", "compress")
    _empty(page, sel, "compress")
    _run(page, sel, "#compress-button", "compress", "#compress-panels", 2)

    # Sweeps: the default sweep of sample (3 seeds x 2 temperatures), 1 image a cell
    sel = _open(page, "Sweeps", "sweeps")
    cells = page.locator("#sweeps-n input[type=number]")
    cells.fill("1")
    cells.press("Enter")
    _empty(page, sel, "sweeps")
    _run(page, sel, "#sweeps-run", "sweeps", "#sweeps-cells .thumbnail-item", 6)
    assert "6 cells, 6 images" in _text(page, "#sweeps-status")

    # Explore: a PCA map of 100 dataset images' codes (the job loads the dataset: long enough to see it running)
    sel = _open(page, "Explore", "explore")
    number = page.get_by_label("number input for Images", exact=True)
    number.fill("100")
    number.press("Enter")
    _empty(page, sel, "explore")
    assert page.locator("#explore-scatter circle").count() == 0
    page.click("#project-button")
    page.wait_for_function(RUNNING, arg=sel, polling="raf")
    _shot(page, "explore-running")
    page.wait_for_function(FINISHED, arg=sel)
    page.wait_for_selector("#explore-scatter circle")
    _shot(page, "explore-done")
    assert page.locator("#explore-scatter circle").count() == 100 and not page.evaluate(RUNNING, sel)

    # the tabs without a job of their own, populated by the tour's jobs
    sel = _open(page, "Gallery", "gallery")
    page.click("#gallery-run")
    page.wait_for_function("document.querySelectorAll('#gallery-grid img').length >= 6")
    page.wait_for_function(LOADED, arg="#gallery-grid")
    _shot(page, "gallery-done")
    _open(page, "Queue", "queue")
    page.click("#queue-refresh")
    page.wait_for_selector("#queue-table :text('succeeded')")
    page.wait_for_selector("#queue-page :text('10 jobs')")  # fit_vector and the 9 tab jobs, all succeeded
    assert page.locator("#queue-table tbody tr", has_text="succeeded").count() == 10
    _shot(page, "queue-done")
    _open(page, "Plugins", "plugins")
    page.wait_for_selector("#plugins-workers :text('serves toy')")
    _shot(page, "plugins-done")
