"""Weights shared by content (studio.modelstore): import, list and remove on {SQLite + folder} and {PostgreSQL + S3};
a model registered from one home is fetched, verified and sampled from another; tampered bytes are refused; the
`train` op registers a model that `sample` then uses; the CLI refuses bad input in one line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.config import Settings, load_settings
from studio.errors import InputError
from studio.executor import Runtime, execute
from studio.modelstore import (
    ModelIntegrityError,
    cache_root,
    ensure_local,
    import_model,
    list_models,
    remove_model,
    storage_key,
)
from studio.storage import storage_for
from studio.testing_services import PostgresDatabase, S3Server, postgres_available, s3_server_available

SHIPPED = Path(__file__).resolve().parents[1] / "plugins" / "studio_vae" / "weights" / "mnist.safetensors"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def servers():
    if not (postgres_available() and s3_server_available()):
        pytest.fail("the PostgreSQL server on 127.0.0.1:5432 and moto_server (moto[server]) are needed")
    with S3Server() as s3, PostgresDatabase() as pg:
        yield s3, pg
        from studio.db import shared

        shared(pg.url).dispose()


@pytest.fixture(params=["sqlite-folder", pytest.param("postgres-s3", marks=pytest.mark.integration)])
def homes(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A factory of Settings: each call is another machine (its own STUDIO_HOME) on the same records and storage."""
    if request.param == "sqlite-folder":
        shared_env = {"STUDIO_STORE_DIR": str(tmp_path / "shared-store")}
    else:
        s3, pg = request.getfixturevalue("servers")
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        shared_env = {"STUDIO_DATABASE_URL": pg.url,
                      "STUDIO_STORAGE_URL": s3.create_bucket(f"m-{uuid.uuid4().hex[:12]}") + "/studio",
                      "STUDIO_S3_ENDPOINT_URL": s3.endpoint_url}
        from studio.db import Database, models

        with Database(pg.url).write() as conn:  # the module shares one database: start each test empty
            conn.execute(models.delete())

    def make(name: str) -> Settings:
        return load_settings({"STUDIO_HOME": str(tmp_path / name), "STUDIO_DEVICE": "cpu", **shared_env})

    return make


def _weights(tmp_path: Path, name: str = "w.safetensors", flip: bool = False) -> Path:
    """A copy of the shipped VAE weights (with one metadata byte changed when `flip`: other bytes, same model)."""
    data = SHIPPED.read_bytes()
    if flip:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        header["__metadata__"]["dataset"] = "MNIST"
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        data = len(text).to_bytes(8, "little") + text + data[8 + n:]
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _pixels(result) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(a.data))) for a in result.artifacts if a.name.startswith("sample_")]


def test_import_list_remove(homes, tmp_path: Path) -> None:
    a = homes("a")
    path = _weights(tmp_path)
    row = import_model(a, "vae", path, "mine")
    assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert row["size"] == path.stat().st_size and row["source"] == "import"
    assert storage_for(a).get(storage_key(row["sha256"])) == path.read_bytes()
    assert [(m["backend"], m["name"], m["sha256"]) for m in list_models(a)] == [("vae", "mine", row["sha256"])]
    assert list_models(a, "gan") == []
    assert import_model(a, "vae", path, "mine")["sha256"] == row["sha256"]  # the same again: the same row
    with pytest.raises(InputError, match="registered already as vae model 'mine'"):
        import_model(a, "vae", path, "other-name")
    other = _weights(tmp_path, "other.safetensors", flip=True)
    with pytest.raises(InputError, match="name 'mine' is taken by other weights") as exc:
        import_model(a, "vae", other, "mine")
    assert "\n" not in str(exc.value)
    assert not storage_for(a).exists(storage_key(hashlib.sha256(other.read_bytes()).hexdigest()))
    second = import_model(a, "vae", other, "mine2")
    assert [m["name"] for m in list_models(a, "vae")] == ["mine", "mine2"]
    removed = remove_model(a, row["sha256"][:12])  # by a sha256 prefix
    assert removed["name"] == "mine" and not storage_for(a).exists(row["key"])
    remove_model(a, "mine2", backend="vae")
    assert list_models(a) == [] and not storage_for(a).exists(second["key"])
    with pytest.raises(LookupError, match="no registered model 'mine'"):
        remove_model(a, "mine")


