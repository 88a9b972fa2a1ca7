"""Push events for programs: the SSE route `/api/jobs/{id}/events` on a served studio with a real worker, and
webhooks on job end (signed, retried, recorded as job events, allow-listed at submit)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from studio.errors import InputError
from studio.ui import serve
from studio.ui.testing import free_port

pytestmark = [pytest.mark.integration]

SECRET = "test-webhook-secret-0123456789"
WAIT_S = 60.0


class Receiver:
    """A local HTTP server that records webhook POSTs and answers with the next status of `script` (then 200)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict, bytes]] = []
        self.script: dict[str, list[int]] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts.append((self.path, dict(self.headers), body))
                codes = outer.script.get(self.path, [])
                code = codes.pop(0) if codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def to(self, path: str) -> list[tuple[dict, bytes]]:
        return [(h, b) for p, h, b in self.posts if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """(harness, ui url, client, tokens {user: API token}, receiver): users alice and bob, one worker, the UI."""
    from studio.queue.testing import QueueHarness
    from studio.users import UserStore

    root = tmp_path_factory.mktemp("push")
    harness = QueueHarness(root, broker_url=None, plugins="toy", webhook_secret=SECRET, webhook_backoff_ms=100,
                           webhook_attempts=3, webhook_timeout_s=2, job_process=0)
    receiver = Receiver()
    try:
        with harness.active(), ThreadPoolExecutor(1) as pool:
            users = UserStore.from_settings(harness.settings)
            tokens = {}
            for name in ("alice", "bob"):
                users.add(name, f"{name}-password-123")
                tokens[name] = users.new_token(name)
            worker = pool.submit(harness.start_worker)  # it starts while the page is built (both take seconds)
            client = harness.client()
            demo, url = serve(harness.settings, port=free_port(), client=client)
            try:
                worker.result()
                yield harness, url.rstrip("/"), client, tokens, receiver
            finally:
                demo.close()
                client.close()
    finally:
        receiver.close()
        harness.close()


def _sample(webhook: str | None = None, delay_ms: int = 0, n: int = 3) -> dict:
    spec = {"op": "sample", "backend": "toy", "n": n, "options": {"delay_ms": delay_ms}}
    if webhook:
        spec["webhook"] = webhook
    return spec


def read_sse(url: str, token: str, last_id: int | None = None, timeout: float = WAIT_S) -> tuple[int, list[dict]]:
    """(HTTP status, events [{event, id, data}]) of one SSE stream, read to its end with a streaming client."""
    headers = {"Authorization": f"Bearer {token}"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    events: list[dict] = []
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, [{"body": response.text}]
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict = {}
        for line in response.iter_lines():
            if not line:
                if "event" in current:
                    events.append(current)
                current = {}
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
    return 200, events


def _wait_events(client, job_id: str, kind: str, timeout: float = WAIT_S) -> list[dict]:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [e for e in client.status(job_id)["events"] if e["kind"] == kind]
        if rows:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"no {kind} event for {job_id}: {client.status(job_id)['events']}")


def test_sse_streams_a_job_in_order_resumes_without_repeats_and_hides_other_users_jobs(stack) -> None:
    harness, url, client, tokens, _ = stack
    alice = client.for_user("alice")
    job_id = alice.submit(_sample(delay_ms=300, n=5))  # 1.5 s of steps: the stream sees it run
    events_url = f"{url}/api/jobs/{job_id}/events"

    status, events = read_sse(events_url, tokens["alice"])
    assert status == 200
    names = [e["event"] for e in events]
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), ids  # strictly increasing
    assert names[-1] == "end" and names.count("end") == 1
    assert names.index("state") < names.index("progress") < names.index("end")
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    assert states[-1] == "SUCCEEDED" and "RUNNING" in states
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert all(0 <= p["progress"] <= 1 and p["total"] >= 1 for p in progress)
    # a progress event is sent when the job's progress changes (a later phase may start its steps again at 1)
    assert all(a != b for a, b in zip(progress, progress[1:], strict=False)), progress
    end = events[-1]["data"]
    assert end["id"] == job_id and end["state"] == "SUCCEEDED" and len(end["artifacts"]) >= 4
    assert "preview_png_b64" not in end and "owner" not in end
    kinds = [e["data"]["kind"] for e in events if e["event"] == "event"]
    assert kinds[0] == "queued" and "started" in kinds and kinds[-1] == "succeeded"

    # resume after the first progress event: only newer ids, no event row again, the state only if it changed
    cut = next(e for e in events if e["event"] == "progress")
    status, again = read_sse(f"{events_url}", tokens["alice"], last_id=cut["id"])
    assert status == 200 and again and all(e["id"] > cut["id"] for e in again)
    seen_rows = {e["data"]["seq"] for e in events if e["event"] == "event" and e["id"] <= cut["id"]}
    assert not seen_rows & {e["data"]["seq"] for e in again if e["event"] == "event"}
    assert [e["event"] for e in again].count("end") == 1
    assert [e["data"]["state"] for e in again if e["event"] == "state"] == ["SUCCEEDED"]
    # the same with ?last_event_id=, and after the end: nothing (204, so an EventSource stops reconnecting)
    response = httpx.get(f"{events_url}?last_event_id={events[-1]['id']}",
                         headers={"Authorization": f"Bearer {tokens['alice']}"}, timeout=WAIT_S)
    assert response.status_code == 204

    # another user's job is not found, like an unknown id; no login at all is refused
    for token, jid in ((tokens["bob"], job_id), (tokens["alice"], "0123456789ab")):
        response = httpx.get(f"{url}/api/jobs/{jid}/events", headers={"Authorization": f"Bearer {token}"},
                             timeout=WAIT_S)
        assert response.status_code == 404
        assert list(response.json()) == ["error"] and "\n" not in response.json()["error"]
    assert httpx.get(events_url, timeout=WAIT_S).status_code == 401


