"""The web UI against a running studio: an embedded Redis, a real `studio worker` process and the Gradio app.

Part 1 drives the named API endpoints with gradio_client. Part 2 drives the page in Debian's chromium with the
PyPI playwright package (never `playwright install`): it loads the page, generates, moves the edit slider,
reads results back, and saves a screenshot of every tab under test-output/ui/.
"""

from __future__ import annotations

import io
import json
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.ui.testing import free_port, served_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium_browser():
    """Debian's chromium, launched headless by playwright (screenshots folder made); closed on exit."""
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def studio_page(browser, url: str, timeout_ms: int, picker: str, value: str, height: int = 900):  # noqa: ANN001, ANN201
    """A new page on the studio at `url`, loaded: Generate shown and the header's `picker` ("backend" or "model")
    showing `value`. The caller closes it."""
    page = browser.new_page(viewport={"width": 1366, "height": height})
    page.set_default_timeout(timeout_ms)
    page.goto(url)
    page.locator("#generate-button").wait_for(state="visible")
    page.wait_for_function(f"document.querySelector('#{picker}-picker input').value === {value!r}")
    return page


MAX_PIXELS = 300 * 300  # the UI refuses bigger uploads (STUDIO_MAX_UPLOAD_PIXELS); the drawing canvas is 280x280


@dataclass
class Stack:
    harness: object
    url: str
    client: object
    demo: object
    model: str


