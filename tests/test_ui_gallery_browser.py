"""The Gallery tab in Debian's chromium (PyPI playwright): jobs run on a real worker (the toy backend), then the
tab pages through their images, filters them by op and by prompt, stars one and shows favourites only, and zips a
selection of two images, whose PNGs must carry their records. Screenshots: test-output/ui/gallery-*.png."""

from __future__ import annotations

import io
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image
from test_gallery import finished
from test_ui_integration import SHOTS, chromium_browser

from studio.record import read_record
from studio.storage import storage_for

pytestmark = [pytest.mark.integration]

WAIT_MS = 30_000


FOX = {"op": "sample", "backend": "toy", "n": 1, "seed": 5, "options": {"prompt": "A Red Fox"}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """The UI served here on a real worker (started meanwhile), with three jobs submitted at once (they run while
    the UI and the browser start) and the record of a text job: (job ids, url)."""
    from studio.queue.testing import QueueHarness
    from studio.ui import serve
    from studio.ui.testing import free_port

    harness = QueueHarness(tmp_path_factory.mktemp("gallery-stack"), broker_url=None, plugins="toy")
    try:
        with harness.active(), ThreadPoolExecutor(1) as pool:
            worker = pool.submit(harness.start_worker)
            client = harness.client()
            ids = [client.submit({"op": "sample", "backend": "toy", "n": 25, "seed": s}) for s in (1, 100)]
            ids.append(client.submit({"op": "interpolate", "backend": "toy", "start": {"seed": 1},
                                      "end": {"seed": 2}, "steps": 4}))
            # a text job's record (the toy has no prompt): committed as a worker commits one, read like any other
            finished(client.store, storage_for(harness.settings), "f0000001", FOX, None, time.time() - 3600,
                     ["sample_000.png"])
            demo, url = serve(harness.settings, port=free_port(), client=client)
            try:
                worker.result()
                for job_id in ids:
                    assert client.wait(job_id, timeout=60)["state"] == "SUCCEEDED"
                yield ids, url
            finally:
                demo.close()
                client.close()
                if worker.done() and worker.exception() is None:  # nothing of it is needed after the test
                    harness.kill_worker(worker.result())
    finally:
        harness.close()


def _shot(page, name: str) -> None:  # noqa: ANN001 - a playwright Page
    time.sleep(0.3)
    page.screenshot(path=str(SHOTS / f"gallery-{name}.png"), full_page=True)


def _label(page, text: str) -> None:  # noqa: ANN001
    page.wait_for_selector(f"#gallery-page :text('{text}')")


def _pick(page, dropdown: str, value: str) -> None:  # noqa: ANN001
    page.locator(f"#{dropdown} input").click()
    page.get_by_role("option", name=value, exact=True).click()


def _thumbs(page) -> int:  # noqa: ANN001
    return page.locator("#gallery-grid .thumbnail-item").count()


def test_browser_gallery_pages_filters_stars_and_zips(stack) -> None:
    ids, url = stack
    with chromium_browser() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.set_default_timeout(WAIT_MS)
        page.goto(url)
        page.get_by_role("tab", name="Gallery", exact=True).click()
        _label(page, "Page 1 of 2 · 55 images")  # opening the tab shows the first page
        prompt = page.locator("#gallery-prompt textarea, #gallery-prompt input").first
        prompt.fill("no such prompt")
        prompt.press("Enter")
        page.wait_for_selector("#gallery-status :text('No images match')")
        _label(page, "Page 1 of 1 · 0 images")
        _shot(page, "empty")
        prompt.fill("")

        page.click("#gallery-run")  # 50 samples + 4 frames + 1: the grids and the strip stand aside
        _label(page, "Page 1 of 2 · 55 images")
        assert _thumbs(page) == 48
        first = page.locator("#gallery-grid .thumbnail-item").first
        assert "interpolate · frame_000.png" in first.inner_text()  # newest job first
        page.click("#gallery-next")
        _label(page, "Page 2 of 2 · 55 images")
        assert _thumbs(page) == 7
        page.click("#gallery-prev")
        _label(page, "Page 1 of 2")

        _pick(page, "gallery-op", "interpolate")
        _label(page, "Page 1 of 1 · 4 images")
        _pick(page, "gallery-op", "any")
        _label(page, "55 images")
        prompt.fill("red FOX")
        prompt.press("Enter")
        _label(page, "Page 1 of 1 · 1 image")
        prompt.fill("")
        prompt.press("Enter")
        _label(page, "55 images")

        page.locator("#gallery-grid .thumbnail-item").nth(1).click()  # frame_001 of the interpolation
        page.wait_for_selector("#gallery-record :text('interpolate')")
        page.click("#gallery-star")
        page.wait_for_selector("#gallery-status :text('Starred')")
        page.locator("#gallery-star", has_text="Unstar").wait_for()
        page.locator("#gallery-favourites input").check()
        _label(page, "Page 1 of 1 · 1 image")
        assert "★ interpolate · frame_001.png" in page.locator("#gallery-grid .thumbnail-item").inner_text()
        page.locator("#gallery-favourites input").uncheck()
        _label(page, "55 images")

        for index in (1, 5):  # frame_001 and sample_001 of the second sample job
            page.locator("#gallery-grid .thumbnail-item").nth(index).click()
            page.wait_for_selector(f"#gallery-picked :text('{'frame_001' if index == 1 else 'sample_001'}')")
            page.click("#gallery-select")
        page.wait_for_selector("#gallery-selection :text('2 images selected')")
        page.click("#gallery-zip-selection")
        link = page.locator("#gallery-zip a[href]").first
        link.wait_for()
        _shot(page, "done")
        data = page.request.get(link.get_attribute("href")).body()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            assert names == [f"{ids[2]}/frame_001.png", f"{ids[1]}/sample_001.png"]
            specs = [read_record(Image.open(io.BytesIO(zf.read(n))))["spec"] for n in names]
        assert [s["op"] for s in specs] == ["interpolate", "sample"] and specs[1]["seed"] == 100
        page.locator(".ls-send-generate:visible").first.click()  # the "Send to" row sends the picked image
        page.locator("#generate-button").wait_for(state="visible")
        page.wait_for_function("document.querySelector('#generate-seed input').value === '101'")  # its own seed
        page.close()
