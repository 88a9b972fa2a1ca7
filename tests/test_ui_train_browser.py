"""The Train tab in Debian's chromium (PyPI playwright): upload a zip of tiny PNGs as a dataset, train the vae on it,
watch the progress line and the samples after each epoch, then the new model is picked in the header and
Generate samples from it. Screenshots: test-output/ui/train-empty.png, train-running.png, train-done.png."""

from __future__ import annotations

import contextlib
import io
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_ui_integration import SHOTS, chromium_browser

pytestmark = [pytest.mark.integration]

WAIT_MS = 60_000
EPOCHS = 2


def _zip_of_pngs(path: Path, count: int = 20) -> Path:
    """`count` 28x28 PNGs of a bright blob at varying places (a learnable toy set), zipped in one folder."""
    yy, xx = np.mgrid[:28, :28]
    with zipfile.ZipFile(path, "w") as z:
        for i in range(count):
            cy, cx = 8 + (i * 7) % 12, 8 + (i * 5) % 12
            im = np.clip(255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(im, "L").save(buf, format="PNG")
            z.writestr(f"blobs/{i:02d}.png", buf.getvalue())
        z.writestr("blobs/README.txt", "not an image")
    return path


def _shot(page, name: str) -> None:  # noqa: ANN001 - a playwright Page
    time.sleep(0.3)
    page.screenshot(path=str(SHOTS / f"train-{name}.png"), full_page=True)


def _value(page, selector: str) -> str:  # noqa: ANN001 - a playwright Page
    return page.locator(f"{selector} input").first.input_value()


def test_browser_train_from_an_uploaded_zip_then_generate_with_the_new_model(tmp_path_factory) -> None:
    from studio.datasets import load_arrays
    from studio.queue.testing import QueueHarness
    from studio.ui import serve
    from studio.ui.testing import free_port

    root = tmp_path_factory.mktemp("train-stack")
    archive = _zip_of_pngs(root / "blobs.zip")
    harness = QueueHarness(root, broker_url=None, plugins="vae")
    try:
        with harness.active(), ThreadPoolExecutor(2) as pool, contextlib.ExitStack() as stack:
            # meanwhile: the worker starts, and the page's first load finds the mnist cache built
            worker = pool.submit(harness.start_worker)
            pool.submit(load_arrays, "mnist", "test", 1, harness.settings)
            client = harness.client()
            stack.callback(client.close)
            stack.callback(lambda: harness.kill_worker(worker.result()))  # nothing of it is needed afterwards
            warm = client.submit({"op": "sample", "backend": "vae", "n": 1})  # its job process loads torch now
            demo, url = serve(harness.settings, port=free_port(), client=client)
            stack.callback(demo.close)
            browser = stack.enter_context(chromium_browser())
            assert client.wait(warm, timeout=60)["state"] == "SUCCEEDED"
            page = browser.new_page(viewport={"width": 1366, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            page.locator("#backend-picker").wait_for(state="visible")
            page.get_by_role("tab", name="Train", exact=True).click()
            page.locator("#train-run").wait_for(state="visible")
            page.get_by_text("Import a dataset (a folder of images or a zip)").click()
            _shot(page, "empty")

            # import the zip as dataset "blobs" (its name comes from the file); the README is skipped
            page.locator("#train-upload-zip input[type=file]").set_input_files(str(archive))
            page.wait_for_function("document.querySelector('#train-dataset-name textarea, "
                                   "#train-dataset-name input').value === 'blobs'")
            page.click("#train-import")
            page.wait_for_selector("#train-import-status :text('imported dataset')")
            assert "20 images" in page.inner_text("#train-import-status")
            assert "skipped 1: 1 not images" in page.inner_text("#train-import-status")
            assert _value(page, "#train-dataset") == "blobs"

            page.locator("#train-epochs input").fill(str(EPOCHS))
            page.locator("#train-limit input").fill("16")
            page.locator("#train-name input, #train-name textarea").first.fill("blobs-vae")
            page.click("#train-run")
            page.wait_for_selector("#train-status :text('⏳ job')")  # the progress line, while the job runs
            # the worker's first progress row (step and time left), unless the short job is already done
            page.wait_for_function("(t => t.includes(' · step ') || t.includes('✓ job'))"
                                   "(document.querySelector('#train-status').innerText)")
            page.screenshot(path=str(SHOTS / "train-running.png"), full_page=True)  # at once: it runs briefly
            page.wait_for_selector("#train-status :text('is ready and picked above')")
            _shot(page, "done")
            status = page.inner_text("#train-status")
            assert "✓ job" in status and "blobs-vae" in status
            captions = page.inner_text("#train-samples")
            assert f"after epoch {EPOCHS}/{EPOCHS}" in captions
            # the header picks the new model (and its backend) without a rescan
            page.wait_for_function("document.querySelector('#model-picker input').value === 'blobs-vae'")
            time.sleep(1.0)  # the backend-change handler and anything it set off have run
            assert (_value(page, "#backend-picker"), _value(page, "#model-picker")) == ("vae", "blobs-vae")

            # Generate samples from it
            page.get_by_role("tab", name="Generate", exact=True).click()
            page.click("#generate-button")
            page.wait_for_selector("#generate-status :text('✓ job')")
            assert page.locator("#generate-gallery img").count() >= 1
            sampled = [j for j in client.jobs("SUCCEEDED", limit=20) if j.get("op") == "sample"]
            assert sampled and sampled[0]["spec"]["model"] == "blobs-vae"
            trained = [j for j in client.jobs("SUCCEEDED", limit=20) if j.get("op") == "train"]
            assert trained[0]["spec"]["dataset"] == "blobs" and trained[0]["spec"]["limit"] == 16
            page.close()
    finally:
        harness.close()