def _vae_model(root: Path) -> tuple[str, dict]:
    """The shipped VAE when its weights exist; otherwise a tiny one trained here (a few seconds)."""
    from studio_vae.backend import SHIPPED

    if SHIPPED.is_file():
        return "mnist", {}
    from studio_vae.train import train_vae

    from studio.config import load_settings

    models = root / "models"
    (models / "vae").mkdir(parents=True)
    settings = load_settings({"STUDIO_HOME": str(root / "home")})
    train_vae("mnist", 1, models / "vae" / "tiny.safetensors", seed=0, settings=settings, limit=2000, base_width=8)
    return "tiny", {"model_roots": str(models)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    from studio.queue.testing import QueueHarness

    root = tmp_path_factory.mktemp("ui-stack")
    model, extra = _vae_model(root)
    harness = QueueHarness(root, broker_url=None, plugins="vae,toy,sd", max_upload_pixels=MAX_PIXELS, **extra)
    try:
        with harness.active(), served_in_process(harness) as (demo, url, client):
            yield Stack(harness, url, client, demo, model)
    finally:
        harness.close()


@pytest.fixture(scope="module")
def api(stack: Stack):
    from gradio_client import Client

    return Client(stack.url, verbose=False)


def _path(item: object) -> str:
    """The local file of a gradio_client image output (a path, or a gallery item {image, caption})."""
    if isinstance(item, dict):
        item = item.get("image", item)
        if isinstance(item, dict):
            item = item.get("path")
    assert isinstance(item, str) and Path(item).is_file(), item
    return item


# ----- Part 1: the named API endpoints -----

def test_api_lists_the_documented_endpoints(api) -> None:
    named = set(api.view_api(print_info=False, return_format="dict")["named_endpoints"])
    expected = {"/generate", "/img2img", "/interpolate", "/edit", "/traverse", "/analogy", "/walk",
                "/fit_vector_dataset", "/fit_vector_picks", "/compress", "/project", "/anomalies", "/train",
                "/import_dataset", "/cancel", "/retry", "/replay", "/plugins", "/submit", "/status", "/jobs"}
    assert named == expected
    doc = (ROOT / "docs" / "UI.md").read_text()
    assert all(f"`{name}`" in doc for name in expected), "every endpoint is documented in docs/UI.md"


def test_generate_returns_images_that_carry_their_record(api, stack: Stack) -> None:
    from studio.record import read_record

    gallery, status, summary = api.predict(backend="vae", model=stack.model, seed=5, n=3, api_name="/generate")
    assert len(gallery) == 3 and [g["caption"] for g in gallery] == ["seed 5", "seed 6", "seed 7"]
    record = read_record(_path(gallery[1]))
    assert record["spec"]["op"] == "sample" and record["item"]["seed"] == 6
    assert record["backend"] == "vae" and record["model"] == stack.model
    assert summary["seeds"] == [5, 6, 7] and summary["job_id"] in status
    job = stack.client.status(summary["job_id"])
    assert job["state"] == "SUCCEEDED" and job["op"] == "sample"  # it ran as a job on the queue


def test_a_failure_reaches_the_client_as_one_line(api, stack: Stack) -> None:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as bad_model:
        api.predict(backend="vae", model="no-such-model", seed=0, n=1, api_name="/generate")
    message = str(bad_model.value)  # refused by the UI before it queues anything, naming the backend's models
    assert "unknown model 'no-such-model' for backend 'vae' (available: " in message and stack.model in message
    assert "Traceback" not in message and "\n" not in message.strip()
    with pytest.raises(AppError) as exploded:  # a plugin error inside the worker
        api.predict(backend="toy", model="toy", seed=0, n=1, options_json='{"fail": "the plugin exploded"}',
                    api_name="/generate")
    assert "RuntimeError: the plugin exploded" in str(exploded.value)
    assert "\n" not in str(exploded.value).strip() and "File \"" not in str(exploded.value)


def test_a_backend_named_without_a_model_runs_its_own_default_model(api, stack: Stack) -> None:
    """A plugin's user names only the backend: the page's default model (the vae's) must not follow it there."""
    from studio.record import read_record

    params = {p["parameter_name"]: p for p in api.view_api(print_info=False, return_format="dict")
              ["named_endpoints"]["/generate"]["parameters"]}
    assert params["model"]["python_type"]["type"] == "str"  # not Literal['mnist']: any backend's names
    assert params["model"]["parameter_default"] == stack.model  # what a call without a model sends
    gallery, status, summary = api.predict(backend="toy", seed=42, n=2, api_name="/generate")
    assert [g["caption"] for g in gallery] == ["seed 42", "seed 43"] and summary["job_id"] in status
    record = read_record(_path(gallery[0]))
    assert record["backend"] == "toy" and record["model"] == "toy"
    assert stack.client.status(summary["job_id"])["spec"]["model"] == "toy"


def test_interpolate_gives_a_strip_and_a_gif(api, stack: Stack) -> None:
    strip, gif, frames, status = api.predict(backend="vae", model=stack.model, start_seed=1, end_seed=2,
                                             method="slerp", steps=5, api_name="/interpolate")
    assert len(frames) == 5 and "finished" in status
    with Image.open(_path(gif)) as animation:
        assert animation.format == "GIF" and animation.n_frames >= 5
    with Image.open(_path(strip)) as im:
        assert im.width > 4 * im.height  # one row of 5 frames


def test_fit_a_vector_then_edit_with_it(api, stack: Stack) -> None:
    vector, status = api.predict(backend="vae", model=stack.model, name="thick", dataset="mnist",
                                 attribute="thickness", method="balanced", limit=1000,
                                 api_name="/fit_vector_dataset")
    assert vector == "thick" and "saved" in status
    gallery, _, _ = api.predict(backend="vae", model=stack.model, seed=3, n=1, api_name="/generate")
    result, strip, status = api.predict(backend="vae", model=stack.model, vector="thick", source_kind="Seed", seed=3,
                                        strength=3.0, frames=4, api_name="/edit")
    assert "strip: +0.00, +1.00, +2.00, +3.00" in status
    original = np.asarray(Image.open(_path(gallery[0])), dtype=np.float32)
    edited = np.asarray(Image.open(_path(result)), dtype=np.float32)
    assert edited.shape == original.shape and edited.mean() > original.mean() + 3  # thicker: more ink
    with Image.open(_path(strip)) as im:
        frames = np.asarray(im.convert("L"), dtype=np.float32)
        assert im.width > 3 * im.height  # one row of 4 frames
    assert abs(frames[2:30, 2:30] - original).max() <= 1  # the strip starts at strength 0: the plain sample

    vector, status = api.predict(backend="vae", model=stack.model, name="picked", with_seeds="1, 2",
                                 without_seeds="3", api_name="/fit_vector_picks")
    assert vector == "picked" and "2 with / 1 without" in status


def test_compress_compares_with_jpeg_and_webp(api, stack: Stack, tmp_path: Path) -> None:
    from gradio_client import handle_file

    panels, table, status = api.predict(backend="vae", model=stack.model, source="Dataset", dataset="mnist",
                                        split="test", index=3, bits=8, api_name="/compress")
    captions = [p["caption"] for p in panels]
    assert captions[0] == "Original" and captions[1].startswith("Latent codec, 8 bits · ")
    assert all("dB" in c and "SSIM" in c and c.endswith(" B") for c in captions[1:]), captions
    assert captions[2].startswith("JPEG") and captions[3].startswith("WebP")
    with Image.open(_path(panels[2])) as jpeg:
        assert jpeg.format == "JPEG"  # the baseline file itself, as the encoder wrote it
    methods = [row[0] for row in table["data"]]
    assert methods[0] == "latent codec" and methods[1].startswith("JPEG") and methods[2].startswith("WebP")
    assert "bytes" in status
    with Image.open(_path(panels[0])) as original, Image.open(_path(panels[1])) as recon:
        assert original.size == recon.size == (28, 28)

    big = tmp_path / "big.png"
    Image.new("L", (400, 400), 128).save(big)  # 160,000 pixels > MAX_PIXELS
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="pixels; the limit is"):
        api.predict(backend="vae", model=stack.model, source="Upload", upload=handle_file(str(big)), bits=8,
                    api_name="/compress")
    small = tmp_path / "small.png"
    Image.new("L", (40, 40), 0).save(small)
    panels, _, _ = api.predict(backend="vae", model=stack.model, source="Upload", upload=handle_file(str(small)),
                               bits=6, api_name="/compress")
    assert Image.open(_path(panels[1])).size == (28, 28)


