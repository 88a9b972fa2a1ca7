"""The out-of-distribution check (studio.ood): scores, calibration, flags, and the warning reaching every front end.

Real parts only: the shipped MNIST VAE, the real MNIST and Fashion-MNIST test sets. The full-test-set shares are in
bench/bench_ood.py; here 200 images of each."""

from __future__ import annotations

import json

import numpy as np
import pytest

from studio import ood

pytestmark = pytest.mark.usefixtures("one_torch_thread", "check_on")


@pytest.fixture(scope="module")
def check_on():
    """The check on for this module (and the CLI processes it starts), whatever the session's environment says."""
    import os

    old = os.environ.pop(ood.SWITCH, None)
    yield
    if old is not None:
        os.environ[ood.SWITCH] = old


@pytest.fixture(scope="module")
def settings(check_on):
    from studio.config import load_settings

    return load_settings()


@pytest.fixture(scope="module")
def vae(settings):
    from studio.registry import get_backend_class

    return get_backend_class("vae").load("mnist", settings)


@pytest.fixture(scope="module")
def calibration(vae, settings) -> ood.Calibration:
    cal = ood.calibrate(vae, settings)
    assert isinstance(cal, ood.Calibration), cal
    return cal


def _test_images(name: str, settings, last: int | None = None, first: int | None = None):
    from studio.datasets import load_dataset

    x = load_dataset(name, "test", settings=settings).images
    return x[-last:] if last else x[:first]


@pytest.mark.slow
def test_the_mnist_vae_flags_fashion_and_not_mnist(vae, settings, calibration) -> None:
    assert calibration.datasets == ("mnist",) and calibration.label == "vae/mnist"
    assert len(calibration.scores) == ood.CALIBRATION_IMAGES and calibration.n_fit == ood.FIT_IMAGES
    mnist = _test_images("mnist", settings, last=200)  # held out: the calibration used the first 5000
    fashion = _test_images("fashion", settings, first=200)
    in_dist, out_dist = ood.assess(vae, mnist, settings), ood.assess(vae, fashion, settings)
    assert out_dist.share >= 0.90, out_dist.share
    assert in_dist.share <= 0.02, in_dist.share
    assert "of 200 images" in out_dist.warning()
    assert "look unlike what model vae/mnist was trained on (mnist)" in out_dist.warning()
    assert in_dist.warning() is None or "of 200 images" in in_dist.warning()


