"""The Edit tab's chained edit and the Latent tools tab (issue 14 item 6), in Debian's chromium (PyPI playwright).

One page session on the UI served in this process with a real worker (studio.queue.testing.QueueHarness) and the
shipped vae backend, which holds two stored vectors: Edit with two vectors shows two strength sliders and applies
both in one job; Latent tools runs a traversal grid, an analogy and a three-keyframe walk to a GIF and an MP4.
Screenshots go to test-output/ui/ (edit-empty, edit-done, toolbox-<sub>-empty and toolbox-<sub>).
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image
from test_ui_integration import SHOTS, chromium_browser, studio_page

from studio.ui.testing import served_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_MS = 30_000
VECTORS = {"tb-ones": ([1, 7, 11], [0, 2, 3]), "tb-round": ([0, 6, 8], [1, 4, 7])}  # with / without seeds


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """The UI on a worker with vae, and two vectors of vae/mnist fitted from picked seeds (in this process)."""
    from studio.executor import Runtime, execute
    from studio.queue.testing import QueueHarness

    harness = QueueHarness(tmp_path_factory.mktemp("toolbox-stack"), broker_url=None, plugins="vae")
    try:
        runtime = Runtime(harness.settings)
        for name, (pos, neg) in VECTORS.items():
            execute({"op": "fit_vector", "backend": "vae", "model": "mnist", "name": name, "with_seeds": pos,
                     "without_seeds": neg}, runtime)
        with harness.active(), served_in_process(harness) as (_demo, url, client):
            yield url, client
    finally:
        harness.close()


@pytest.fixture(scope="module")
def page(stack):
    url, _ = stack
    with chromium_browser() as browser:
        page = studio_page(browser, url, WAIT_MS, "model", "mnist")
        try:
            yield page
        finally:
            page.close()


def _shot(page, name: str) -> None:  # noqa: ANN001 - a playwright Page
    time.sleep(0.3)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _pixels(page, selector: str) -> np.ndarray:  # noqa: ANN001
    """An <img> the page shows, read back through the browser (its bytes as served)."""
    src = page.locator(selector).first.get_attribute("src")
    data = page.evaluate("async (u) => Array.from(new Uint8Array(await (await fetch(u)).arrayBuffer()))", src)
    return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("L"), dtype=np.float32)


def _run(page, sub: str, words: str, keys: bool = False) -> str:  # noqa: ANN001
    """Press a Latent tools run button (or Ctrl+Enter, which clicks the visible one); returns its status once the
    job finished (it says `words`)."""
    if keys:
        page.keyboard.press("Control+Enter")
    else:
        page.click(f"#toolbox-run-{sub}")
    page.wait_for_selector(f"#toolbox-status-{sub} :text('finished')")
    status = page.inner_text(f"#toolbox-status-{sub}")
    assert words in status, status
    return status


def test_browser_chained_edit_and_latent_tools(page, stack) -> None:
    # Edit: the main vector and one more, each with its own slider, applied in one job
    page.get_by_role("tab", name="Edit", exact=True).click()
    page.wait_for_function("document.querySelector('#edit-vector input').value === 'tb-ones'")
    assert not page.locator("#edit-strength-2").is_visible()
    _shot(page, "edit-empty")
    page.click("#edit-more-vectors input")
    page.get_by_role("option", name="tb-round", exact=True).click()
    page.locator("#edit-strength-2").wait_for(state="visible")
    assert "tb-round" in page.inner_text("#edit-strength-2")  # labelled with its vector
    assert not page.locator("#edit-strength-3").is_visible()  # one slider per chosen vector
    number = page.locator("#edit-strength-2 input[type=number]")
    number.fill("-1.5")
    number.press("Enter")
    page.locator("#tab-edit h1, #edit-status").first.click()  # away from the dropdown
    page.click("#edit-button")
    page.wait_for_selector("#edit-status :text('vectors tb-ones +2.00, tb-round -1.50')")
    page.locator("#edit-strip img").wait_for()
    strip = _pixels(page, "#edit-strip img")
    assert strip.shape[1] > 4 * strip.shape[0]  # the strip: five frames from the original to the combined edit
    _shot(page, "edit-done")
    job = stack[1].jobs(limit=1)[0]
    assert job["op"] == "edit" and job["spec"]["vectors"] == {"tb-ones": 2.0, "tb-round": -1.5}

    # Latent tools: traverse
    page.get_by_role("tab", name="Latent tools", exact=True).click()
    page.get_by_role("tab", name="Traverse", exact=True).click()
    page.locator("#toolbox-run-traverse").wait_for(state="visible")
    _shot(page, "toolbox-traverse-empty")
    page.locator("#toolbox-traverse-dims input, #toolbox-traverse-dims textarea").first.fill("0-3")
    _run(page, "traverse", "4 dimension(s)")
    grid = _pixels(page, "#toolbox-traverse-grid img")
    assert grid.shape[1] > grid.shape[0]  # 4 rows of 7 columns
    _shot(page, "toolbox-traverse")

    # analogy: A - B + C from three seeds
    page.get_by_role("tab", name="Analogy", exact=True).click()
    page.locator("#toolbox-run-analogy").wait_for(state="visible")
    _shot(page, "toolbox-analogy-empty")
    _run(page, "analogy", "A - B + C", keys=True)  # the sub-tab's own run button, not Traverse's
    page.wait_for_function("document.querySelectorAll('#toolbox-analogy-gallery .thumbnail-item').length === 4")
    _shot(page, "toolbox-analogy")

    # walk: three keyframes, 3 frames per segment -> 7 frames, a GIF and (asked for) an MP4
    page.get_by_role("tab", name="Walk", exact=True).click()
    page.locator("#toolbox-run-walk").wait_for(state="visible")
    _shot(page, "toolbox-walk-empty")
    page.locator("#toolbox-walk-keyframes input, #toolbox-walk-keyframes textarea").first.fill("1, 5, 9")
    frames = page.locator("#toolbox-walk-frames input[type=number]")
    frames.fill("3")
    frames.press("Enter")
    page.locator("#toolbox-walk-video").get_by_text("mp4", exact=True).click()
    _run(page, "walk", "3 keyframes, 7 frames")
    page.wait_for_function("document.querySelectorAll('#toolbox-walk-gallery .thumbnail-item').length === 7")
    src = page.locator("#toolbox-walk-gif img").first.get_attribute("src")
    data = page.evaluate("async (u) => Array.from(new Uint8Array(await (await fetch(u)).arrayBuffer()))", src)
    with Image.open(io.BytesIO(bytes(data))) as gif:
        assert gif.format == "GIF" and gif.n_frames == 2 * 7 - 2  # there and back (studio.images.gif_bytes)
    video = page.locator("#toolbox-walk-mp4 video").first
    video.wait_for()
    head = page.evaluate("async (u) => Array.from(new Uint8Array(await (await fetch(u)).arrayBuffer()).slice(4, 8))",
                         video.get_attribute("src"))
    assert bytes(head) == b"ftyp"  # an MP4
    _shot(page, "toolbox-walk")