def test_project_and_anomalies(api, stack: Stack) -> None:
    html, plot, status = api.predict(backend="vae", model=stack.model, dataset="mnist", split="test",
                                        method="pca", limit=300, seed=0, api_name="/project")
    assert html.count("<circle") == 300 and Image.open(_path(plot)).format == "PNG"
    again = api.predict(backend="vae", model=stack.model, dataset="mnist", split="test", method="pca", limit=300,
                        seed=0, api_name="/project")
    assert "from cache" in again[2]
    summary, gallery, table, status = api.predict(backend="vae", model=stack.model, dataset="mnist", split="test",
                                                  ood="fashion", limit=200, top=8, api_name="/anomalies")
    assert "AUROC" in summary and len(gallery) == 8
    scores = [row[4] for row in table["data"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 100
    assert {row[1] for row in table["data"]} <= {"mnist", "fashion"}


def test_submit_status_cancel_retry_replay(api, stack: Stack) -> None:
    slow = {"op": "sample", "backend": "toy", "n": 16, "seed": 0, "options": {"delay_ms": 300}}
    job_id = api.predict(spec_json=json.dumps(slow), priority=5, api_name="/submit")
    deadline = time.monotonic() + 30
    while api.predict(job_id=job_id, api_name="/status")["state"] != "RUNNING":
        assert time.monotonic() < deadline, "the slow job never started"
        time.sleep(0.1)
    message, table = api.predict(job_id=job_id, state_filter="all", api_name="/cancel")
    assert "Cancel requested" in message and job_id in table
    final = stack.client.wait(job_id, timeout=30)
    assert final["state"] == "CANCELLED"

    message, _ = api.predict(job_id=job_id, state_filter="all", api_name="/retry")
    retried = message.split("`")[1]
    assert retried != job_id and stack.client.status(retried)["spec"] == final["spec"]
    stack.client.cancel(retried)
    done = api.predict(spec_json=json.dumps({"op": "sample", "backend": "vae", "model": stack.model, "n": 2}),
                       api_name="/submit")
    assert stack.client.wait(done, timeout=60)["state"] == "SUCCEEDED"
    message, _ = api.predict(job_id=done, state_filter="all", api_name="/replay")
    replayed = message.split("`")[1]
    assert stack.client.wait(replayed, timeout=60)["state"] == "SUCCEEDED"
    listed = api.predict(state="SUCCEEDED", limit=5, api_name="/jobs")
    assert listed[0]["id"] == replayed and all("path" not in a for a in listed[0]["artifacts"])
    status = api.predict(job_id=done, api_name="/status")
    assert status["state"] == "SUCCEEDED" and {a["name"] for a in status["artifacts"]} >= {"grid.png"}
    cards, workers, info = api.predict(api_name="/plugins")
    assert "vae" in cards and "toy" in cards and "serves" in workers
    assert {b["name"] for b in info["backends"]} == {"vae", "toy", "toygpu", "sd"}
    assert all("path" not in m for b in info["backends"] for m in b["models"])


def test_auth_is_enforced_when_configured(tmp_path: Path) -> None:
    """With STUDIO_UI_AUTH set, the page and the API need the user and password."""
    import dataclasses

    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    from studio.config import load_settings
    from studio.ui import serve

    class NoJobs:
        def jobs(self, state: str | None = None, limit: int = 100) -> list:
            return []

        def workers(self) -> list:
            return []

    settings = dataclasses.replace(load_settings({"STUDIO_HOME": str(tmp_path / "home")}),
                                   ui_auth="ana:correct-horse")
    demo, url = serve(settings, host="127.0.0.1", port=free_port(), client=NoJobs())
    try:
        with pytest.raises(AuthenticationError):
            Client(url, verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("ana", "wrong-password"), verbose=False)
        assert Client(url, auth=("ana", "correct-horse"), verbose=False).predict(api_name="/jobs") == []
    finally:
        demo.close()


# ----- Part 2: the page in a real browser -----

@pytest.fixture(scope="module")
def page(stack: Stack):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1366, "height": 900})
            pg.set_default_timeout(60_000)
            pg.goto(stack.url)
            pg.wait_for_selector("#generate-button")
            yield pg
        finally:
            browser.close()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    time.sleep(0.4)