@pytest.mark.slow
def test_calibration_is_cached_by_sha256_and_deterministic(vae, settings, monkeypatch, tmp_path) -> None:
    import dataclasses
    from types import SimpleNamespace

    small = dataclasses.replace(settings, home=tmp_path)
    monkeypatch.setattr(ood, "FIT_IMAGES", 64)
    monkeypatch.setattr(ood, "CALIBRATION_IMAGES", 128)
    monkeypatch.setattr(ood, "_memory", {})
    first = ood.calibrate(vae, small)
    files = list((tmp_path / "cache" / "ood").glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith(f"vae-{vae.model.sha256[:16]}-")
    monkeypatch.setattr(ood, "_memory", {})
    cached = ood.calibrate(vae, small)  # read back from the file
    files[0].unlink()
    monkeypatch.setattr(ood, "_memory", {})
    again = ood.calibrate(vae, small)  # computed afresh: the same images in the same order give the same numbers
    assert cached.threshold == first.threshold == again.threshold
    assert np.array_equal(first.scores, again.scores) and np.array_equal(first.scale, again.scale)
    other = SimpleNamespace(name="vae", model=SimpleNamespace(sha256="0" * 64))  # other weights: another file
    assert ood.cache_file(small, ood._key(other, (1, 28, 28), ("mnist",))).name != files[0].name


def test_a_model_that_does_not_say_its_dataset_gets_no_flag_and_says_so(settings) -> None:
    import torch
    from toys import toy_backend

    check = ood.assess(toy_backend(), torch.zeros(2, 1, 8, 8), settings)
    assert check.calibration is None and check.share is None and check.flags is None
    assert "does not say which dataset it was trained on" in check.reason
    metrics: dict = {}
    ood.record(metrics, check)
    assert metrics["ood_share"] is None and metrics["ood"]["calibrated"] is False
    assert metrics["notes"] == [f"no out-of-distribution check: {check.reason}"] and "warnings" not in metrics


def test_the_switch_turns_the_check_off_and_results_say_so(vae, settings, monkeypatch) -> None:
    monkeypatch.setenv(ood.SWITCH, "off")
    check = ood.assess(vae, _test_images("fashion", settings, first=2), settings)
    assert check.share is None and check.reason == f"the check is switched off ({ood.SWITCH}=off)"


def test_training_dataset_names() -> None:
    assert ood.dataset_parts("mnist") == ("mnist",)
    assert ood.dataset_parts("mnist-fashion") == ("mnist", "fashion")  # the sd recipe's captioned union
    assert ood.dataset_parts("folder:/data/cats") is None and ood.dataset_parts("imagenet") is None


def test_per_image_entries_are_bounded_and_flagged_ones_come_first(calibration) -> None:
    scores = np.concatenate([np.zeros(100), [calibration.threshold * 2]])
    check = ood.Assessment("vae/mnist", calibration, "", scores, tuple(f"x[{i}]" for i in range(101)))
    m = check.metrics(max_listed=10)
    assert m["n"] == 101 and m["flagged"] == 1 and m["images_listed"] == 10
    assert {"image": "x[100]", "score": round(calibration.threshold * 2, 5), "percentile": 100.0,
            "flagged": True} in m["images"]


@pytest.mark.slow
def test_roundtrip_json_carries_ood_share_and_the_cli_warns(calibration, studio_cli, tmp_path, settings) -> None:
    from studio import images as imgs

    png = tmp_path / "shirt.png"
    imgs.to_pil(_test_images("fashion", settings, first=1))[0].save(png)
    done = studio_cli("run", "roundtrip", "-b", "vae", "--model", "mnist", "--image", str(png), "--json",
                      "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert metrics["ood_share"] == 1.0 and metrics["ood"]["images"][0]["flagged"] is True
    warning = "warning: this image looks unlike what model vae/mnist was trained on (mnist)"
    assert warning in done.stderr
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())  # the job's record carries it too
    assert record["ood_share"] == 1.0 and record["warnings"][0].startswith("this image looks unlike")


def test_an_mnist_digit_round_trips_without_a_warning(calibration) -> None:
    from studio.executor import execute

    result = execute({"op": "roundtrip", "backend": "vae", "model": "mnist",
                      "image": {"dataset": "mnist", "split": "test", "index": 9999}})
    assert result.metrics["ood_share"] == 0.0 and "warnings" not in result.metrics
    assert result.metrics["ood"]["images"] == [{"image": "the image", "flagged": False,
                                                "score": result.metrics["ood"]["images"][0]["score"],
                                                "percentile": result.metrics["ood"]["images"][0]["percentile"]}]


def _counting_vae(settings):
    """The shipped MNIST VAE through a thin subclass that records the batch size of each encode call (the encoding
    itself is the real one)."""
    from studio.contract import no_progress
    from studio.registry import get_backend_class

    class CountingVAE(get_backend_class("vae")):
        def encode(self, images, options=None, seed=0, progress=no_progress):
            self.encoded.append(len(images))
            return super().encode(images, options, seed, progress)

    backend = CountingVAE.load("mnist", settings)
    backend.encoded = []
    return backend


def _mixed_images(settings, n: int = 5):
    import torch

    return torch.cat([_test_images("mnist", settings, last=n), _test_images("fashion", settings, first=n)])


def test_a_roundtrips_unquantised_reconstructions_give_the_direct_scores(calibration, settings) -> None:
    from studio.ops.compression import roundtrip

    vae = _counting_vae(settings)
    x = _mixed_images(settings)
    res = roundtrip(vae, x, 6, batch_size=4, baselines=False)
    assert vae.encoded == [4, 4, 2]  # once per chunk
    reused = ood.assess(vae, x, settings, reconstructions=res.unquantised)
    assert vae.encoded == [4, 4, 2]  # the scores came from the round trip's own reconstructions
    direct = ood.assess(vae, x, settings)
    np.testing.assert_allclose(reused.scores, direct.scores, rtol=1e-6)
    assert np.array_equal(reused.flags, direct.flags) and direct.flags[5:].any()
    with pytest.raises(ValueError, match="do not match images"):
        ood.assess(vae, x, settings, reconstructions=res.unquantised[:3])


def test_the_roundtrip_op_encodes_its_images_once_and_scores_them_as_assess_does(calibration, settings) -> None:
    from studio.datasets import load_dataset
    from studio.executor import Runtime, execute

    vae = _counting_vae(settings)

    class OneBackend(Runtime):
        def get_backend(self, name, model):
            return vae

    result = execute({"op": "roundtrip", "backend": "vae", "model": "mnist", "dataset": "fashion", "limit": 6,
                      "bits": 6}, runtime=OneBackend(settings))
    assert vae.encoded == [6]  # the round trip's one chunk; the check encoded nothing again
    direct = ood.assess(vae, load_dataset("fashion", "test", limit=6, settings=settings).images, settings)
    listed = result.metrics["ood"]["images"]
    assert [e["image"] for e in listed] == [f"fashion[{i}]" for i in range(6)]
    assert [e["score"] for e in listed] == [round(float(s), 5) for s in direct.scores]
    assert [e["flagged"] for e in listed] == direct.flags.tolist()
    assert result.metrics["ood_share"] == direct.share


def test_image_sources_of_generating_ops_are_scored(calibration) -> None:
    from studio.executor import execute

    shirt = {"image": {"dataset": "fashion", "split": "test", "index": 0}}
    result = execute({"op": "interpolate", "backend": "vae", "model": "mnist", "start": shirt, "end": {"seed": 3},
                      "steps": 3})
    m = result.metrics
    assert m["ood"]["n"] == 1 and m["ood_share"] == 1.0 and m["ood"]["images"][0]["image"] == "the start image"
    assert len(m["warnings"]) == 1
    assert m["warnings"][0].startswith("the start image: this image looks unlike what model vae/mnist was trained on")
    seeds_only = execute({"op": "interpolate", "backend": "vae", "model": "mnist", "start": {"seed": 1},
                          "end": {"seed": 2}, "steps": 2})
    assert "ood" not in seeds_only.metrics and "warnings" not in seeds_only.metrics  # nothing was encoded


def test_the_ui_status_line_shows_the_warnings() -> None:
    from studio.ui.jobs import Finished

    warning = "this image looks unlike what model vae/mnist was trained on (mnist): expect a poor result"
    done = Finished("job9", {"op": "roundtrip"}, {"seconds": 0.5, "warnings": [warning]})
    assert done.summary() == f"⚠️ **warning:** {warning}\n\n✓ job `job9` (roundtrip) finished in 0.50 s"
    assert Finished("job9", {"op": "sample"}, {"seconds": 0.5}).summary() == "✓ job `job9` (sample) finished in 0.50 s"


def test_a_users_image_folder_is_checked(calibration, settings) -> None:
    from studio import images as imgs
    from studio.executor import execute

    folder = settings.data_root_paths[0] / "ood-shirts"
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(imgs.to_pil(_test_images("fashion", settings, first=12))):
        im.save(folder / f"{i:02d}.png")
    result = execute({"op": "project", "backend": "vae", "model": "mnist", "dataset": "folder:ood-shirts",
                      "method": "pca", "limit": 12})
    assert result.metrics["ood"]["n"] == 12 and result.metrics["ood_share"] >= 0.75
    assert "look unlike what model vae/mnist was trained on" in result.metrics["warnings"][0]
    builtin = execute({"op": "project", "backend": "vae", "model": "mnist", "dataset": "fashion", "limit": 12})
    assert "ood" not in builtin.metrics  # a built-in dataset is known: not checked


def test_the_queue_cli_shows_a_finished_jobs_warnings() -> None:
    from studio.cli.queue_cmds import describe

    warning = "this image looks unlike what model vae/mnist was trained on (mnist)"
    job = {"id": "j1", "state": "SUCCEEDED", "op": "roundtrip", "backend": "vae", "model": "mnist", "priority": 5,
           "attempts": 1, "max_attempts": 3, "created": 1.0, "started": 2.0, "finished": 3.0,
           "metrics": {"warnings": [warning]}}
    assert f"warning: {warning}" in describe(job).splitlines()
    assert "warning" not in describe({**job, "metrics": None})


@pytest.mark.slow
def test_img2img_scores_its_image_against_a_pipeline_folders_training_json(tiny_sd_models, tmp_path, monkeypatch
                                                                            ) -> None:
    """Any backend, through the contract: the tiny SD pipeline, told by its training.json that it saw MNIST."""
    import shutil

    from studio.config import load_settings
    from studio.executor import execute

    root = tmp_path / "models"
    shutil.copytree(tiny_sd_models / "sd" / "tiny", root / "sd" / "tinymnist")
    (root / "sd" / "tinymnist" / "training.json").write_text(json.dumps({"dataset": "mnist"}))
    monkeypatch.setenv("STUDIO_MODEL_ROOTS", str(root))
    monkeypatch.setattr(ood, "FIT_IMAGES", 32)  # a small calibration: this checks the plumbing, not the numbers
    monkeypatch.setattr(ood, "CALIBRATION_IMAGES", 64)
    result = execute({"op": "img2img", "backend": "sd", "model": "tinymnist", "n": 1, "options": {"steps": 2},
                      "image": {"dataset": "fashion", "split": "test", "index": 0}})
    m = result.metrics["ood"]
    assert m["calibrated"] is True and m["model"] == "sd/tinymnist" and m["trained_on"] == "mnist"
    assert m["n"] == 1 and m["calibration_images"] == 64 and m["images"][0]["image"] == "the image"
    assert result.metrics["ood_share"] == float(m["images"][0]["flagged"])
    assert list((load_settings().cache_path / "ood").glob("sd-*.npz"))


def _vae_with_costs(settings, per_call: float, per_image: float):
    """The shipped MNIST VAE through a thin subclass whose encode pays a fixed cost per call plus a cost per image
    (what a busy machine or a slow encoder adds); the encoding itself is the real one."""
    import time

    from studio.contract import no_progress
    from studio.registry import get_backend_class

    class CostlyVAE(get_backend_class("vae")):
        def encode(self, images, options=None, seed=0, progress=no_progress):
            time.sleep(per_call + per_image * len(images))
            return super().encode(images, options, seed, progress)

    return CostlyVAE.load("mnist", settings)


def test_the_budget_probe_is_not_fooled_by_a_fixed_cost_per_call(settings, monkeypatch, tmp_path) -> None:
    """A fast model whose calls carry a fixed cost is calibrated (timing 8 images alone projected 40x too much and
    skipped the shipped VAE on a busy machine), while a model slow per image is still skipped, with the reason."""
    import dataclasses

    small = dataclasses.replace(settings, home=tmp_path)
    monkeypatch.setattr(ood, "FIT_IMAGES", 1024)
    monkeypatch.setattr(ood, "CALIBRATION_IMAGES", 1024)
    monkeypatch.setattr(ood, "_memory", {})
    monkeypatch.setattr(ood, "_skipped", {})
    fast = ood.calibrate(_vae_with_costs(small, per_call=0.06, per_image=0.0), small, budget_s=8.0)
    assert isinstance(fast, ood.Calibration), fast  # 8 images alone: 0.0075 s per image, 15 s projected
    other = dataclasses.replace(settings, home=tmp_path / "other")  # no cached calibration there
    slow = ood.calibrate(_vae_with_costs(other, per_call=0.0, per_image=0.01), other, budget_s=8.0)
    assert isinstance(slow, str) and "per image" in slow and "budget 8 s" in slow
