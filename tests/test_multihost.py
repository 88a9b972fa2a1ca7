"""Beyond one machine: a client and workers that share no folder, only the broker, database and storage URLs.

Each worker runs with its own STUDIO_HOME inside its own mount namespace (`unshare -m`), where the client's home
and every other worker's home are covered by an empty tmpfs: a worker that read another machine's folder would find
nothing there. The records live on PostgreSQL (127.0.0.1:5432, a fresh database) and the artifacts, vectors and
weights on a real S3 server (moto), exactly as a GPU machine elsewhere would see them.
"""

from __future__ import annotations

import io
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.queue.testing import QueueHarness

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS_URL = "redis://127.0.0.1:6379/12"


def _isolated(hidden: list[Path]) -> list[str]:
    """A wrapper that runs the worker in a new mount namespace with `hidden` folders covered by empty tmpfs."""
    mounts = " && ".join(f"mount -t tmpfs -o size=1m,mode=0755 none {shlex.quote(str(p))}" for p in hidden)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh"]


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).copy()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the multi-host test")
    root = tmp_path_factory.mktemp("multihost")
    harness = QueueHarness(root, broker_url=REDIS_URL, plugins="toy,vae", stack="server", lease_s=3)
    homes = {name: root / f"{name}-home" for name in ("w1", "w2", "w3")}
    for home in homes.values():
        home.mkdir()
    client_home = Path(harness.env["STUDIO_HOME"])
    client_home.mkdir(parents=True, exist_ok=True)
    harness.homes = homes

    def start(name: str):
        others = [client_home] + [h for n, h in homes.items() if n != name]
        return harness.start_worker(env={"STUDIO_HOME": str(homes[name])}, wrapper=_isolated(others))

    harness.start = start
    try:
        with harness.active():
            harness.w1 = start("w1")
            harness.w2 = start("w2")
            yield harness
    finally:
        harness.close()


def test_workers_see_no_other_home_and_keep_only_caches(hosts: QueueHarness) -> None:
    client = hosts.client()
    ids = [client.submit({"op": "sample", "backend": "toy", "n": 2, "seed": s, "options": {"delay_ms": 20}})
           for s in range(6)]
    done = [client.wait(j, timeout=60) for j in ids]
    assert {d["state"] for d in done} == {"SUCCEEDED"}
    ran_on = {d["worker"].split(":")[1] for d in done}
    assert ran_on <= {str(hosts.w1.pid), str(hosts.w2.pid)}
    for name in ("w1", "w2"):  # no records, no artifacts on a worker's disk: only what it caches
        home = hosts.homes[name]
        assert not (home / "store").exists(), sorted(str(p) for p in home.rglob("*"))
    client_store = Path(hosts.settings.store_path)
    assert not (client_store / "jobs").exists()  # artifacts are in S3, not in anybody's folder
    # each worker's namespace really hides the client's home and the other worker's: a file there is not visible
    import subprocess

    (Path(hosts.env["STUDIO_HOME"]) / "secret.txt").write_text("client only")
    (hosts.homes["w2"] / "w2-only.txt").write_text("w2 only")
    for folder in (hosts.env["STUDIO_HOME"], str(hosts.homes["w2"])):
        seen = subprocess.run(["nsenter", "-t", str(hosts.w1.pid), "-m", "ls", "-A", folder],
                              capture_output=True, text=True, check=True).stdout.split()
        assert seen == [], (folder, seen)
    (hosts.homes["w1"] / "w1-own.txt").write_text("w1")
    mine = subprocess.run(["nsenter", "-t", str(hosts.w1.pid), "-m", "ls", "-A", str(hosts.homes["w1"])],
                          capture_output=True, text=True, check=True).stdout.split()
    assert "w1-own.txt" in mine  # its own home is there
    client.close()


def test_results_download_on_any_machine_with_identical_pixels(hosts: QueueHarness, tmp_path: Path) -> None:
    from studio.executor import execute

    client = hosts.client()
    spec = {"op": "sample", "backend": "vae", "n": 3, "seed": 11}
    job_id = client.submit(spec)
    assert client.wait(job_id, timeout=120)["state"] == "SUCCEEDED"
    local = execute(spec)
    copied = client.copy_result(job_id, tmp_path / "out")
    assert sorted(p.name for p in copied) == sorted(a.name for a in local.artifacts)
    for artifact in local.artifacts:
        assert np.array_equal(_pixels((tmp_path / "out" / artifact.name).read_bytes()), _pixels(artifact.data))
    url = client.artifact_url(job_id, local.artifacts[0].name)
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:  # the browser's presigned URL
        assert response.read() == (tmp_path / "out" / local.artifacts[0].name).read_bytes()
    client.close()