def _shot(page, name: str) -> None:
    time.sleep(0.5)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _image_pixels(page, selector: str) -> np.ndarray:
    """Read an <img> the page shows back through the browser (its own bytes, as served)."""
    src = page.locator(selector).first.get_attribute("src")
    data = page.evaluate("async (u) => Array.from(new Uint8Array(await (await fetch(u)).arrayBuffer()))", src)
    return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("L"), dtype=np.float32)


def test_browser_generate_edit_and_every_tab(page, stack: Stack) -> None:
    _shot(page, "01-start")
    page.locator("#generate-seed input").fill("11")
    page.click("#generate-button")
    page.wait_for_function("document.querySelectorAll('#generate-gallery img').length >= 16")
    page.wait_for_selector("#generate-status :text('finished')")
    assert "16 images" in page.inner_text("#generate-status")
    _shot(page, "generate")

    _tab(page, "Interpolate")
    page.click("#interpolate-button")
    page.wait_for_selector("#interpolate-strip img")
    _shot(page, "interpolate")

    _tab(page, "Edit")
    if not page.locator("#fit-dataset-button").is_visible():  # the accordion opens by itself only without vectors
        page.click("#fit-dataset button.label-wrap")
    page.locator("#fit-dataset-button").click()
    page.wait_for_function("document.querySelector('#edit-vector input').value === 'thickness'")
    page.click("#edit-button")
    page.wait_for_selector("#edit-status :text('strength +2.00')")
    before = _image_pixels(page, "#edit-result img")
    slider = page.locator("#edit-strength input[type=range]")
    box = slider.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.12, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    page.wait_for_function("document.querySelector('#edit-status').innerText.includes('strength -')")
    status = page.inner_text("#edit-status")
    strength = float(status.split("strength ")[-1].split()[0])
    assert strength < -2.0, status
    after = _image_pixels(page, "#edit-result img")
    assert before.shape == after.shape and np.abs(before - after).mean() > 1.0  # a visibly different edit
    _shot(page, "edit")

    page.get_by_text("Pick examples from a generated grid").click()  # the smile-vector workflow
    page.click("#pick-grid-button")
    page.wait_for_function("document.querySelectorAll('#pick-gallery img').length >= 16")
    for index, button in ((0, "With the attribute"), (3, "With the attribute"), (5, "Without it")):
        page.locator("#pick-gallery .thumbnail-item").nth(index).click()
        time.sleep(0.3)
        page.get_by_role("button", name=button).click()
    page.wait_for_function("document.querySelector('#pick-without textarea, #pick-without input').value === '105'")
    assert page.locator("#pick-with textarea, #pick-with input").first.input_value() == "100, 103"
    page.click("#fit-picks-button")
    page.wait_for_selector("#pick-status :text('2 with / 1 without')")
    _shot(page, "edit-picks")

    _tab(page, "Explore")
    page.click("#project-button")
    page.wait_for_selector("#explore-scatter circle")
    dot = page.locator("#explore-scatter circle").nth(7)
    dot.hover()
    page.wait_for_function("(() => { const i = document.querySelector('#explore-scatter .ls-tip img');"
                           " return i && i.src.startsWith('data:image/png'); })()")
    dot.click()
    page.wait_for_selector("#explore-point img")
    page.mouse.move(5, 5)
    page.click("#anomalies-button")
    page.wait_for_selector("#anomalies-auroc :text('AUROC')")
    _shot(page, "explore")

    _tab(page, "Queue")
    page.wait_for_selector("#queue-table :text('succeeded')")
    assert page.locator("#queue-table tbody tr").count() >= 5
    _shot(page, "queue")

    _tab(page, "Plugins")
    page.wait_for_selector("#plugins-workers :text('serves')")
    _shot(page, "plugins")
    _tab(page, "Compress")
    page.click("#compress-button")
    page.wait_for_function("document.querySelectorAll('#compress-panels img').length >= 2")
    page.wait_for_selector("#compress-table :text('latent codec')")
    _shot(page, "compress")
    first_job = re.search(r"job (\w+)", page.inner_text("#compress-status")).group(1)
    page.get_by_label("Draw", exact=True).check()  # draw a stroke (white on black) and compress the drawing
    canvas = page.locator("#compress-sketch canvas").first
    canvas.scroll_into_view_if_needed()
    time.sleep(0.5)
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.25)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.75, steps=12)
    page.mouse.up()
    page.click("#compress-button")
    try:
        page.wait_for_function(f"!document.querySelector('#compress-status').innerText.includes({first_job!r})"
                               " && document.querySelector('#compress-status').innerText.includes('finished')",
                               timeout=20_000)
    except Exception:
        _shot(page, "compress-drawing-failed")
        raise
    _shot(page, "compress-drawing")

    assert all((SHOTS / f"{n}.png").is_file() for n in
               ("generate", "interpolate", "edit", "compress", "explore", "queue", "plugins"))


