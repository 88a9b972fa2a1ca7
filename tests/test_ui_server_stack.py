"""The UI on the server stack (PostgreSQL + S3): what it shows is streamed from storage, never read from a folder.

The web process and the worker share no store folder here: the artifacts exist only as objects in the S3 server, and
the UI serves its own copies of what it shows (its shelf), byte for byte the stored objects.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.queue.testing import QueueHarness
from studio.ui.testing import served_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_ui_shows_results_streamed_from_s3(tmp_path: Path) -> None:
    from gradio_client import Client

    from studio.record import read_record
    from studio.storage import storage_for
    from studio.ui.artifacts import shelf_root

    harness = QueueHarness(tmp_path, broker_url="redis://127.0.0.1:6379/14", plugins="toy", stack="server")
    try:
        with harness.active(), served_in_process(harness) as (_, url, client):
            api = Client(url, verbose=False)
            gallery, _, summary = api.predict(backend="toy", seed=5, n=2, api_name="/generate")
            job_id = summary["job_id"]
            assert len(gallery) == 2 and read_record(gallery[0]["image"])["item"]["seed"] == 5
            assert not (Path(harness.settings.store_path) / "jobs").exists()  # no result in any folder
            storage = storage_for(harness.settings)
            stored = {a["name"]: storage.get(a["key"]) for a in client.result(job_id)["artifacts"]}
            shelf = shelf_root(harness.settings)
            shown = sorted(shelf.rglob("sample_*.png"))
            assert [p.name for p in shown] == ["sample_000.png", "sample_001.png"]
            assert all(p.read_bytes() == stored[p.name] for p in shown)  # the stored objects, byte for byte
            history = api.predict(job_id, api_name="/status")
            assert history["state"] == "SUCCEEDED"
    finally:
        harness.close()
