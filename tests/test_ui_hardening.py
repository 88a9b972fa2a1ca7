"""The UI under hostile input (issue #11, items 6, 7 and 12).

- An upload is checked from its header before anything decodes it: a 164 KB PNG claiming 13000x13000 pixels
  leaves the UI process's peak memory where it was (it used to add ~800 MB, ~2.3 GB with three at once).
- Gradio serves only copies of artifacts, by job id and name: never the job database, the store, a path
  through `..` or a symlink.
- Every rejection an API client or the page sees is one line under 300 characters naming the field, with no
  Python reprs: /submit, /status and /jobs are fuzzed with hypothesis through the handler and over HTTP.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import urllib.parse
from pathlib import Path

import pytest
from PIL import Image

from studio.config import load_settings
from studio.ui.testing import bomb_png, free_port, peak_mb, served_in_process, served_ui, ui_env

BOMB = (13000, 13000)
MAX_SHOWN = 299


def assert_one_line(message: str, *fields: str) -> None:
    """What a user may see: one line, under 300 characters, no reprs or tracebacks, naming one of `fields`."""
    assert "\n" not in message.strip() and len(message) <= MAX_SHOWN, message
    assert " at 0x" not in message and "Traceback" not in message and "upstream Gradio app" not in message, message
    if fields:
        assert any(f in message for f in fields), (fields, message)


# ----- units: messages, the artifact shelf, API arguments -----

def test_reprs_and_long_messages_never_reach_users() -> None:
    import io

    import gradio as gr

    from studio.errors import InputError
    from studio.ui.jobs import ui_errors

    @ui_errors
    def handler(kind: str) -> None:
        if kind == "repr":
            raise OSError(f"cannot identify image file {io.BytesIO()!r}")
        if kind == "pil":
            raise TypeError(f"bad value {Image.new('L', (1, 1))!r}")
        if kind == "long":
            raise InputError("<&>" * 400)
        raise RecursionError("maximum recursion depth exceeded")

    for kind in ("repr", "pil", "long", "deep"):
        with pytest.raises(gr.Error) as info:
            handler(kind)
        assert_one_line(info.value.message)
    with pytest.raises(gr.Error) as info:
        handler("long")
    assert info.value.message.startswith("&lt;&amp;&gt;") and info.value.message.endswith("…")


def test_the_shelf_serves_only_copies_streamed_from_storage(tmp_path) -> None:
    """The shelf writes the bytes it is given (read from storage by the record's key) under a tagged folder; it never
    takes a path, so no store file (the job database, another job's folder) can be turned into a served copy."""
    from studio.ui.artifacts import ArtifactShelf

    buf = io.BytesIO()
    Image.new("L", (4, 4), 7).save(buf, "PNG")
    png = buf.getvalue()
    reads: list[str] = []

    def read(data: bytes = png) -> bytes:
        reads.append("read")
        return data

    shelf = ArtifactShelf(tmp_path / "shelf")
    copy = shelf.put("abc123", "grid.png", read, len(png))
    folder = shelf.folder_name("abc123")
    assert copy == str((tmp_path / "shelf" / folder / "grid.png").resolve())
    assert folder.startswith("abc123-") and len(folder) > len("abc123-") + 16  # not derivable from the id alone
    assert ArtifactShelf(tmp_path / "other").folder_name("abc123") != folder  # each shelf has its key
    assert not any(p.name.endswith(".key") for p in (tmp_path / "shelf").rglob("*"))  # the key is never served
    assert Path(copy).read_bytes() == png and not Path(copy).is_symlink()
    assert shelf.put("abc123", "grid.png", read, len(png)) == copy and reads == ["read"]  # streamed once
    for job_id, name in [("..", "jobs.sqlite"), ("abc123", "../jobs.sqlite"), ("abc123", ".hidden"),
                         ("a/b", "grid.png"), ("abc123", "a/b.png"), ("", "grid.png"), ("abc123", "")]:
        assert shelf.put(job_id, name, read) is None, (job_id, name)
    assert reads == ["read"]  # a refused reference reads nothing
    assert sorted(p.name for p in (tmp_path / "shelf").rglob("*")) == [folder, "grid.png"]

    small = ArtifactShelf(tmp_path / "small", keep_jobs=2)  # copies of the latest jobs only
    for i, job_id in enumerate(("j1", "j2", "j3")):
        assert small.put(job_id, "grid.png", lambda i=i: bytes([i]) * 10)
        os.utime(tmp_path / "small" / small.folder_name(job_id), (1000 + i, 1000 + i))
    assert sorted(p.name for p in (tmp_path / "small").iterdir()) == sorted(small.folder_name(j) for j in ("j2", "j3"))


def test_launch_serves_the_shelf_and_blocks_the_store(tmp_path) -> None:
    from studio.ui import launch_kwargs
    from studio.ui.artifacts import shelf_root

    settings = load_settings({"STUDIO_HOME": str(tmp_path / "home")})
    kwargs = launch_kwargs(settings, "127.0.0.1", 7861)
    assert kwargs["allowed_paths"] == [str(shelf_root(settings))]
    assert kwargs["blocked_paths"] == [str(settings.store_path)]
    inside = load_settings({"STUDIO_HOME": str(tmp_path / "home"), "STUDIO_STORE_DIR": str(tmp_path / "home")})
    assert inside.store_path not in shelf_root(inside).parents  # a store holding the cache: the shelf moves out


def upward_imports(package: Path) -> list[str]:
    """Imports that go up a layer in the `studio` package at `package` (core, then queue, then CLI and UI): the UI
    importing the CLI, the queue importing a front end, or the core (studio/*.py, studio/ops) importing the queue or
    a front end. Read with ast, so `studio.queue.client` is no CLI import."""
    import ast

    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith("cli/") or rel == "__main__.py":
            continue
        forbidden = ("studio.cli",) if rel.startswith("ui/") else ("studio.cli", "studio.ui") \
            if rel.startswith("queue/") else ("studio.cli", "studio.ui", "studio.queue")
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{rel}:{node.lineno} imports {n}" for n in names
                      if any(n == f or n.startswith(f + ".") for f in forbidden)]
    return found


def test_imports_only_go_down_to_the_core() -> None:
    import studio

    assert upward_imports(Path(studio.__file__).parent) == []


MALFORMED_SUBMITS = [
    ("[1, 2]", 5, "spec_json"), ("5", 5, "spec_json"), ("null", 5, "spec_json"), ('"sample"', 5, "spec_json"),
    ("[" * 100_000 + "]" * 100_000, 5, "spec_json"), ('{"a": ' * 40 + "1" + "}" * 40, 5, "spec_json"),
    ("9" * 5000, 5, "spec_json"), ('{"op": "sample", "seed": ' + "9" * 5000 + "}", 5, "spec_json"),
    ('{"op": "sample", "temperature": NaN}', 5, "spec_json"), ("{not json", 5, "spec_json"), ("", 5, "spec_json"),
    ([1, 2], 5, "spec_json"), (7, 5, "spec_json"), (None, 5, "spec_json"),
    ('{"op": "sample", "backend": "toy"}', "high", "priority"), ('{"op": "sample", "backend": "toy"}', 10**30,
                                                                 "priority"),
    ('{"op": "sample", "backend": "toy"}', True, "priority"), ('{"op": "sample", "backend": "toy"}', -1, "priority"),
    ('{"op": "sample", "backend": "toy"}', 2.5, "priority"), ('{"op": "sample", "backend": "toy"}', [5], "priority"),
    ('{"op": "nope", "backend": "toy"}', 5, "spec_json"), ('{"op": "sample", "backend": "missing"}', 5, "spec_json"),
    ('{"op": "sample", "backend": "toy", "n": "many"}', 5, "spec_json"),
]


@pytest.fixture
def api_handlers(tmp_path):
    """The /submit, /status and /jobs handlers of a built page on a real client (real Redis, no worker)."""
    from studio.queue.testing import QueueHarness
    from studio.ui.app import build_app

    harness = QueueHarness(tmp_path, broker_url="redis://127.0.0.1:6379/0", plugins="toy")
    try:
        with harness.active():
            client = harness.client()
            demo = build_app(client, harness.settings)
            fns = {f.api_name: f.fn for f in demo.fns.values() if f.api_name in ("submit", "status", "jobs")}
            yield fns, client
            client.close()
    finally:
        harness.close()


@pytest.mark.integration
def test_submit_answers_malformed_arguments_in_one_line(api_handlers) -> None:
    import gradio as gr

    fns, client = api_handlers
    for spec_json, priority, field in MALFORMED_SUBMITS:
        with pytest.raises(gr.Error) as info:
            fns["submit"](spec_json, priority)
        assert_one_line(info.value.message, field)
    good = fns["submit"]('{"op": "sample", "backend": "toy", "n": 1}', None)  # None: the default priority
    assert client.status(good)["priority"] == 5
    for bad in (None, 5, ["x"], {"id": "x"}, "../../etc", "x" * 500, ""):
        with pytest.raises(gr.Error) as info:
            fns["status"](bad)
        assert_one_line(info.value.message, "job_id")
    for state, limit, field in (("RUNNING", None, None), ("nope", 5, "state"), (["x"], 5, "state"),
                                ("", "many", "limit"), ("", 10**40, "limit"), ("", -3, "limit")):
        if field is None:
            assert isinstance(fns["jobs"](state, limit), list)
            continue
        with pytest.raises(gr.Error) as info:
            fns["jobs"](state, limit)
        assert_one_line(info.value.message, field)


@pytest.mark.integration
def test_submit_fuzz(api_handlers) -> None:
    """200 generated argument pairs through the /submit handler: a job id or one clean line naming the field."""
    import gradio as gr
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    fns, _ = api_handlers
    scalars = st.none() | st.booleans() | st.integers() | st.integers(min_value=10**18, max_value=10**400) \
        | st.floats() | st.text(max_size=20)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
    specs = st.fixed_dictionaries({"op": st.sampled_from(["sample", "interpolate", "edit", "x"]),
                                   "backend": st.sampled_from(["toy", "nope"])},
                                  optional={"n": values, "seed": values, "options": values, "image": values,
                                            "start": values, "temperature": values})
    spec_json = (specs.map(lambda s: json.dumps(s, default=str)) | values.map(lambda v: json.dumps(v, default=str))
                 | values | st.text(max_size=40))

    @settings(max_examples=200, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(spec_json, st.integers(0, 9) | scalars)
    def check(spec, priority) -> None:
        try:
            job_id = fns["submit"](spec, priority)
        except gr.Error as exc:
            assert_one_line(exc.message, "spec_json", "priority")
        else:
            assert isinstance(job_id, str) and job_id

    check()


# ----- a served UI: uploads are checked before decoding, and only artifacts are served -----

@pytest.mark.integration
@pytest.mark.slow
def test_an_upload_is_checked_from_its_header_before_it_is_decoded(tmp_path) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from studio.queue.testing import install_toy_plugin

    plugins = install_toy_plugin(tmp_path / "plugins")
    env = ui_env(tmp_path, plugins, plugins="toy", broker_url="redis://127.0.0.1:6379/0",
                 queue_prefix=f"uih{os.getpid()}")
    with served_ui(env, free_port()) as ui:  # raises unless the UI printed its URL
        api = Client(ui.url, verbose=False)
        small = tmp_path / "small.png"
        Image.new("L", (40, 40), 9).save(small)
        bomb = bomb_png(tmp_path / "bomb.png", *BOMB)
        assert bomb.stat().st_size < 200_000
        with pytest.raises(AppError):  # warm up the upload path (then an unknown backend: refused at submit)
            api.predict(backend="missing", source="Upload", upload=handle_file(str(small)), bits=6,
                        api_name="/compress")
        before = peak_mb(ui.pid)

        refusals = []
        for endpoint, kwargs in (
                ("/compress", {"source": "Upload", "upload": handle_file(str(bomb))}),
                ("/edit", {"vector": "v", "source_kind": "Image", "image": handle_file(str(bomb))}),
                ("/interpolate", {"start_kind": "Image", "start_image": handle_file(str(bomb))}),
                ("/compress", {"source": "Draw", "sketch": {"background": None, "layers": [],
                                                            "composite": handle_file(str(bomb))}})):
            with pytest.raises(AppError) as info:
                api.predict(backend="missing", **kwargs, api_name=endpoint)
            refusals.append(str(info.value))
        after = peak_mb(ui.pid)
        # 13000x13000 grey is 169 MB decoded (and Gradio's RGB conversion made it ~800 MB): nothing like it ran
        assert after - before < 100, f"peak memory grew {after - before:.0f} MB (from {before:.0f} MB)"
        for message, field in zip(refusals, ("upload", "image", "start_image", "sketch"), strict=True):
            assert_one_line(message, field)
            assert "13000x13000 pixels; the limit is" in message, message

        junk = tmp_path / "junk.png"
        junk.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        bad_inputs = [({"source": "Upload", "upload": handle_file(str(junk))}, "upload", "not a readable image"),
                      ({"source": "Upload", "upload": "hello"}, "upload", "uploaded to this app"),
                      ({"source": "Dataset", "index": "seven"}, "index", "expected a number")]
        for kwargs, field, reason in bad_inputs:
            with pytest.raises(AppError) as info:
                api.predict(backend="missing", **kwargs, api_name="/compress")
            assert_one_line(str(info.value), field)
            assert reason in str(info.value)
        for kwargs, field in (({"n": 10**30}, "n"), ({"n": 10**400}, "n"), ({"seed": "abc"}, "seed"),
                              ({"temperature": None}, "temperature"), ({"options_json": ["x"]}, "options_json"),
                              ({"options_json": "[" * 50_000}, "options_json"), ({"backend": ["x"]}, "backend")):
            with pytest.raises(AppError) as info:
                api.predict(**{"backend": "missing", **kwargs}, api_name="/generate")
            assert_one_line(str(info.value), field)
        # a server path the client never uploaded (gradio_client would upload a local file: send raw JSON)
        foreign = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
        message = _raw_call(ui.url.rstrip("/"), "compress",
                            ["missing", None, "", "", 0, 0, "", "Upload", "mnist", "test", 0, foreign, None, 6])
        assert_one_line(message, "upload")
        assert "not uploaded to this app" in message and "root:" not in message


def _raw_call(url: str, api_name: str, data: list) -> str:
    """Call a named endpoint over plain HTTP with raw JSON `data`; returns the error message it answers."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as http:
        event = http.post(f"/gradio_api/call/{api_name}", json={"data": data}).json()["event_id"]
        text = http.get(f"/gradio_api/call/{api_name}/{event}").text
    assert "event: error" in text, text
    payload = text.split("event: error", 1)[1].split("data:", 1)[1].strip().splitlines()[0]
    return str(json.loads(payload))


def _get(url: str, path: str) -> tuple[int, bytes]:
    """GET a raw path (no client-side normalisation of `..`)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _file_url(path: str | Path) -> str:
    return "/gradio_api/file=" + urllib.parse.quote(str(path), safe="/")


@pytest.mark.integration
@pytest.mark.slow
def test_only_artifacts_are_served(tmp_path) -> None:
    from gradio.utils import get_upload_folder
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from studio.queue.testing import QueueHarness
    from studio.record import read_record

    harness = QueueHarness(tmp_path, broker_url="redis://127.0.0.1:6379/0", plugins="toy")
    try:
        with harness.active(), served_in_process(harness) as (_, url, client):
            api = Client(url, verbose=False)
            gallery, status, summary = api.predict(backend="toy", seed=3, n=2, api_name="/generate")
            job_id = summary["job_id"]
            assert len(gallery) == 2 and read_record(gallery[0]["image"])["item"]["seed"] == 3  # still shown

            store = harness.settings.store_path
            listed = harness.client().result(job_id)["artifacts"]
            stored = next(a["key"] for a in listed if a["name"] == "sample_000.png")
            artifact = store / stored  # jobs/<id>/<attempt>/sample_000.png in the store folder (local storage)
            assert (store / "jobs.sqlite").is_file() and artifact.is_file()
            for path in (store / "jobs.sqlite", artifact, store / "jobs", tmp_path / "worker-0.log"):
                code, body = _get(url, _file_url(path))  # the store itself: never served
                assert code in (403, 404), (path, code)
                assert b"SQLite format" not in body

            from studio.ui.artifacts import shelf_root

            shelf = shelf_root(harness.settings)
            from studio.ui.artifacts import ArtifactShelf

            served = shelf / ArtifactShelf.for_settings(harness.settings).folder_name(job_id) / "sample_000.png"
            code, _ = _get(url, _file_url(shelf / job_id / "sample_000.png"))  # the bare job id: no file
            assert code in (403, 404)
            code, body = _get(url, _file_url(served))  # a copy, by job id and name
            assert code == 200 and body == artifact.read_bytes()

            (shelf / "evil").mkdir(exist_ok=True)
            (shelf / "evil" / "db.png").symlink_to(store / "jobs.sqlite")
            sneaky = Path(get_upload_folder()) / f"studio-test-{os.getpid()}.png"
            sneaky.parent.mkdir(parents=True, exist_ok=True)
            sneaky.unlink(missing_ok=True)
            sneaky.symlink_to(store / "jobs.sqlite")
            try:
                for path in (f"{shelf}/../../store/jobs.sqlite", f"{shelf}/{job_id}/../../../store/jobs.sqlite",
                             shelf / "evil" / "db.png", sneaky):
                    code, body = _get(url, _file_url(path))
                    assert code in (403, 404), (path, code)
                    assert b"SQLite format" not in body
            finally:
                sneaky.unlink(missing_ok=True)

            # a few malformed /submit calls over HTTP: one line naming the field
            for spec_json, priority, field in (("[1]", 5, "spec_json"), ('{"a":' * 50 + "1" + "}" * 50, 5,
                                                                         "spec_json"),
                                               ('{"op": "sample", "backend": "toy"}', "urgent", "priority"),
                                               ({"op": "sample", "backend": "toy", "n": 10**30}, 5, "spec_json")):
                with pytest.raises(AppError) as info:
                    api.predict(spec_json=spec_json, priority=priority, api_name="/submit")
                assert_one_line(str(info.value), field)
            queued = api.predict(spec_json='{"op": "sample", "backend": "toy", "n": 1}', priority=None,
                                 api_name="/submit")
            assert client.wait(queued, timeout=60)["state"] == "SUCCEEDED"
    finally:
        harness.close()