def test_browser_send_to_generate_restores_parameters(page, stack: Stack) -> None:
    """Pick a generated grid in the history, see its record, and send its parameters back to Generate."""
    _tab(page, "Generate")
    page.locator("#generate-seed input").fill("0")
    _tab(page, "Queue")
    page.click("#queue-refresh")
    grid = page.locator("#queue-history .thumbnail-item", has_text="sample · vae").first
    grid.wait_for()
    grid.click()
    page.wait_for_selector("#queue-record :text('record_version')")
    _shot(page, "queue-record")
    page.click("#send-to-generate")
    page.wait_for_selector("#generate-button", state="visible")
    page.wait_for_function("document.querySelector('#generate-seed input').value !== '0'")
    # the newest grid in the history is the smile-vector workflow's pick grid: seeds 100..115
    assert page.locator("#generate-seed input").input_value() == "100"


def test_browser_failure_shows_its_one_line_message(page, stack: Stack) -> None:
    _tab(page, "Generate")
    page.get_by_text("Backend options (JSON, advanced)").click()
    options = page.locator("#ls-options textarea, #ls-options input").first
    options.fill('{"no_such_option": 1}')
    page.click("#generate-button")
    toast = page.locator("[data-testid=toast-body]").first
    toast.wait_for()
    text = toast.inner_text()
    _shot(page, "error")
    options.fill("")
    assert "invalid options for backend 'vae'" in text and "no_such_option" in text
    assert "Traceback" not in text and 'File "' not in text


