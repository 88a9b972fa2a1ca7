"""The login page in a real browser: with users in the store, the UI asks for a login, refuses a wrong password
with Gradio's own error, and each signed-in user's Queue tab lists only their own jobs.

Drives Debian's chromium with the PyPI playwright package (launched as tests/test_ui_integration.py does) against
the UI served in this process on a real worker (studio.queue.testing.QueueHarness, the toy backend).
Screenshots go to test-output/ui/login-alice.png and login-bob.png.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ui_integration import CHROMIUM, CHROMIUM_ARGS, SHOTS

from studio.ui.testing import served_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_URL = "redis://127.0.0.1:6379/11"  # the harness isolates its queue and key prefix
PASSWORDS = {"alice": "alice-password", "bob": "bob-password-1"}
WAIT_MS = 30_000


def _finished_job(settings: object, user: str, seed: int) -> str:
    """Submit a toy job as `user` and wait until the worker has finished it; returns its id."""
    from studio.queue.client import StudioClient

    client = StudioClient(settings, user=user)
    try:
        job_id = client.submit({"op": "sample", "backend": "toy", "n": 1, "seed": seed})
        assert client.wait(job_id, timeout=60)["state"] == "SUCCEEDED"
        return job_id
    finally:
        client.close()


def _sign_in(page, url: str, user: str, password: str) -> None:  # noqa: ANN001 - a playwright Page
    """Load the page afresh, check that it is the studio's login form, and sign in."""
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.get_by_text("Latent Studio: sign in with your user name and password")).to_be_visible()
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()


def _queue_table(page) -> str:  # noqa: ANN001 - a playwright Page
    """Open the Queue tab and return its table's text once it has loaded the signed-in user's jobs."""
    page.get_by_role("tab", name="Queue", exact=True).click()
    table = page.locator("#queue-table table.ls-jobs")
    table.wait_for(state="visible")
    page.locator("#queue-history img").first.wait_for(state="visible")  # the same refresh fills the history
    return table.inner_text()


def test_login_in_the_browser_and_each_user_sees_only_their_jobs(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from studio.queue.testing import QueueHarness
    from studio.users import UserStore

    harness = QueueHarness(tmp_path, broker_url=REDIS_URL, plugins="toy")
    users = UserStore.from_settings(harness.settings)
    for name, password in PASSWORDS.items():
        users.add(name, password)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with harness.active(), served_in_process(harness) as (_demo, url, _client):
            alice_job = _finished_job(harness.settings, "alice", seed=1)
            bob_job = _finished_job(harness.settings, "bob", seed=2)  # so bob's table is loaded, not just empty
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1366, "height": 900})
                    page.set_default_timeout(WAIT_MS)
                    _sign_in(page, url, "alice", "wrong-password")
                    expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
                    expect(page.get_by_label("password")).to_be_visible()  # still the login form
                    assert page.locator("#tab-queue, #generate-button").count() == 0  # and no studio page

                    _sign_in(page, url, "alice", PASSWORDS["alice"])
                    page.locator("#generate-button").wait_for(state="visible")
                    text = _queue_table(page)
                    assert alice_job in text and bob_job not in text, text
                    page.screenshot(path=str(SHOTS / "login-alice.png"), full_page=True)

                    bob = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
                    bob.set_default_timeout(WAIT_MS)
                    _sign_in(bob, url, "bob", PASSWORDS["bob"])
                    bob.locator("#generate-button").wait_for(state="visible")
                    text = _queue_table(bob)
                    assert bob_job in text and alice_job not in text, text
                    bob.screenshot(path=str(SHOTS / "login-bob.png"), full_page=True)
                finally:
                    browser.close()
    finally:
        users.close()
        harness.close()