def test_model_imported_on_one_home_is_listed_fetched_and_sampled_on_another(homes, tmp_path: Path) -> None:
    from studio.plugins_info import describe_plugins

    a, b = homes("a"), homes("b")
    path = _weights(tmp_path)
    row = import_model(a, "vae", path, "shared")
    listed = {m["name"]: m for m in next(e for e in describe_plugins(b, load_models=False)["backends"]
                                         if e["name"] == "vae")["models"]}
    assert listed["shared"]["sha256"] == row["sha256"]  # listed on B before anything is fetched
    assert not cache_root(b).exists()

    spec = {"op": "sample", "backend": "vae", "model": "shared", "n": 4, "seed": 11}
    fetched = execute(spec, Runtime(b))
    cached = cache_root(b) / "vae" / "shared.safetensors"
    assert cached.read_bytes() == path.read_bytes()

    roots = tmp_path / "roots"
    (roots / "vae").mkdir(parents=True)
    shutil.copy(path, roots / "vae" / "original.safetensors")
    local = load_settings({"STUDIO_HOME": str(tmp_path / "c"), "STUDIO_MODEL_ROOTS": str(roots),
                           "STUDIO_DEVICE": "cpu"})
    original = execute({**spec, "model": "original"}, Runtime(local))
    got, want = _pixels(fetched), _pixels(original)
    assert len(got) == 4 and all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))

    remove_model(a, "shared")  # B's stale copy goes when B next asks for it
    assert ensure_local(b, "vae", "shared") is None and not cached.exists()


def test_tampered_object_is_refused_and_nothing_is_cached(homes, tmp_path: Path) -> None:
    a, b = homes("a"), homes("b")
    row = import_model(a, "vae", _weights(tmp_path), "tampered")
    data = bytearray(storage_for(a).get(row["key"]))
    data[-1] ^= 0xFF  # one byte of a tensor: still a valid file, other weights
    storage_for(a).put(row["key"], bytes(data))
    with pytest.raises(ModelIntegrityError) as exc:
        ensure_local(b, "vae", "tampered")
    message = str(exc.value)
    assert "\n" not in message and "do not match their sha256" in message and row["sha256"][:12] in message
    folder = cache_root(b) / "vae"
    assert not folder.exists() or list(folder.iterdir()) == []
    with pytest.raises(ModelIntegrityError):  # a job refuses it the same way
        execute({"op": "sample", "backend": "vae", "model": "tampered", "n": 1}, Runtime(b))
    assert not folder.exists() or list(folder.iterdir()) == []


def _cli(home: Path, *args: str):
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
    env.update(STUDIO_HOME=str(home), STUDIO_DEVICE="cpu", STUDIO_TORCH_THREADS="1")
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_train_op_registers_a_model_that_sample_uses(tmp_path: Path) -> None:
    home = tmp_path / "home"
    trained = _cli(home, "run", "train", "--backend", "vae", "--dataset", "mnist", "--epochs", "1", "--limit", "512",
                   "--name", "tiny", "--out", str(tmp_path / "train"), "--json")
    assert trained.returncode == 0, trained.stderr
    metrics = json.loads(trained.stdout)
    assert metrics["name"] == "tiny" and len(metrics["sha256"]) == 64 and metrics["metrics"]["train_images"] == 512
    assert str(home) not in trained.stdout  # no machine folder in the result
    assert json.loads((tmp_path / "train" / "model.json").read_text())["sha256"] == metrics["sha256"]
    listed = json.loads(_cli(home, "models", "list", "--json").stdout)
    assert [(m["name"], m["sha256"], m["source"]) for m in listed] == [("tiny", metrics["sha256"], "train job")]
    assert not list((home / "cache" / "train").iterdir())  # the temp file is gone

    sampled = _cli(home, "run", "sample", "--backend", "vae", "--model", "tiny", "-n", "2", "--out",
                   str(tmp_path / "s"))
    assert sampled.returncode == 0, sampled.stderr
    record = json.loads(Image.open(tmp_path / "s" / "sample_000.png").text["latent-studio"])
    assert record["weights_sha256"] == metrics["sha256"] and record["model"] == "tiny"

    again = _cli(home, "run", "train", "--backend", "vae", "--epochs", "1", "--limit", "256", "--name", "tiny")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "'tiny' is taken" in again.stderr
    refused = _cli(home, "run", "train", "--backend", "pca", "--name", "p")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "lacks train" in refused.stderr


