"""Issue 14, items 1, 3, 4, 7 and 8 in a real browser (Debian's chromium, PyPI playwright), one page session:

- Ctrl+Enter generates (the visible tab's run button), Escape cancels a slow job (the toy's `delay_ms`) while its
  live line (step, time left) shows;
- "Send to Edit / Interpolate / Compress" under Generate's gallery fill that tab's image input and open it;
- a record PNG dropped on the page body restores seed, backend and model, and the sd scheduler/width/height
  widgets (a PNG without a record: one line); the restored widgets reach the next job's spec.

The stack: the UI served in this process on a real worker (studio.queue.testing.QueueHarness) with the toy and sd
backends (sd: the tiny test pipeline). Screenshots: test-output/ui/generate-{empty,running,done}.png and
shortcuts-*.png.
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import pytest
from PIL import Image
from test_ui_integration import SHOTS, chromium_browser, studio_page

from studio.ui.testing import served_in_process

pytestmark = [pytest.mark.integration]

WAIT_MS = 60_000  # the page under a loaded CI machine

DROP_JS = """([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const box = new DataTransfer();
  box.items.add(new File([bytes], name, {type: 'image/png'}));
  const at = document.querySelector('#ls-title');
  for (const kind of ['dragenter', 'dragover', 'drop']) {
    at.dispatchEvent(new DragEvent(kind, {dataTransfer: box, bubbles: true, cancelable: true}));
  }
}"""

# true once no "processing" overlay shows, after one showed (the page's load event) or, if that one was over
# before this looked, after the page's first 3 s
SETTLED = """() => {
  const busy = [...document.querySelectorAll('*')].some((e) => !e.children.length && e.offsetParent !== null
    && e.textContent.trim().startsWith('processing'));
  if (busy) window.__lsSeenBusy = true;
  return !busy && (window.__lsSeenBusy || performance.now() > 3000);
}"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_sd_models: Path):
    from studio.queue.testing import QueueHarness

    root = tmp_path_factory.mktemp("shortcuts-stack")
    harness = QueueHarness(root, broker_url=None, plugins="toy,sd", model_roots=str(tiny_sd_models))
    try:
        with harness.active(), served_in_process(harness) as (_demo, url, client):
            yield url, client
    finally:
        harness.close()


def _shot(page, name: str, full_page: bool = True) -> None:  # noqa: ANN001 - a playwright Page
    time.sleep(0.2)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def _value(page, selector: str) -> str:  # noqa: ANN001
    return page.locator(f"{selector} input").first.input_value()


def _pick(page, dropdown: str, value: str) -> None:  # noqa: ANN001
    page.locator(f"#{dropdown} input").click()
    page.get_by_role("option", name=value, exact=True).click()


def _record_b64(backend: str, model: str, seed: int, options: dict | None) -> str:
    from studio.record import make_record, pnginfo

    image, out = Image.new("L", (8, 8), 100), io.BytesIO()
    if options is None:
        image.save(out, "PNG")
    else:
        spec = {"op": "sample", "backend": backend, "model": model, "seed": seed, "n": 1, "options": options}
        record = make_record(spec, {"backend": backend, "model": model}, {"seed": seed, "index": 0})
        image.save(out, "PNG", pnginfo=pnginfo(record))
    return base64.b64encode(out.getvalue()).decode("ascii")


def _newest(client, op: str = "sample") -> dict:  # noqa: ANN001
    return next(j for j in client.jobs(None, limit=20) if j.get("op") == op)


def test_browser_shortcuts_send_to_and_drop_a_png(stack) -> None:
    url, client = stack
    with chromium_browser() as browser:
        page = studio_page(browser, url, WAIT_MS, "backend", "sd", height=1000)
        page.locator("#ls-scheduler").wait_for(state="visible")  # sd's text row has its widgets
        page.wait_for_function(SETTLED)  # the page's load event has answered (for the screenshot)
        assert page.locator("#generate-gallery input[type=file]").count() == 0  # a result view, no upload area
        _shot(page, "generate-empty")

        # Ctrl+Enter generates (two toy images), from wherever the focus is
        _pick(page, "backend-picker", "toy")
        page.locator("#ls-scheduler").wait_for(state="hidden")  # the toy takes no scheduler
        page.locator("#generate-seed input").fill("5")
        count = page.locator("#tab-generate input[type=number]").nth(1)  # "How many images"
        count.fill("2")
        count.press("Control+Enter")
        page.wait_for_function("document.querySelector('#generate-status').innerText.includes('finished')")
        page.wait_for_function("document.querySelectorAll('#generate-gallery .thumbnail-item').length === 2")
        _shot(page, "generate-done")

        # Send to Edit / Interpolate / Compress: the first image lands in the tab's image input, which opens
        for label, tab in (("Edit", "edit"), ("Interpolate", "interpolate"), ("Compress", "compress")):
            page.get_by_role("tab", name="Generate", exact=True).click()
            page.locator(f"#tab-generate button.ls-send-{tab}").click()
            page.locator(f"#tab-{tab} [data-testid=image] img").first.wait_for(state="visible")
            assert page.locator(f"#tab-{tab}").is_visible(), label
        _shot(page, "shortcuts-send-to-compress")

        # Escape cancels a slow job while its live line shows its step and time left
        page.get_by_role("tab", name="Generate", exact=True).click()
        page.get_by_text("Backend options (JSON, advanced)").click()
        page.locator("#ls-options textarea").fill('{"delay_ms": 400}')
        count.fill("64")  # 26 s unless cancelled
        count.press("Enter")
        page.locator("#generate-seed input").press("Meta+Enter")
        page.wait_for_function("document.querySelector('#generate-live').innerText.includes('left')")
        _shot(page, "generate-running", full_page=False)  # the live line: step and time left
        slow = _newest(client)
        assert slow["state"] == "RUNNING"
        page.keyboard.press("Escape")
        deadline = time.monotonic() + 20
        while client.status(slow["id"])["state"] not in ("CANCELLED", "FAILED", "SUCCEEDED"):
            assert time.monotonic() < deadline, "Escape did not cancel the job"
            time.sleep(0.1)
        final = client.status(slow["id"])
        assert final["state"] == "CANCELLED" and final["step"] < 64  # stopped between images
        page.wait_for_function("document.querySelector('#generate-status').innerText.includes('Cancel requested')")
        page.locator("#generate-live").wait_for(state="attached")
        page.wait_for_function("document.querySelector('#generate-live').innerText.trim() === ''")

        # drop a record PNG on the page body: Generate gets its seed, backend, model and sd widgets
        page.get_by_role("tab", name="Queue", exact=True).click()
        options = {"scheduler": "euler", "width": 256, "height": 320, "steps": 2}
        page.evaluate(DROP_JS, [_record_b64("sd", "tiny", 4242, options), "sd.png"])
        page.locator("#generate-button").wait_for(state="visible")  # Generate opened
        page.wait_for_function("document.querySelector('#backend-picker input').value === 'sd'")
        page.wait_for_selector("#ls-backend-line :text('sd')")
        time.sleep(0.5)  # the backend-change handler and anything it set off have run
        _shot(page, "shortcuts-dropped")
        assert (_value(page, "#backend-picker"), _value(page, "#model-picker")) == ("sd", "tiny")
        assert _value(page, "#generate-seed") == "4242"
        assert (_value(page, "#ls-scheduler"), _value(page, "#ls-width"), _value(page, "#ls-height")) == \
            ("euler", "256", "320")

        # a PNG without a record: one line
        page.evaluate(DROP_JS, [_record_b64("", "", 0, None), "plain.png"])
        text = page.wait_for_function("""() => {
          const t = [...document.querySelectorAll('.toast-body')].find((e) => e.innerText.includes('dropped PNG'));
          return t && t.innerText.trim(); }""").json_value()  # read at once: a toast closes by itself
        assert "dropped PNG:" in text and "Traceback" not in text
        _shot(page, "shortcuts-drop-error")

        # the restored widgets reach the next job's spec (cancelled at once: the spec is the point)
        page.locator("#generate-seed input").press("Control+Enter")
        deadline = time.monotonic() + 20
        while _newest(client).get("backend") != "sd":
            assert time.monotonic() < deadline, "Ctrl+Enter did not submit the sd job"
            time.sleep(0.1)
        job = _newest(client)
        client.cancel(job["id"])
        spec = client.status(job["id"])["spec"]
        assert spec["model"] == "tiny" and spec["seed"] == 4242
        assert {k: spec["options"].get(k) for k in options} == options
