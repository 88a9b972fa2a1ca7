"""The conformance kit catches each fault it checks for, on the one shared toy (tests/toys.py), and passes the
correct toy; checks that do not apply are SKIPs with the reason; expected failures are XFAILs; instances work."""

from __future__ import annotations

import re

import pytest
from toys import toy_backend

from studio.conformance import FAIL, PASS, SKIP, XFAIL, CheckResult, check_backend, parametrize_with_checks
from studio.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EVERYTHING = {"text": True, "img2img": True, "train": True}


def results(backend, **kwargs) -> dict[str, CheckResult]:
    return {r.name: r for r in check_backend(backend, **kwargs)}


@pytest.fixture(scope="module")
def correct() -> dict[str, CheckResult]:
    return results(toy_backend(**EVERYTHING))


def test_the_correct_toy_passes_every_check_that_applies(correct):
    assert {n: r.status for n, r in correct.items() if r.status != PASS} == {"check_undeclared_capabilities": SKIP}


@pytest.mark.parametrize("faults, failing", [
    ({"batch_dependent": True}, {"check_decode_batch_invariance": r"differs from decoding them as a batch by up to"}),
    ({"coding_std_scale": 100}, {"check_coding_statistics": r"space 'z': encoded latents have std 1\.\d+ but "
                                                             r"coding_std declares 100 "}),
    ({"coding_std_scale": 0.01}, {"check_coding_statistics": r"std 1\.\d+ but coding_std declares 0\.01 "}),
    ({"raw_errors": True}, {"check_bad_latents": r"raised a raw RuntimeError .* raise studio\.errors\.InputError",
                            "check_bad_images": r"raised a raw RuntimeError .* raise studio\.errors\.InputError"}),
    ({"text": True, "text_options": False}, {"check_text_options": r"must subclass studio\.contract\.TextOptions"}),
    ({"img2img": True, "ignores_strength": True}, {"check_img2img": r"strength 0 differs from decoding the codec"}),
    ({"train": True, "train_writes": "garbage"}, {"check_train": r"not readable as safetensors"}),
], ids=["batch_dependent", "coding_std_100x", "coding_std_0.01x", "raw_errors", "text_options", "ignores_strength",
        "train_garbage"])
def test_each_check_catches_its_fault_and_passes_the_correct_toy(faults, failing, correct):
    found = results(toy_backend(**faults))
    assert {n for n, r in found.items() if r.status == FAIL} == set(failing), found
    for name, pattern in failing.items():
        assert re.search(pattern, found[name].detail), found[name].detail
        assert "\n" not in found[name].detail.strip()
        assert correct[name].status == PASS


def test_checks_that_do_not_apply_are_skipped_with_the_reason_never_passed():
    found = results(toy_backend(encode=False))
    for name in ("check_roundtrip", "check_coding_statistics", "check_bad_images"):
        assert found[name].status == SKIP and "needs the 'encode' capability" in found[name].detail
    assert found["check_train"].status == SKIP and "'train'" in found["check_train"].detail
    assert found["check_text_options"].status == SKIP and "'text'" in found["check_text_options"].detail
    assert found["check_undeclared_capabilities"].status == PASS  # encode() is refused, as it must be
    assert found["check_decode_batch_invariance"].status == PASS


def test_plugin_check_prints_skip_lines(capsys):
    from studio.cli.local import plugin_check

    plugin_check("pca")  # raises InputError when a check fails
    out = capsys.readouterr().out
    assert re.search(r"^SKIP +check_train: needs the 'train' capability, which 'pca' does not declare$", out, re.M)
    assert re.search(r"^PASS +check_decode_batch_invariance$", out, re.M)
    assert not re.search(r"^PASS +check_(train|text_options|img2img)", out, re.M)
    with pytest.raises(InputError, match=r"1 of \d+ conformance checks failed"):  # an expected failure that passes
        plugin_check("pca", expect_fail=["check_roundtrip=known issue"])
    assert re.search(r"^FAIL +check_roundtrip: passed, but expected_failed_checks lists it \('known issue'\)",
                     capsys.readouterr().out, re.M)


def test_expected_failures_are_xfail_and_an_unexpected_pass_is_a_failure():
    expected = {"check_decode_batch_invariance": "uses batch statistics"}
    xfail = results(toy_backend(batch_dependent=True), expected_failed_checks=expected)["check_decode_batch_invariance"]
    assert xfail.status == XFAIL and xfail.detail.startswith("uses batch statistics (AssertionError: ")
    unexpected = results(toy_backend(), expected_failed_checks=expected)["check_decode_batch_invariance"]
    assert unexpected.status == FAIL and "remove it from the list" in unexpected.detail
    with pytest.raises(InputError, match="unknown checks.*check_no_such"):
        check_backend(toy_backend(), expected_failed_checks={"check_no_such": "typo"})


def test_parametrize_with_checks_takes_instances_names_models_in_ids_and_runs_expected_failures():
    def test_fn(backend, check):
        check(backend)

    expected = {"check_decode_batch_invariance": "uses batch statistics"}
    decorated = parametrize_with_checks([toy_backend(batch_dependent=True), ("vae", "mnist"), ("vae", "small")],
                                        expected_failed_checks=lambda name, model: expected if name == "toy" else {})(
        test_fn)
    params = {p.id: p for p in decorated.pytestmark[0].args[1]}
    assert {"toy:linear-check_decode_batch_invariance", "vae:mnist-check_train", "vae:small-check_roundtrip"} <= set(
        params)
    skip = params["toy:linear-check_train"].marks[0]
    assert skip.name == "skip" and "needs the 'train' capability" in skip.kwargs["reason"]
    assert "checked once per backend class, with vae:mnist" in params["vae:small-check_train"].marks[0].kwargs["reason"]
    assert not params["vae:mnist-check_train"].marks
    with pytest.raises(pytest.xfail.Exception, match="uses batch statistics"):
        decorated(*params["toy:linear-check_decode_batch_invariance"].values)
    decorated(*params["toy:linear-check_roundtrip"].values)  # a plain pass

    fixed = parametrize_with_checks([toy_backend()], expected_failed_checks=expected)(test_fn)
    (param,) = [p for p in fixed.pytestmark[0].args[1] if p.id == "toy:linear-check_decode_batch_invariance"]
    with pytest.raises(pytest.fail.Exception, match="passed, but expected_failed_checks lists it"):
        fixed(*param.values)
