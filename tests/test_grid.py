"""Sweeps (issue 14): the grid op (X/Y/Z plots, prompt matrix, batch count), `studio run grid`, `studio batch` with
resume, and a grid queued to a real worker whose cells replay alone."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.builtin_ops.grid import axis_from_text, prompt_matrix
from studio.errors import InputError
from studio.executor import execute
from studio.record import read_record
from studio.spec import parse_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID = {"op": "grid", "backend": "vae", "base": {"op": "sample", "n": 2},
        "x": {"param": "seed", "values": [1, 2, 3]}, "y": {"param": "temperature", "values": [0.5, 1.0]}}


def _pixels(data: bytes | Path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data) if isinstance(data, bytes) else data).convert("RGB"))


@pytest.mark.parametrize("change, words", [
    ({"x": {"param": "colour", "values": [1, 2]}}, "x: unknown param 'colour'"),
    ({"y": {"param": "temperature", "values": [0.5, -1]}}, "y axis, cell seed=1, temperature=-1: temperature"),
    ({"x": {"param": "seed", "values": [1], "matrix": "a|b"}}, "x: give exactly one of values, matrix"),
    ({"x": {"param": "temperature", "batch_count": 2}}, "x: batch_count repeats seeds"),
    ({"y": {"param": "seed", "values": [4]}}, "y: 'seed' is already the x axis"),
    ({"y": None, "z": {"param": "n", "values": [1]}}, "z: a Z axis needs a Y axis"),
    ({"base": {"op": "grid"}}, "base.op: a grid's cells cannot be grids"),
    ({"base": {"op": "sample", "n": 30}}, "this grid job would make 180 images; the limit is 64"),
])
def test_every_cell_is_validated_at_submit_in_one_line(settings, change, words) -> None:
    spec = {k: v for k, v in {**GRID, **change}.items() if v is not None}
    with pytest.raises(InputError) as exc:
        parse_spec(spec, settings)
    message = str(exc.value)
    assert words in message and "\n" not in message and len(message) < 300, message


def test_prompt_matrix_and_axis_text() -> None:
    assert prompt_matrix("a cat|red|watercolour") == ["a cat", "a cat, red", "a cat, watercolour",
                                                      "a cat, red, watercolour"]
    assert len(prompt_matrix("a|b|c|d|e")) == 16
    assert axis_from_text("seed=1,2,3", "--x") == {"param": "seed", "values": [1, 2, 3]}
    assert axis_from_text("prompt=a cat, red|a dog", "--x") == {"param": "prompt", "values": ["a cat, red", "a dog"]}
    assert axis_from_text("guidance=1.5,7", "--y")["values"] == [1.5, 7]
    with pytest.raises(InputError, match="--x takes PARAM=V1,V2"):
        axis_from_text("seed", "--x")
    # as an axis of a text backend's options (sd), with a batch count on the next axis: 4 x 2 cells
    spec = parse_spec({"op": "grid", "backend": "sd", "base": {"op": "sample", "n": 1, "seed": 7},
                       "options": {"steps": 2}, "x": {"param": "prompt", "matrix": "a cat|red|watercolour"},
                       "y": {"param": "seed", "batch_count": 2}})
    cells = spec.cells()
    assert [c.spec.options["prompt"] for c in cells[:4]] == prompt_matrix("a cat|red|watercolour")
    assert [c.spec.seed for c in cells] == [7] * 4 + [8] * 4  # batch k starts at seed + k * n
    assert all(c.spec.options["steps"] == 2 for c in cells) and spec.output_count() == 8
    from studio.cli.ops import grid  # `studio run|submit grid --prompt-matrix ... --batch-count ...`

    built = grid("sd", prompt_matrix="a cat|red", batch_count=3, y="guidance=1.5,7", n=2)
    assert (built["x"], built["y"], built["z"]) == ({"param": "prompt", "matrix": "a cat|red"},
                                                    {"param": "guidance", "values": [1.5, 7]},
                                                    {"param": "seed", "batch_count": 3})
    assert built["base"] == {"op": "sample", "n": 2}


def test_a_3x2_grid_runs_in_one_job_and_each_cell_replays_alone(runtime) -> None:
    seen: list[str] = []
    result = execute(GRID, runtime, progress=lambda step, total, msg="", preview=None: seen.append(msg))
    names = [a.name for a in result.artifacts]
    assert names[-1] == "grid.png" and len([n for n in names if n.endswith("_grid.png")]) == 6
    assert {f"cell {i}/6" for i in range(1, 7)} <= {m.split(" (")[0].split(":")[0] for m in seen}
    cells = result.metrics["cells"]
    assert [(c["x"], c["y"]) for c in cells] == [(1, 0.5), (2, 0.5), (3, 0.5), (1, 1.0), (2, 1.0), (3, 1.0)]
    assert cells[4]["artifacts"] == ["c004_sample_000.png", "c004_sample_001.png", "c004_grid.png"]
    by_name = {a.name: a for a in result.artifacts}
    record = read_record(Image.open(io.BytesIO(by_name["c004_sample_001.png"].data)))
    assert record["spec"]["op"] == "sample" and record["spec"]["seed"] == 2 and record["spec"]["temperature"] == 1.0
    alone = {a.name: a for a in execute(record["spec"], runtime).artifacts}  # the cell as a normal job
    for name in ("sample_000.png", "sample_001.png", "grid.png"):
        assert np.array_equal(_pixels(alone[name].data), _pixels(by_name[f"c004_{name}"].data)), name
    assert read_record(Image.open(io.BytesIO(by_name["grid.png"].data)))["spec"]["op"] == "grid"
    grid = _pixels(by_name["grid.png"].data)
    tile = Image.open(io.BytesIO(by_name["c000_grid.png"].data))
    scale = -(-128 // tile.width)
    assert grid.shape[1] > 3 * tile.width * scale + 4 * 4 and grid.shape[0] > 2 * tile.height * scale + 3 * 4
    band = grid[:16, grid.shape[1] // 3:]  # the top labels (seed=...) are dark text on white
    left = grid[grid.shape[0] // 2:, :20]  # the left labels (temperature=...)
    assert (band < 100).any() and (band > 250).any() and (left < 100).any()


def test_a_failing_cell_fails_the_grid_naming_the_cell(runtime) -> None:
    spec = {"op": "grid", "backend": "vae", "base": {"op": "traverse", "source": {"seed": 1}, "dims": [0],
                                                     "steps": 2, "high": 3.0},
            "x": {"param": "low", "values": [-1.0, 5.0]}}
    with pytest.raises(InputError) as exc:
        execute(spec, runtime)
    assert str(exc.value).startswith("cell 2/2 (low=5.0): range must go from low to high"), exc.value


def test_studio_run_grid_writes_the_grid_and_every_cell(studio_cli, tmp_path) -> None:
    out = tmp_path / "out"
    done = studio_cli("run", "grid", "--backend", "vae", "--x", "temperature=0.5,1", "--batch-count", "2",
                      "--n", "1", "--seed", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in out.iterdir())
    assert "grid.png" in files and len([f for f in files if f.endswith("_sample_000.png")]) == 4
    record = read_record(out / "c003_sample_000.png")
    assert record["spec"]["seed"] == 4 and record["spec"]["temperature"] == 1  # batch 2 of size 1: seed 3 + 1
    bad = studio_cli("run", "grid", "--backend", "vae", "--x", "prompt=a,b", "--out", str(out))
    assert bad.returncode == 2 and "x: unknown param 'prompt'" in bad.stderr and bad.stderr.count("\n") == 1


def test_batch_resumes_after_an_interruption(settings, tmp_path, monkeypatch) -> None:
    import studio.executor
    from studio.cli.batch_cmds import PROGRESS, run_batch

    csv = tmp_path / "jobs.csv"
    csv.write_text("n,seed,temperature\n1,1,0.5\nmany,2,1\n1,3,1.0\n2,4,0.7\n")
    ran: list[int] = []
    real = studio.executor.execute

    def counting(spec, *args, **kwargs):  # noqa: ANN001, ANN202
        if spec["seed"] == 4 and not ran.count(-1):
            ran.append(-1)
            raise KeyboardInterrupt  # Ctrl+C while line 5 runs
        ran.append(spec["seed"])
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(studio.executor, "execute", counting)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch(csv, out, op="sample", backend="vae")
    assert ran == [1, 3, -1]
    states = json.loads((out / PROGRESS).read_text())["lines"]
    assert states["2"]["state"] == "done" and states["4"]["state"] == "done" and "5" not in states
    assert states["3"]["state"] == "failed" and "n: Input should be a valid integer" in states["3"]["error"]
    counts = run_batch(csv, out, op="sample", backend="vae")  # again: only the unfinished lines run
    assert ran == [1, 3, -1, 4] and counts == {"done": 1, "skipped": 2, "failed": 1}
    assert sorted(p.name for p in (out / "5").iterdir()) == ["grid.png", "sample_000.png", "sample_001.png"]
    assert read_record(out / "4" / "sample_000.png")["spec"]["temperature"] == 1.0


# ----- a real worker (toy backend): a grid queued through the UI's API and the Sweeps tab's handler -----

@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    from studio.queue.testing import QueueHarness

    with QueueHarness.running(tmp_path_factory.mktemp("grid-queue"), plugins="toy") as h:
        yield h


@pytest.fixture(scope="module")
def ui(harness):
    """The studio's page built on the harness's client (not served): its handlers called as Gradio would."""
    from studio.ui.app import build_app

    client = harness.client()
    demo = build_app(client, harness.settings)
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    yield {getattr(f.fn, "__name__", None): f.fn for f in fns}, client
    client.close()


@pytest.mark.integration
def test_the_ui_api_queues_a_grid_whose_cells_replay_alone(ui) -> None:
    handlers, client = ui
    spec = {"op": "grid", "backend": "toy", "base": {"op": "sample", "n": 2},
            "x": {"param": "seed", "values": [1, 2]}, "y": {"param": "delay_ms", "values": [0, 5]}}
    job_id = handlers["submit"](json.dumps(spec), 5)  # the `/submit` endpoint: any spec
    job = client.wait(job_id, timeout=60)
    assert job["state"] == "SUCCEEDED" and job["op"] == "grid", job.get("error")
    names = [a["name"] for a in job["artifacts"]]
    assert "grid.png" in names and len(names) == 4 * 3 + 1
    assert [c["label"] for c in job["metrics"]["cells"]] == ["seed=1, delay_ms=0", "seed=2, delay_ms=0",
                                                              "seed=1, delay_ms=5", "seed=2, delay_ms=5"]
    cell = client.artifact_path(job_id, "c003_sample_001.png")
    again = client.wait(client.replay_file(cell), timeout=60)  # the existing replay path: a plain sample job
    assert again["op"] == "sample" and again["spec"]["options"] == {"delay_ms": 5}
    assert np.array_equal(_pixels(client.artifact_bytes(again["id"], "sample_001.png")), _pixels(cell))
    with pytest.raises(Exception, match="x: unknown param 'colour'"):
        handlers["submit"](json.dumps({**spec, "x": {"param": "colour", "values": [1]}}), 5)


@pytest.mark.integration
def test_the_sweeps_tab_runs_a_grid_and_shows_it_with_its_cells(ui) -> None:
    handlers, client = ui
    seen: list[float] = []
    first, every, cells, line, listed = handlers["run_sweep"](
        "toy", None, None, None, None, None, "", None, "sample", 3, 5, "temperature", "0.5,1", "delay_ms", "0|1",
        "(none)", "", "", 2, progress=lambda fraction, desc="": seen.append(fraction))
    assert Image.open(first).format == "PNG" and every["visible"] is True and len(every["value"]) == 2
    assert len(listed) == 8 and listed[-1]["label"] == "temperature=1, delay_ms=1, seed=8"  # batch 2: seed 5 + 3
    assert [c[1] for c in cells][:2] == ["temperature=0.5, delay_ms=0, seed=5", "temperature=1, delay_ms=0, seed=5"]
    assert len(cells) == 8 and "8 cells, 24 images" in line and seen
    job = client.jobs(limit=1)[0]
    assert job["op"] == "grid" and job["spec"]["z"] == {"param": "seed", "batch_count": 2}
    assert [a["name"] for a in job["artifacts"]][-2:] == ["grid_z0.png", "grid_z1.png"]
    with pytest.raises(Exception, match="X values: give the values of seed"):
        handlers["run_sweep"]("toy", None, None, None, None, None, "", None, "sample", 3, 5, "seed", "", "(none)",
                              "", "(none)", "", "", 1)


@pytest.mark.integration
def test_batch_submit_resumes_by_following_queued_lines(harness, tmp_path, monkeypatch) -> None:
    from studio.cli import batch_cmds
    from studio.queue.client import StudioClient

    client = harness.client()
    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"op": "sample", "n": 1, "seed": 1}\n{"op": "sample", "n": 1, "seed": 2}\n')
    real_wait = StudioClient.wait
    monkeypatch.setattr(StudioClient, "wait", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # killed while following: both lines were queued
        batch_cmds.run_batch(lines, tmp_path / "out", backend="toy", submit=True)
    monkeypatch.setattr(StudioClient, "wait", real_wait)
    before = len(client.jobs(limit=500))
    assert batch_cmds.run_batch(lines, tmp_path / "out", backend="toy", submit=True) == \
        {"done": 2, "skipped": 0, "failed": 0}
    assert len(client.jobs(limit=500)) == before  # followed, never submitted again
    assert read_record(tmp_path / "out" / "2" / "sample_000.png")["spec"]["seed"] == 2
    client.close()
