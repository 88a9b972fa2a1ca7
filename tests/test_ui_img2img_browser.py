"""The Img2Img tab in Debian's chromium (playwright): a backend without img2img disables it with one line; on sd
(the shipped `mnist-fashion`, on a real worker) an uploaded image with a mask stroke painted by the mouse is redrawn,
with a live preview while the job runs, then the results. Screenshots: test-output/ui/img2img-*.png."""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from test_ui_integration import SHOTS, chromium_browser

from studio.ui.testing import served_in_process

pytestmark = [pytest.mark.integration]

WAIT_MS = 120_000  # a loaded 2-core machine runs the first sd job (model load included) slowly


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    from studio.queue.testing import QueueHarness

    root = tmp_path_factory.mktemp("img2img-stack")
    # preload: the worker loads mnist-fashion in the background while the page is driven
    harness = QueueHarness(root, broker_url=None, plugins="vae,sd", ood_check="off", preload="sd")
    try:
        with harness.active(), served_in_process(harness) as ui:
            yield ui
    finally:
        harness.close()


def _shot(page, name: str) -> None:  # noqa: ANN001 - a playwright Page
    time.sleep(0.3)
    page.screenshot(path=str(SHOTS / f"img2img-{name}.png"), full_page=True)


def _picture(path: Path) -> Path:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((12, 8, 52, 56), fill=(230, 230, 230))
    image.save(path)
    return path


def test_browser_img2img_paints_a_mask_and_shows_a_live_preview_then_results(stack, tmp_path: Path) -> None:
    with chromium_browser() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        page.goto(stack.url)
        page.get_by_role("tab", name="Img2Img", exact=True).click()
        page.locator("#img2img-run").wait_for(state="visible")
        page.wait_for_function("document.querySelector('#backend-picker input').value === 'vae'")
        assert "cannot redraw" in page.inner_text("#img2img-note")  # vae has no img2img: one line, and no run
        assert page.locator("#img2img-run").is_disabled()
        time.sleep(0.3)  # the tab alone: the header may still show the page-load event's progress
        page.locator("#tab-img2img").screenshot(path=str(SHOTS / "img2img-empty.png"))

        page.click("#backend-picker input")
        page.get_by_role("option", name="sd", exact=True).click()
        page.wait_for_function("!document.querySelector('#img2img-run').disabled")
        assert "redraws images" in page.inner_text("#img2img-note")
        page.locator("#img2img-image input[type=file]").set_input_files(str(_picture(tmp_path / "shirt.png")))
        canvas = page.locator("#img2img-mask canvas").first
        page.wait_for_function("document.querySelector('#img2img-mask canvas') &&"
                               " document.querySelector('#img2img-mask canvas').getBoundingClientRect().width > 50")
        time.sleep(1.0)  # the painter has its background (setting it clears any stroke drawn before)
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.8, steps=12)
        page.mouse.up()
        steps = page.get_by_label("Denoising steps")
        steps.fill("100")  # at strength 0.6: 60 steps; the preview comes after the first
        steps.press("Enter")

        page.click("#img2img-run")
        # the live preview arrives while the job runs: before any result
        page.wait_for_function("document.querySelector('#img2img-preview img') &&"
                               " !document.querySelector('#img2img-gallery .thumbnail-item')")
        page.screenshot(path=str(SHOTS / "img2img-running.png"))  # at once: the job may end any moment
        page.wait_for_function("document.querySelector('#img2img-status').innerText.includes('finished')")
        page.wait_for_function("document.querySelectorAll('#img2img-gallery .thumbnail-item').length === 4")
        _shot(page, "done")
        status = page.inner_text("#img2img-status")
        assert "of the image redrawn" in status and "4 images" in status, status
        job_id = re.search(r"job (\S+) \(img2img\)", status.replace("`", "")).group(1)
        job = stack.client.status(job_id)
        assert job["spec"]["mask"] is not None and job["preview_png_b64"]  # the queue kept the job's preview
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(job["spec"]["mask"]["png_b64"]))).convert("L"))
        share = float((mask > 0).mean())
        assert 0.0 < share < 0.5, share  # one stroke, not the whole image
        page.close()


def test_painted_strokes_become_the_mask(stack) -> None:
    from studio.ui.tabs.img2img import mask_ref

    settings = stack.client.settings
    layer = np.zeros((40, 60, 4), dtype=np.uint8)
    assert mask_ref({"background": None, "layers": [layer], "composite": None}, settings) is None  # nothing painted
    assert mask_ref(None, settings) is None
    layer[5:10, 20:30] = (255, 77, 109, 255)
    ref = mask_ref({"background": None, "layers": [layer], "composite": None}, settings)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(ref["png_b64"]))))
    assert mask.shape == (40, 60) and mask[5:10, 20:30].min() == 255 and int(mask.sum()) == 255 * 50


def test_the_img2img_endpoint_redraws_the_whole_image_without_a_mask(stack, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    api = Client(stack.url, verbose=False)
    gallery, status, _preview = api.predict(backend="sd", image=handle_file(str(_picture(tmp_path / "shirt.png"))),
                                            mask=None, strength=0.5, n=2, seed=3, api_name="/img2img")
    assert [item["caption"] for item in gallery] == ["seed 3", "seed 4"]
    assert "finished" in status and "redrawn" not in status  # no mask: no share of the image named
