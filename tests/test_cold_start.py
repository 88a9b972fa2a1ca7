"""Cold starts: UMAP's numba code cached under STUDIO_HOME and loaded (not compiled) by a new process; a worker that
preloads SD's default model before its first job and warms UMAP in the background. Real processes throughout:
numba's own compile events tell a compilation from a cache load, and the worker's log and advertisement tell
when a model loaded (never a wall-clock threshold)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# In a child: run what a projection runs (studio.ops.umap_cache.warm: the nearest-neighbour descent, the fuzzy
# graph and the layout), recording numba's compilations; print them and the cache hits of umap's layout kernel.
PROBE = """
import json, sys
from numba.core import event
from studio.config import load_settings
from studio.ops import umap_cache
compiled = []
class Listener(event.Listener):
    def on_start(self, ev):
        d = ev.data["dispatcher"]
        compiled.append(f"{d.py_func.__module__}.{d.py_func.__qualname__}")
    def on_end(self, ev):
        pass
event.register("numba:compile", Listener())
umap_cache.warm(load_settings())
import umap.layouts as layouts
kernel = layouts._nb_optimize_layout_euclidean_single_epoch
print(json.dumps({"compiled": compiled, "hits": sum(kernel._cache_hits.values()),
                  "cache": str(umap_cache._state.get("umap"))}))