def test_webhook_is_signed_retried_after_a_500_and_shown_in_the_stream(stack) -> None:
    from studio.record import read_record

    harness, url, client, tokens, receiver = stack
    receiver.script["/ok"] = [500]
    alice = client.for_user("alice")
    job_id = alice.submit(_sample(webhook=f"{receiver.url}/ok", n=2))

    status, events = read_sse(f"{url}/api/jobs/{job_id}/events", tokens["alice"])
    assert status == 200 and events[-1]["event"] == "end"
    kinds = [e["data"]["kind"] for e in events if e["event"] == "event"]
    assert kinds.index("succeeded") < kinds.index("webhook_failed") < kinds.index("webhook_delivered")

    posts = receiver.to("/ok")
    assert len(posts) == 2  # the 500, then the retry
    for headers, body in posts:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Studio-Signature"], expected)
    data = json.loads(posts[-1][1])
    assert data["id"] == job_id and data["state"] == "SUCCEEDED" and data["event"] == "job.ended"
    assert sorted(a["name"] for a in data["artifacts"]) == sorted(a["name"] for a in events[-1]["data"]["artifacts"])
    assert all("path" not in a and "key" not in a for a in data["artifacts"])

    # the job's PNGs never carry the URL, and they replay without it
    png = next(a["name"] for a in data["artifacts"] if a["name"].endswith(".png"))
    record = read_record(alice.artifact_path(job_id, png))
    assert record["spec"]["op"] == "sample" and "webhook" not in record["spec"]
    replayed = alice.replay_file(alice.artifact_path(job_id, png))
    assert "webhook" not in alice.status(replayed)["spec"]


def test_webhook_gives_up_after_its_attempts_and_says_so_in_status(stack) -> None:
    from studio.cli.queue_cmds import describe

    harness, url, client, tokens, receiver = stack
    receiver.script["/down"] = [500, 503, 500, 500]
    job_id = client.submit(_sample(webhook=f"{receiver.url}/down", n=1))
    gave_up = _wait_events(client, job_id, "webhook_gave_up")
    assert "after 3 attempts" in gave_up[0]["message"] and "HTTP 500" in gave_up[0]["message"]
    job = client.status(job_id)
    assert [e["kind"] for e in job["events"]].count("webhook_failed") == 2
    assert len(receiver.to("/down")) == 3
    text = describe(job)
    assert "webhook gave up after 3 attempts" in text and "webhook attempt 1 of 3 failed: HTTP 500" in text


