"""The creator web UI: a Gradio app on the job queue (the UI never runs a model itself).

`build_app(client, settings)` returns the `gr.Blocks`; `launch(settings, host, port, client)` serves it (blocking)
with safe defaults: loopback only unless auth is configured, uploads limited in bytes and pixels.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from studio.errors import StudioError

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

if TYPE_CHECKING:
    import gradio as gr

    from studio.config import Settings
    from studio.ui.jobs import QueueClient


def build_app(client: QueueClient, settings: Settings, auth_mode: str | None = None) -> gr.Blocks:
    """The studio's Gradio Blocks, built on a queue client (`auth_mode`: see studio.ui.security.auth_mode)."""
    from studio.ui.app import build_app as build

    return build(client, settings, auth_mode=auth_mode)


def launch_kwargs(settings: Settings, host: str, port: int, share: bool = False) -> dict:
    """Arguments for `Blocks.launch`: address, auth (required off loopback), upload limit, theme and CSS.

    Gradio serves only the artifact copies folder (`shelf_root`): the store, with the job database, logs and
    staging folders, is a blocked path.

    Raises InputError (before anything is served) for a non-loopback host or a share link without auth.
    """
    from studio.ui.artifacts import shelf_root
    from studio.ui.security import app_kwargs, auth_message, launch_auth
    from studio.ui.style import CSS, theme

    auth = launch_auth(settings, host, share)
    return {"server_name": host, "server_port": int(port), "share": share, "auth": auth,
            "auth_message": auth_message(settings, auth), "app_kwargs": app_kwargs(settings),
            "allowed_paths": [str(shelf_root(settings))], "blocked_paths": [str(settings.store_path)],
            "max_file_size": int(settings.max_upload_bytes),
            "theme": theme(), "css": CSS, "show_error": False, "ssr_mode": False, "quiet": True,
            "footer_links": ["api", "settings"]}


def serve(settings: Settings, host: str | None = None, port: int | None = None, client: QueueClient | None = None,
          share: bool = False) -> tuple[gr.Blocks, str]:
    """Start the UI in a background thread; returns the app (call `.close()` to stop) and its local URL."""
    host = host or settings.ui_host
    port = settings.ui_port if port is None else port
    from studio.ui.security import auth_mode

    mode = auth_mode(settings)  # recorded with the auth it launches with: a user added later never changes it
    kwargs = launch_kwargs(settings, host, port, share)  # refuse unsafe setups before building anything
    if client is None:
        from studio.queue.client import StudioClient

        client = StudioClient(settings)
    demo = build_app(client, settings, auth_mode=mode)
    # Gradio's own reachability check gives up after one HEAD of the page that takes over 3 s, which a loaded machine
    # can take for this page: the check here waits longer (and still fails in one line when nothing answers).
    _, local_url, _ = demo.launch(prevent_thread_lock=True, _frontend=False, **kwargs)
    try:
        wait_reachable(local_url)
    except StudioError:
        demo.close()
        raise
    from studio.ui.events_api import mount_events

    mount_events(demo.app, client, settings, mode)  # GET /api/jobs/{id}/events (push events, behind the same login)
    return demo, local_url


def wait_reachable(url: str, timeout_s: float = 60.0) -> None:
    """Return once `url` answers (any status a browser can follow: 2xx, a redirect, 401); StudioError after
    `timeout_s`."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.head(url, timeout=10).status_code in (200, 301, 302, 303, 307, 308, 401):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise StudioError(f"the UI did not answer on {url} within {timeout_s:.0f} s")
        time.sleep(0.25)


def launch(settings: Settings, host: str | None = None, port: int | None = None, client: QueueClient | None = None,
           share: bool = False) -> None:
    """Serve the UI and block until interrupted."""
    demo, url = serve(settings, host, port, client, share)
    print(f"Latent Studio UI on {url}", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()


__all__ = ["build_app", "launch", "launch_kwargs", "serve"]