def test_browser_backend_change_shows_its_own_options_form(page, stack: Stack) -> None:
    """Pick the toy backend: its model and its options form appear; a form value reaches the job's spec."""
    _tab(page, "Generate")
    assert not page.locator("#ls-form").is_visible()  # the vae takes no options: no form
    page.click("#backend-picker input")
    page.get_by_role("option", name="toy", exact=True).click()
    page.wait_for_function("document.querySelector('#model-picker input').value === 'toy'")
    page.get_by_text("Backend options: toy").click()
    slider = page.locator("#ls-opt-slider-0")
    slider.wait_for(state="visible")
    assert "Delay Ms" in slider.inner_text() and page.locator("#ls-opt-checkbox-0").is_visible()
    assert page.locator("#ls-opt-slider-0 input[type=range]").get_attribute("max") == "60000"
    delay = page.locator("#ls-opt-slider-0 input[type=number]")
    delay.fill("7")
    delay.press("Enter")
    page.locator("#generate-seed input").fill("3")
    before = {j["id"] for j in stack.client.jobs(limit=50)}
    page.click("#generate-button")
    deadline = time.monotonic() + 60
    while not (new := [j for j in stack.client.jobs(limit=50) if j["id"] not in before]) \
            or new[0]["state"] != "SUCCEEDED":
        assert time.monotonic() < deadline, "the toy job did not finish"
        time.sleep(0.2)
    spec = stack.client.status(new[0]["id"])["spec"]
    assert spec["backend"] == "toy" and spec["model"] == "toy" and spec["options"] == {"delay_ms": 7}


def test_browser_sd_generates_from_a_prompt_with_the_shipped_model(page, stack: Stack) -> None:
    """Pick sd: its shipped model is the default; a prompt for a digit 7 gives images the classifier reads as 7."""
    from studio.classifier import load_classifier
    from studio.images import to_tensor

    _tab(page, "Generate")
    page.click("#backend-picker input")
    page.get_by_role("option", name="sd", exact=True).click()
    page.wait_for_function("document.querySelector('#model-picker input').value === 'mnist-fashion'")
    prompt = page.locator("#prompt textarea, #prompt input").first
    prompt.wait_for(state="visible")  # the text row shows for a TEXT backend
    assert page.get_by_label("Prompt", exact=True).first.is_visible()
    prompt.fill("a handwritten digit 7")
    how_many = page.locator("#tab-generate .block", has_text="How many images").locator("input[type=number]")
    how_many.fill("4")
    how_many.press("Enter")
    page.locator("#generate-seed input").fill("0")
    page.click("#generate-button")
    page.wait_for_selector("#generate-status :text('4 images')", timeout=240_000)
    page.wait_for_function("document.querySelectorAll('#generate-gallery img').length === 4")
    _shot(page, "generate-sd-prompt")
    job_id = re.search(r"job (\w+)", page.inner_text("#generate-status")).group(1)
    spec = stack.client.status(job_id)["spec"]
    assert spec["backend"] == "sd" and spec["model"] == "mnist-fashion"
    assert spec["options"]["prompt"] == "a handwritten digit 7" and spec["n"] == 4

    images = []
    for img in page.locator("#generate-gallery img").all():  # each image's own bytes, as the page serves them
        data = page.evaluate("async (u) => Array.from(new Uint8Array(await (await fetch(u)).arrayBuffer()))",
                             img.get_attribute("src"))
        images.append(Image.open(io.BytesIO(bytes(data))).convert("RGB"))
    assert all(im.size == (32, 32) for im in images), [im.size for im in images]  # the model's native size
    digits = load_classifier("mnist").predict(to_tensor(images, (1, 28, 28))).tolist()
    assert sum(d == 7 for d in digits) >= 3, digits