def test_webhook_refused_at_submit_outside_the_allow_list_or_without_a_secret(stack) -> None:
    import dataclasses

    from studio.queue.client import StudioClient

    harness, url, client, tokens, receiver = stack
    before = len(client.jobs(limit=500))
    for bad, why in (("http://10.1.2.3/hook", "not allowed by STUDIO_WEBHOOK_ALLOW"),
                     ("ftp://127.0.0.1/x", "http:// or https://"),
                     ("http://user:pw@127.0.0.1/x", "no user name or password")):
        with pytest.raises(InputError) as err:
            client.submit(_sample(webhook=bad))
        assert why in str(err.value) and "\n" not in str(err.value)
    unsigned = StudioClient(dataclasses.replace(harness.settings, webhook_secret=""))
    try:
        with pytest.raises(InputError, match="STUDIO_WEBHOOK_SECRET"):
            unsigned.submit(_sample(webhook=f"{receiver.url}/x"))
    finally:
        unsigned.close()
    assert len(client.jobs(limit=500)) == before  # nothing was queued


def test_allow_list_checks_every_resolved_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name allowed by name must resolve to public addresses only (no rebinding to loopback or private ranges);
    a range allowed explicitly passes."""
    from studio import webhook_policy

    answers = {"hooks.example.com": ["93.184.216.34"], "evil.example.com": ["93.184.216.34", "127.0.0.1"],
               "lan.example.com": ["10.0.0.7"]}

    def fake(host: str, port: int, *args: object, **kwargs: object) -> list:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(webhook_policy.socket, "getaddrinfo", fake)
    target = webhook_policy.resolve_target("https://hooks.example.com/h?x=1", "*.example.com")
    assert (target.address, target.port, target.path, target.host) == ("93.184.216.34", 443, "/h?x=1",
                                                                       "hooks.example.com")
    for host in ("evil.example.com", "lan.example.com"):
        with pytest.raises(InputError, match="not allowed"):
            webhook_policy.resolve_target(f"http://{host}/", "*.example.com")
    assert webhook_policy.resolve_target("http://lan.example.com/", "*.example.com,10.0.0.0/8").address == "10.0.0.7"
    with pytest.raises(InputError, match="not allowed"):  # the default: loopback only
        webhook_policy.resolve_target("http://hooks.example.com/", "loopback")
    assert webhook_policy.resolve_target("http://[::1]:8/", "loopback").address == "::1"


def test_cli_webhook_flag_lands_in_the_spec_and_a_spec_without_one_is_unchanged(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from studio.cli import ops
    from studio.spec import parse_spec, spec_dict

    got: list[dict] = []
    app = typer.Typer()
    ops.mount(app, [], lambda spec: got.append(spec))
    runner = CliRunner()
    for argv in (["sample", "--backend", "toy", "--n", "2", "--webhook", "http://127.0.0.1:9/h"],
                 ["fit_vector", "--backend", "toy", "--webhook", "http://127.0.0.1:9/h"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.output
        assert got[-1]["webhook"] == "http://127.0.0.1:9/h"
    runner.invoke(app, ["sample", "--backend", "toy", "--n", "1"])
    assert "webhook" not in got[-1]
    assert "webhook" not in spec_dict(parse_spec({"op": "sample", "backend": "gan", "n": 1},
                                                 check_backend=False))


def _ids_names(frames: list[bytes]) -> list[tuple[int, str]]:
    return [(int(f.split(b"\nid: ")[1].split(b"\n")[0]), f.split(b"\n")[0][len(b"event: "):].decode())
            for f in frames]


def test_event_ids_increase_across_states_retries_and_resumes() -> None:
    from studio.ui.events_api import Follow, split_id

    follow = Follow(None)
    queued = {"id": "ab12", "state": "QUEUED", "step": 0, "total": 0, "message": "queued"}
    running = {**queued, "state": "RUNNING", "step": 1, "total": 4, "progress": 0.25, "message": "toy"}
    sent = _ids_names(follow.frames(queued, [{"seq": 7, "ts": 1.0, "kind": "queued", "message": "q"}]))
    sent += _ids_names(follow.frames(running, []))
    sent += _ids_names(follow.frames({**running, "step": 2}, []))
    sent += _ids_names(follow.frames(queued, [{"seq": 9, "ts": 2.0, "kind": "retry", "message": "r"}]))
    sent += _ids_names([follow.end({**queued, "state": "FAILED"})])
    assert [n for _, n in sent] == ["event", "state", "state", "progress", "progress", "event", "state", "end"]
    ids = [i for i, _ in sent]
    assert ids == sorted(set(ids))  # a retry goes back to QUEUED, after a newer event row: still increasing
    assert split_id(ids[0]) == (7, 0, 0) and split_id("garbage") == (0, 0, 0)
    resumed = Follow(ids[3])  # after the first progress: the state it had is not sent again
    again = _ids_names(resumed.frames({**running, "step": 2}, []))
    assert [n for _, n in again] == ["progress"] and again[0][0] > ids[3]
    assert Follow(ids[-1]).ended and not Follow(ids[-2]).ended


def test_webhook_of_a_job_cancelled_while_queued_is_sent_by_a_live_worker(stack) -> None:
    """A job can end without any worker running it (cancelled while queued, here on a queue no worker serves):
    the workers' sweep still delivers its webhook, once."""
    harness, url, client, tokens, receiver = stack
    job_id = client.submit({"op": "sample", "backend": "toygpu", "n": 1, "webhook": f"{receiver.url}/cancelled"})
    assert client.cancel(job_id)["state"] == "CANCELLED"
    _wait_events(client, job_id, "webhook_delivered")
    (headers, body), = receiver.to("/cancelled")
    assert json.loads(body)["state"] == "CANCELLED" and headers["X-Studio-Job"] == job_id
    assert [e["kind"] for e in client.status(job_id)["events"]].count("webhook") == 1


