"""Bugs a creator found in a real browser (issue 14), checked in Debian's chromium with the PyPI playwright package.

The stack is the UI served in this process on a real worker (studio.queue.testing.QueueHarness) with the shipped
vae and gan backends, each with its mnist and fashion models: restoring a gan/fashion PNG while vae/mnist is picked
must keep gan/fashion (the backend-change handler used to put the backend's default model back). Screenshots go to
test-output/ui/creator-*.png.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from test_ui_integration import SHOTS, chromium_browser, studio_page

from studio.ui.testing import served_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_MS = 30_000
BIG_SEED = 1589412345  # a seed the gallery used to cut to "seed 15894…"


@dataclass
class Stack:
    harness: object
    url: str
    client: object


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    from studio.queue.testing import QueueHarness

    root = tmp_path_factory.mktemp("creator-stack")
    harness = QueueHarness(root, broker_url=None, plugins="vae,gan")
    try:
        with harness.active(), served_in_process(harness) as (_demo, url, client):
            yield Stack(harness, url, client)
    finally:
        harness.close()


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as launched:
        yield launched


@pytest.fixture
def page(browser, stack: Stack):
    page = studio_page(browser, stack.url, WAIT_MS, "model", "mnist")
    try:
        yield page
    finally:
        page.close()


def _shot(page, name: str) -> None:  # noqa: ANN001 - a playwright Page
    time.sleep(0.3)
    page.screenshot(path=str(SHOTS / f"creator-{name}.png"), full_page=True)


def _value(page, selector: str) -> str:  # noqa: ANN001 - a playwright Page
    return page.locator(f"{selector} input").first.input_value()


def _record_png(path: Path, backend: str, model: str, seed: int, guidance: float | None = None) -> Path:
    """A PNG carrying the record of one sampled image of `backend`/`model` (as the studio writes them)."""
    from studio.record import make_record, save_png

    options = {"guidance": guidance} if guidance is not None else {}
    spec = {"op": "sample", "backend": backend, "model": model, "seed": seed, "n": 4, "options": options}
    save_png(Image.new("L", (28, 28), 128), path, make_record(spec, {"backend": backend, "model": model},
                                                              {"seed": seed, "index": 0}))
    return path


def test_browser_png_restore_keeps_the_backend_and_model(page, stack: Stack, tmp_path: Path) -> None:
    """Drop a gan/fashion PNG while vae/mnist is picked: the pickers show gan/fashion, and stay so."""
    assert _value(page, "#backend-picker") == "vae"
    png = _record_png(tmp_path / "gan-fashion.png", "gan", "fashion", BIG_SEED)
    page.get_by_text("Reproduce an image from its PNG record").click()
    page.locator("#generate-record-file input[type=file]").set_input_files(str(png))
    page.wait_for_function("document.querySelector('#backend-picker input').value === 'gan'")
    # the backend-change handler has run (a loaded CI machine once took over 30 s to get there)
    page.wait_for_selector("#ls-backend-line :text('gan')", timeout=90_000)
    time.sleep(1.5)  # and anything it set off
    _shot(page, "restore")
    assert (_value(page, "#backend-picker"), _value(page, "#model-picker")) == ("gan", "fashion")
    assert _value(page, "#generate-seed") == str(BIG_SEED)


def test_browser_send_to_generate_keeps_the_backend_and_model(page, stack: Stack) -> None:
    """Send a gan/fashion grid from the Queue tab's history to Generate while vae/mnist is picked."""
    job_id = stack.client.submit({"op": "sample", "backend": "gan", "model": "fashion", "seed": 7, "n": 2})
    assert stack.client.wait(job_id, timeout=60)["state"] == "SUCCEEDED"
    page.get_by_role("tab", name="Queue", exact=True).click()
    page.click("#queue-refresh")
    item = page.locator("#queue-history .thumbnail-item", has_text="sample · gan").first
    item.wait_for()
    item.click()
    page.wait_for_selector("#queue-record :text('fashion')")
    page.click("#send-to-generate")
    page.locator("#generate-button").wait_for(state="visible")
    page.wait_for_function("document.querySelector('#backend-picker input').value === 'gan'")
    page.wait_for_selector("#ls-backend-line :text('gan')")
    time.sleep(1.5)  # the backend-change handler and anything it set off have run
    _shot(page, "send-to-generate")
    assert (_value(page, "#backend-picker"), _value(page, "#model-picker")) == ("gan", "fashion")
    assert _value(page, "#generate-seed") == "7"