def test_a_vector_fitted_here_is_applied_by_a_worker(hosts: QueueHarness) -> None:
    from studio.executor import execute

    fit = {"op": "fit_vector", "backend": "vae", "name": "mh-smile", "with_seeds": [1, 2, 3], "without_seeds": [4, 5]}
    execute(fit)  # in the client's process: stored in PostgreSQL + S3, nothing a worker could read from this home
    edit = {"op": "edit", "backend": "vae", "vector": "mh-smile", "source": {"seed": 9}, "strengths": [0.0, 1.5]}
    local = execute(edit)
    client = hosts.client()
    job_id = client.submit(edit)
    assert client.wait(job_id, timeout=120)["state"] == "SUCCEEDED", client.status(job_id)
    for artifact in local.artifacts:
        if artifact.name.endswith(".png"):
            assert np.array_equal(_pixels(client.artifact_bytes(job_id, artifact.name)), _pixels(artifact.data))
    client.close()


def test_a_model_trained_by_a_queued_job_samples_on_the_other_worker(hosts: QueueHarness) -> None:
    from studio.executor import execute

    client = hosts.client()
    trained = client.submit({"op": "train", "backend": "vae", "name": "mh-tiny", "dataset": "mnist", "limit": 128,
                             "epochs": 1, "options": {"batch_size": 64}})
    job = client.wait(trained, timeout=300)
    assert job["state"] == "SUCCEEDED", job
    trainer_pid = job["worker"].split(":")[1]
    trainer = hosts.w1 if str(hosts.w1.pid) == trainer_pid else hosts.w2
    other = hosts.w2 if trainer is hosts.w1 else hosts.w1
    hosts.kill_worker(trainer)  # only the other worker is left: it has never seen these weights
    spec = {"op": "sample", "backend": "vae", "model": "mh-tiny", "n": 2, "seed": 3}
    job_id = client.submit(spec)
    done = client.wait(job_id, timeout=120)
    assert done["state"] == "SUCCEEDED", done
    assert done["worker"].split(":")[1] == str(other.pid)
    sha = job["metrics"]["sha256"]
    local = execute(spec)  # the client fetches the same weights by sha256 into its own cache
    for artifact in local.artifacts:
        assert np.array_equal(_pixels(client.artifact_bytes(job_id, artifact.name)), _pixels(artifact.data))
    other_home = hosts.homes["w2" if other is hosts.w2 else "w1"]
    cached = list((other_home / "cache" / "models" / "vae").glob("mh-tiny.safetensors"))
    assert len(cached) == 1
    from studio.hashing import file_sha256

    assert file_sha256(cached[0]) == sha
    if trainer is hosts.w1:
        hosts.w1 = hosts.start("w3")
    else:
        hosts.w2 = hosts.start("w3")
    client.close()


def test_sigkilled_worker_every_job_finishes_exactly_once_with_in_process_pixels(hosts: QueueHarness) -> None:
    from studio.executor import execute

    client = hosts.client()
    specs = [{"op": "sample", "backend": "toy", "n": 4, "seed": 100 + i, "options": {"delay_ms": 60}}
             for i in range(10)]
    before = len(hosts.trace_lines())
    ids = [client.submit(s) for s in specs]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(client.status(j)["state"] == "RUNNING" for j in ids):
        time.sleep(0.02)
    running = next(client.status(j) for j in ids if client.status(j)["state"] == "RUNNING")
    pid = running["worker"].split(":")[1]
    victim = hosts.w1 if str(hosts.w1.pid) == pid else hosts.w2
    hosts.kill_worker(victim)  # SIGKILL mid-job, as if its machine died
    done = [client.wait(j, timeout=120) for j in ids]
    assert [d["state"] for d in done] == ["SUCCEEDED"] * len(ids), [(d["state"], d["error"]) for d in done]
    assert any(d["attempts"] == 2 for d in done)  # the killed job ran again elsewhere
    from studio.storage import storage_for

    storage = storage_for(hosts.settings)
    for spec, job_id in zip(specs, ids, strict=True):
        job = client.status(job_id)
        committed = sorted(a["key"] for a in job["artifacts"])
        assert len({k.rsplit("/", 1)[0] for k in committed}) == 1  # one attempt's result
        local = execute(spec)
        for artifact in local.artifacts:
            assert np.array_equal(_pixels(client.artifact_bytes(job_id, artifact.name)), _pixels(artifact.data))
        leftovers = {k.rsplit("/", 1)[0] for k, _ in storage.list(f"jobs/{job_id}/")}
        assert leftovers == {committed[0].rsplit("/", 1)[0]}  # the killed attempt uploaded nothing that stays
    runs = hosts.trace_lines()[before:]
    assert len(runs) >= len(ids)
    client.close()