def test_a_quiet_stream_sends_heartbeat_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from studio.config import Settings
    from studio.ui import events_api

    class Store:  # a job that runs and never changes
        def events_after(self, job_id: str, after: int = 0, limit: int = 500) -> list[dict]:
            return []

        def get(self, job_id: str, events: bool = True, preview: bool = True) -> dict:
            return {"id": job_id, "state": "RUNNING", "step": 1, "total": 2, "progress": 0.5, "message": "m",
                    "spec": {}}

    monkeypatch.setattr(events_api, "POLL_S", 0.01)
    monkeypatch.setattr(events_api, "HEARTBEAT_S", 0.05)

    async def first(n: int) -> list[bytes]:
        stream = events_api._stream(Store(), Settings(), "ab12", events_api.Follow(None))
        out = [await anext(stream) for _ in range(n)]
        await stream.aclose()
        return out

    chunks = asyncio.run(first(6))
    assert chunks[0].startswith(b"retry:") and chunks[1].startswith(b"event: state")
    assert chunks[2].startswith(b"event: progress") and chunks[3:] == [b": keep-alive\n\n"] * 3


def test_studio_run_delivers_its_webhook_signed_from_the_cli_process(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from studio.queue.webhooks import SIGNATURE_HEADER, verify

    receiver = Receiver()
    receiver.script["/run"] = [503]  # the first attempt fails, the retry lands
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}, "STUDIO_HOME": str(tmp_path / "h"),
           "STUDIO_WEBHOOK_SECRET": SECRET, "STUDIO_WEBHOOK_BACKOFF_MS": "10"}
    try:
        proc = subprocess.run([sys.executable, "-m", "studio", "run", "sample", "--backend", "vae", "--n", "2",
                               "--out", str(tmp_path / "o"), "--webhook", f"{receiver.url}/run"],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "webhook attempt 1 of" in proc.stderr and "HTTP 503" in proc.stderr
        posts = receiver.to("/run")
        assert len(posts) == 2, posts
        headers, body = posts[-1]
        assert verify(body, headers.get(SIGNATURE_HEADER), SECRET)
        sent = json.loads(body)
        assert sent["state"] == "SUCCEEDED" and sent["op"] == "sample"
        assert sorted(a["name"] for a in sent["artifacts"]) == sorted(p.name for p in (tmp_path / "o").iterdir())
    finally:
        receiver.close()