def _generate(page, seed: int, n: int) -> str:  # noqa: ANN001 - a playwright Page
    """Generate `n` images from `seed` on the Generate tab; returns the status line once the gallery shows them."""
    before = page.inner_text("#generate-status")
    page.locator("#generate-seed input").fill(str(seed))
    count = page.locator("#tab-generate input[type=number]").nth(1)  # "How many images"
    count.fill(str(n))
    count.press("Enter")
    page.click("#generate-button")
    page.wait_for_function("(b) => { const s = document.querySelector('#generate-status').innerText;"
                           " return s !== b && s.includes('finished'); }", arg=before)
    page.wait_for_function(f"document.querySelectorAll('#generate-gallery .thumbnail-item').length === {n}")
    return page.inner_text("#generate-status")


CAPTIONS = """() => [...document.querySelectorAll('#generate-gallery .thumbnail-item .caption-label')].map(e => {
  const b = e.getBoundingClientRect(), t = e.closest('.thumbnail-item').getBoundingClientRect();
  return {text: e.innerText.trim(), clipped: e.scrollWidth > e.clientWidth + 1,
          inside: b.left >= t.left - 1 && b.right <= t.right + 1 && b.bottom <= t.bottom + 1}; })"""


def test_browser_large_seeds_show_whole_and_one_image_is_singular(page, stack: Stack) -> None:
    """A grid of 16 from a 10-digit seed: every caption shows its whole seed; one image: "1 image"."""
    status = _generate(page, BIG_SEED, 16)
    assert "· 16 images" in status, status
    _shot(page, "seed-captions")
    captions = page.evaluate(CAPTIONS)
    assert [c["text"] for c in captions] == [f"seed {BIG_SEED + i}" for i in range(16)]
    cut = [c for c in captions if c["clipped"] or not c["inside"]]
    assert not cut, f"captions cut (as 'seed 15894…') or past their tile: {cut}"
    status = _generate(page, BIG_SEED, 1)
    assert "· 1 image" in status and "1 images" not in status, status


PROGRESS_BOXES = """() => {
  const visible = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0
    && getComputedStyle(e).visibility !== 'hidden' && getComputedStyle(e).display !== 'none'; };
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const texts = [...document.querySelectorAll('.progress-text, .meta-text, .meta-text-center, .progress-level')]
    .filter(e => visible(e) && e.innerText.trim());
  if (!texts.length) return null;
  return {texts: texts.map(e => ({text: e.innerText.trim(), box: box(e)})),
          vector: box(document.querySelector('#edit-vector'))};
}"""


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_browser_edit_fit_progress_estimate_and_backend_change(page, stack: Stack) -> None:
    """Build a vector from the dataset: 300 images by default with an estimate, its progress text clear of the
    vector picker; apply it; then another backend clears the previous backend's result."""
    page.get_by_role("tab", name="Edit", exact=True).click()
    if not page.locator("#fit-dataset-button").is_visible():  # the accordion opens by itself only without vectors
        page.click("#fit-dataset button.label-wrap")
    assert page.locator("#fit-dataset-limit input[type=number]").input_value() == "300"
    assert "Encodes 300 dataset images" in page.inner_text("#fit-dataset-estimate")
    page.locator("#fit-dataset-button").click()
    progress = page.wait_for_function(PROGRESS_BOXES, polling="raf").json_value()
    _shot(page, "fit-progress")
    over = [t for t in progress["texts"] if _overlap(t["box"], progress["vector"])]
    assert not over, f"progress text over the vector picker: {over}"
    page.wait_for_function("document.querySelector('#edit-vector input').value === 'thickness'")
    page.wait_for_selector("#fit-dataset-status :text('saved')")

    page.click("#edit-button")
    page.wait_for_selector("#edit-status :text('strength +2.00')")
    page.locator("#edit-result img").wait_for()
    page.click("#backend-picker input")
    page.get_by_role("option", name="gan", exact=True).click()
    page.wait_for_function("document.querySelector('#model-picker input').value === 'mnist'"
                           " && document.querySelector('#ls-backend-line').innerText.includes('gan')")
    page.wait_for_function("!document.querySelector('#edit-result img')")  # the vae's result is gone
    _shot(page, "edit-backend-change")
    assert page.inner_text("#edit-status").strip() == "Choose a vector and a strength."
    assert page.locator("#edit-strip img").count() == 0
    assert "inversion" in page.inner_text("#fit-dataset-estimate")  # gan's estimate names its slow encoder
