"""Every installed backend passes the conformance kit (the same checks third-party plugins run)."""

from __future__ import annotations

import pytest

from studio.conformance import CHECKS, FAIL, PASS, SKIP, check_backend, parametrize_with_checks
from studio.registry import load_registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INSTALLED = sorted(load_registry().backends)
MODELS = {"vae": "mnist", "gan": "mnist", "sd": "tiny", "pca": "digits"}  # named, so test ids name the model
TARGETS: list = [(name, MODELS.get(name)) for name in INSTALLED]
if "gan" in INSTALLED:
    TARGETS.append(("gan", "faces"))
if "sd" in INSTALLED:
    TARGETS.append(("sd", "mnist-fashion"))  # the shipped text-to-image model
# The gan recipe's defaults (2000 encoder steps, 48-wide nets) take minutes; the check needs only a valid file.
TRAIN_OPTIONS = {"gan": {"encoder_steps": 10, "batch_size": 32, "ngf": 8, "ndf": 8, "mapping_width": 32},
                 "sd": {"vae_steps": 2, "batch_size": 16, "threads": 1}}


@pytest.fixture(scope="module", autouse=True)
def tiny_sd_model(studio_home):
    """The tiny random pipeline, in the default model root, is checked beside the shipped model."""
    if "sd" in INSTALLED:
        from studio_sd.tiny import build_tiny_sd

        build_tiny_sd(studio_home / "models" / "sd" / "tiny")


def test_the_built_in_backends_are_installed():
    assert {"vae", "gan", "sd", "pca"} <= set(INSTALLED)
    assert not load_registry().errors, load_registry().errors


@parametrize_with_checks(TARGETS, train_options=TRAIN_OPTIONS)
def test_backend_conforms(backend, check):
    check(backend)


def test_a_broken_backend_fails_the_checks():
    """The kit can fail: a backend that ignores its seeds and returns out-of-range images is caught, and the
    checks its capabilities do not call for are skipped, not passed."""
    import torch

    from studio.config import load_settings
    from studio.registry import get_backend_class

    base = get_backend_class("pca").load(None, load_settings())

    class Broken(type(base)):
        def decode(self, point, options=None, progress=None):
            return torch.rand(point["z"].shape[0], 1, 28, 28) * 3

    broken = Broken(base.model)
    broken.__dict__.update(base.__dict__)
    results = {r.name: r for r in check_backend(broken)}
    assert set(results) == {c.name for c in CHECKS}
    assert results["check_shapes_and_range"].status == FAIL
    assert results["check_determinism"].status == FAIL
    assert results["check_decode_batch_invariance"].status == FAIL
    assert results["check_declarations"].status == PASS
    assert results["check_train"].status == SKIP and "'train'" in results["check_train"].detail