def test_cli_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights at all")
    good = _weights(tmp_path)
    assert _cli(home, "models", "import", "vae", str(good), "--name", "taken").returncode == 0
    cases = {
        ("import", "vae", str(tmp_path / "missing.safetensors"), "--name", "x"): "no weights file at",
        ("import", "vae", str(text), "--name", "x"): "not readable as safetensors",
        ("import", "nope", str(good), "--name", "x"): "unknown backend 'nope'",
        ("import", "vae", str(_weights(tmp_path, "o.safetensors", flip=True)), "--name", "taken"): "is taken",
        ("import", "vae", str(good), "--name", "../x"): "model name '../x' is invalid",
        ("remove", "absent"): "no registered model 'absent'",
    }
    for args, words in cases.items():
        res = _cli(home, "models", *args)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
        assert words in res.stderr, (args, res.stderr)
    listed = _cli(home, "models", "list")
    assert listed.returncode == 0 and "taken" in listed.stdout and listed.stdout.count("\n") == 1


def test_a_name_the_backend_already_lists_is_refused(homes, tmp_path: Path) -> None:
    """The shipped `mnist` VAE comes first when a job names `mnist`: registering other weights under that name would
    never run them, so the import is refused in one line."""
    settings = homes("a")
    with pytest.raises(InputError, match="already has a model 'mnist'") as err:
        import_model(settings, "vae", _weights(tmp_path, flip=True), "mnist")
    assert "\n" not in str(err.value) and list_models(settings) == []


def test_a_warm_runtime_loads_weights_registered_again_under_the_same_name(homes, tmp_path: Path) -> None:
    """A worker keeps backends warm; when `m` is removed and other weights are registered as `m`, the next job that
    names `m` runs the new weights, not the warm old ones."""
    settings = homes("a")
    first = import_model(settings, "vae", _weights(tmp_path), "again")
    runtime = Runtime(settings)
    assert runtime.get_backend("vae", "again").model.sha256 == first["sha256"]
    remove_model(settings, "again", backend="vae")
    second = import_model(settings, "vae", _weights(tmp_path, "other.safetensors", flip=True), "again")
    assert second["sha256"] != first["sha256"]
    assert runtime.get_backend("vae", "again").model.sha256 == second["sha256"]


def test_a_train_job_run_again_reports_the_model_its_first_attempt_registered(homes, tmp_path: Path) -> None:
    """A train job retried after its weights were registered (a lost lease, a failed upload of model.json) must not
    train again: other weights would clash with its own model's name."""
    settings = homes("a")
    recipe = {"dataset": "mnist", "epochs": 1, "seed": 0, "limit": 64, "options": {"batch_size": 32}}
    first = import_model(settings, "vae", _weights(tmp_path), "retried", source="train job", meta={"train": recipe})
    spec = {"op": "train", "backend": "vae", "name": "retried", **recipe}
    result = execute(spec, Runtime(settings))
    assert result.metrics["sha256"] == first["sha256"]
    other = {**spec, "seed": 1}  # another recipe under that name: refused, nothing trained
    with pytest.raises(InputError, match="is taken"):
        execute(other, Runtime(settings))