"""


def _probe(env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ours(names: list[str]) -> list[str]:
    return [n for n in names if n.split(".")[0] in ("umap", "pynndescent")]


@pytest.fixture(scope="module")
def numba_home(studio_home: Path) -> Path:
    """The session's STUDIO_HOME with UMAP's compiled code in its cache (compiled once per session: test_explore's
    UMAP projection, run in-process, reuses it)."""
    env = {**os.environ, "STUDIO_HOME": str(studio_home), "OMP_NUM_THREADS": "1"}
    env.pop("NUMBA_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "studio.ops.umap_cache"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return studio_home


@pytest.mark.integration
@pytest.mark.slow
def test_a_new_process_loads_umaps_compiled_code_from_studio_home(numba_home):
    from studio.config import load_settings
    from studio.ops.umap_cache import is_warm

    cache = load_settings({"STUDIO_HOME": str(numba_home)}).numba_cache_path
    assert cache == numba_home / "cache" / "numba" and is_warm(cache)
    indexed = {p.name.split("-")[0] for p in cache.rglob("*.nbi")}
    # umap's own functions, which umap does not declare cache=True, are on disk too
    assert {"layouts._optimize_layout_euclidean_single_epoch", "umap_.smooth_knn_dist",
            "umap_.compute_membership_strengths"} <= indexed, sorted(indexed)
    env = {**os.environ, "STUDIO_HOME": str(numba_home), "OMP_NUM_THREADS": "1"}
    env.pop("NUMBA_CACHE_DIR", None)
    found = _probe(env)
    assert found["cache"] == str(cache) and found["hits"] >= 1
    assert _ours(found["compiled"]) == [], found["compiled"]  # nothing of umap's or pynndescent's compiled again


@pytest.mark.integration
@pytest.mark.slow
def test_an_unwritable_cache_folder_only_costs_compilation(tmp_path):
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "numba").write_text("a file where the cache folder should be")
    env = {**os.environ, "STUDIO_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("NUMBA_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "studio", "run", "project", "--backend", "vae", "--dataset", "digits",
                           "--method", "umap", "--limit", "60", "--out", str(tmp_path / "out"), "--json"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["method"] == "umap" and (tmp_path / "out" / "plot.png").is_file()
    assert (home / "cache" / "numba").is_file()  # left alone


def test_configure_refuses_an_unwritable_folder_and_respects_numba_cache_dir(tmp_path, monkeypatch):
    from studio.config import load_settings
    from studio.ops.umap_cache import configure

    settings = load_settings({"STUDIO_HOME": str(tmp_path / "home")})
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    numba_config = sys.modules.get("numba.core.config")
    if numba_config is not None:  # configure() sets it too when numba is loaded: restored afterwards
        monkeypatch.setattr(numba_config, "CACHE_DIR", numba_config.CACHE_DIR)
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(blocked / "numba"))  # under a file: cannot be made
    assert configure(settings) is None
    own = tmp_path / "own"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(own))  # a user's own choice wins over STUDIO_HOME
    assert configure(settings) == own and own.is_dir()
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert configure(settings) == settings.numba_cache_path and os.environ["NUMBA_CACHE_DIR"] == str(
        settings.numba_cache_path)


# ----- the worker -----

def _wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001 - a callable
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _loads(log: str, backend: str) -> list[str]:
    return [line for line in log.splitlines() if f"loaded {backend}/" in line]


@pytest.mark.integration
@pytest.mark.slow
def test_a_worker_preloads_sds_default_model_before_its_first_job(tmp_path, numba_home):
    from studio.queue.testing import QueueHarness

    harness = QueueHarness(tmp_path / "queue", plugins="toy,sd", preload="sd,umap")
    fresh_cache = tmp_path / "numba"  # UMAP's code, not yet marked warm: the worker's warm-up loads and marks it
    shutil.copytree(numba_home / "cache" / "numba", fresh_cache)
    for marker in fresh_cache.glob("warm-*.ok"):
        marker.unlink()
    try:
        with harness.active():
            worker = harness.start_worker(env={"NUMBA_CACHE_DIR": str(fresh_cache)})
            client = harness.client()
            # the job process loads sd's default model on its own, with no job submitted yet
            _wait_for(lambda: _loads(harness.worker_log(worker), "sd"), 300, "the preload")
            preload = _loads(harness.worker_log(worker), "sd")
            assert len(preload) == 1 and "sd/mnist-fashion" in preload[0] and "(for preload)" in preload[0], preload
            advertised = client.workers()[0]
            assert advertised["preload"] == ["sd/mnist-fashion", "umap"]
            # a toy job runs at once meanwhile, and the first sd job (naming no model) reuses the preloaded one
            toy = client.wait(client.submit({"op": "sample", "backend": "toy", "n": 1}), timeout=120)
            sd = client.wait(client.submit({"op": "sample", "backend": "sd", "n": 1, "seed": 3,
                                            "options": {"steps": 2}}), timeout=300)
            named = client.wait(client.submit({"op": "sample", "backend": "sd", "model": "mnist-fashion", "n": 1,
                                               "options": {"steps": 2}}), timeout=300)
            assert (toy["state"], sd["state"], named["state"]) == ("SUCCEEDED",) * 3, (toy, sd, named)
            assert _loads(harness.worker_log(worker), "sd") == preload  # no second load of the model
            # UMAP's warm-up ran beside it, in the background, and marked the cache
            _wait_for(lambda: list(fresh_cache.glob("warm-*.ok")), 300, "the UMAP warm-up")
    finally:
        harness.close()


@pytest.mark.integration
@pytest.mark.slow
def test_without_a_job_process_the_worker_advertises_the_preloaded_model(tmp_path):
    from studio.queue.testing import QueueHarness

    harness = QueueHarness(tmp_path / "queue", plugins="toy,sd", preload="sd", job_process=0)
    try:
        with harness.active():
            harness.start_worker()
            client = harness.client()

            def warm() -> list:
                return [f"{m['backend']}/{m['model']}" for m in client.workers()[0].get("loaded", [])]

            _wait_for(lambda: warm() == ["sd/mnist-fashion"], 300, "the advertised preload")
            assert client.jobs() == []  # before any job
    finally:
        harness.close()


def test_preload_plans_follow_studio_preload_and_what_the_worker_serves(monkeypatch):
    from studio.config import load_settings
    from studio.queue.warmup import DEFAULT_PRELOAD, PRELOAD_ENV, plan_for

    settings = load_settings()
    monkeypatch.delenv(PRELOAD_ENV, raising=False)
    assert DEFAULT_PRELOAD == "sd,umap"
    default = plan_for(settings, ["gan", "sd", "vae"])
    assert default.models == (("sd", "mnist-fashion"),) and default.defaults == {"sd": "mnist-fashion"}
    assert default.umap
    assert plan_for(settings, ["vae"]).models == ()  # sd not served here: nothing to preload
    chosen = plan_for(settings, ["sd", "vae"], "vae:mnist, sd")
    assert chosen.models == (("vae", "mnist"), ("sd", "mnist-fashion")) and not chosen.umap
    monkeypatch.setenv(PRELOAD_ENV, "none")
    assert plan_for(settings, ["sd"]) == plan_for(settings, ["sd"], "")
    assert plan_for(settings, ["sd"]).models == () and not plan_for(settings, ["sd"]).umap
