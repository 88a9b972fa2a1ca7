"""Conformance checks for backends: the kit third-party plugin authors run (`studio plugin check NAME`).

Checks are generated from the capabilities a backend declares (SAMPLE, ENCODE, DECODE, TRAIN, TEXT, IMG2IMG):
one that does not apply is reported as SKIP with the reason, never as PASS. In a plugin's own test suite::

    from studio.conformance import parametrize_with_checks

    @parametrize_with_checks(["mybackend", ("mybackend", "small"), loaded_backend],
                             expected_failed_checks={"check_train": "needs a GPU"})
    def test_conformance(backend, check):
        check(backend)

Targets are names, (name, model) pairs or loaded Backend instances. A check listed in `expected_failed_checks`
still runs: it is reported as XFAIL when it fails, and as a failure when it passes (remove it from the list).
Each check takes a loaded backend and raises AssertionError with a clear message when the backend breaks the
contract (see studio/contract.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from studio.contract import (
    CODEC,
    DECODE,
    ENCODE,
    IMG2IMG,
    SAMPLE,
    SEED,
    TEXT,
    TRAIN,
    Backend,
    BackendError,
    TextOptions,
)
from studio.errors import InputError, StudioError, clip

N = 3
SEEDS = [11, 12, 13]
BATCH_ATOL = 1e-4  # decoding alone vs in a batch: float noise of batched kernels is ~1e-5 on [-1, 1] images
CODING_FACTOR = 4.0  # measured coding std may differ from the declared one by at most this factor either way
TRAIN_DATASET, TRAIN_LIMIT = "digits", 64
PASS, FAIL, SKIP, XFAIL = "pass", "fail", "skip", "xfail"


@dataclass
class CheckResult:
    """One check's outcome: `status` is pass, fail, skip (does not apply; `detail` says why) or xfail."""

    name: str
    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        """Not a failure (pass, skip or xfail); read `status` to tell them apart."""
        return self.status != FAIL


@dataclass(frozen=True, eq=False)
class Check:
    """A check and the capabilities it applies to: all of `needs`, at least one of `needs_any`, and (for checks
    of what a backend must refuse) at least one of `lacks_any` left undeclared."""

    fn: Callable[..., None]
    needs: frozenset[str] = frozenset()
    needs_any: frozenset[str] = frozenset()
    lacks_any: frozenset[str] = frozenset()
    kwargs: Mapping[str, object] = field(default_factory=dict)
    expected_failure: str | None = None  # the reason, when the author expects this check to fail

    @property
    def name(self) -> str:
        return self.fn.__name__

    def __call__(self, backend: Backend) -> None:
        self.fn(backend, **self.kwargs)

    def skip_reason(self, backend_name: str, capabilities: frozenset[str]) -> str | None:
        """Why this check does not apply to a backend with these capabilities (None: it applies)."""
        missing = sorted(self.needs - capabilities)
        if missing:
            return f"needs the {_caps(missing)} capabilit{'y' if len(missing) == 1 else 'ies'}, which " \
                   f"{backend_name!r} does not declare"
        if self.needs_any and not self.needs_any & capabilities:
            return f"needs one of the {_caps(sorted(self.needs_any))} capabilities; {backend_name!r} declares none"
        if self.lacks_any and self.lacks_any <= capabilities:
            return f"{backend_name!r} declares every one of {_caps(sorted(self.lacks_any))}: nothing to refuse"
        return None


def _caps(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


# ----- shared inputs -----

def _point(backend: Backend, seeds: list[int], options=None) -> dict:
    from studio.points import random_point

    return random_point(backend, seeds, options)


def _render(backend: Backend, seeds: list[int], options=None) -> torch.Tensor:
    return backend.decode(_point(backend, seeds, options), options)


def _quick_options(backend: Backend, **fields: object):
    """The default options (plus `fields`), with TextOptions' `steps` at 2 for a TEXT backend: the checks that
    decode many times look at batches, spaces and prompts, which two denoising steps show as well as twenty."""
    quick = TEXT in backend.capabilities and "steps" in backend.Options.model_fields
    return backend.parse_options({"steps": 2, **fields} if quick else fields)


def _dataset_images(shape: tuple[int, int, int], n: int = N) -> torch.Tensor:
    """`n` digits from the bundled scikit-learn set, converted to `shape` (channels, height, width)."""
    import torch.nn.functional as F

    from studio.datasets import load_dataset

    images = load_dataset("digits", "test", limit=n).images
    c, h, w = shape
    images = images.expand(-1, c, -1, -1) if c != images.shape[1] else images
    return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False).clamp(-1, 1).contiguous()


def _sample_images(backend: Backend, options) -> torch.Tensor:
    """Images the backend makes itself from SEEDS, or (no SAMPLE) dataset images of its image shape."""
    if SAMPLE in backend.capabilities:
        return _render(backend, SEEDS, options)
    return _dataset_images(backend.image_shape(options))


_ENCODED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _encoded_sample(backend: Backend) -> tuple[torch.Tensor, dict]:
    """(images, encode(images)) with the default options, computed once per backend: encoding may be an
    optimisation (GAN inversion) taking seconds per image, and several checks read it."""
    try:
        return _ENCODED[backend]
    except (KeyError, TypeError):  # TypeError: a backend that cannot be weakly referenced or hashed is not cached
        pass
    options = backend.parse_options({})
    images = _sample_images(backend, options)
    sample = (images, backend.encode(images, options, seed=0))
    try:
        _ENCODED[backend] = sample
    except TypeError:
        pass
    return sample


def _codec_point(backend: Backend, options) -> dict:
    """A codec-only point: the encoded sample when the backend encodes, else draws at the declared coding
    statistics."""
    codec = backend.space_for(CODEC, options)
    if ENCODE in backend.capabilities:
        return {codec.name: _encoded_sample(backend)[1][codec.name]}
    from studio.ops.compression import coding_stats

    mean, std = (torch.as_tensor(a, dtype=torch.float32).reshape(codec.shape) for a in coding_stats(codec))
    noise = torch.randn((N, *codec.shape), generator=torch.Generator("cpu").manual_seed(0))
    return {codec.name: mean + std * noise}


def _refused(call: Callable[[], object], what: str) -> None:
    """`call` must raise a StudioError (InputError) with a one-line message; a raw framework error, a message
    the contract's output check produced instead, or no error at all fails."""
    try:
        call()
    except BackendError as exc:
        raise AssertionError(f"{what} was accepted; the contract only caught the output: {clip(exc, 160)}") from None
    except StudioError as exc:
        message = str(exc)
        assert message.strip(), f"{what} raised {type(exc).__name__} without a message"
        assert "\n" not in message.strip(), f"{what} raised a message of several lines: {clip(message, 160)!r}"
        return
    except Exception as exc:
        raise AssertionError(f"{what} raised a raw {type(exc).__name__} ({clip(exc, 120)!r}); raise "
                             "studio.errors.InputError with a one-line message instead") from None
    raise AssertionError(f"{what} was accepted")


# ----- the checks -----

def check_declarations(backend: Backend) -> None:
    """Name, version, spaces with valid roles and shapes; the spaces that the capabilities need exist."""
    assert isinstance(backend.name, str) and backend.name, "backend.name must be a non-empty string"
    assert isinstance(backend.version, str) and backend.version, "backend.version must be a non-empty string"
    assert backend.model.sha256 and len(backend.model.sha256) == 64, "model.sha256 must be a sha256 hex digest"
    from studio.contract import CAPABILITIES

    unknown = sorted(set(backend.capabilities) - CAPABILITIES)
    assert not unknown, f"unknown capabilities {unknown} (known: {sorted(CAPABILITIES)})"
    options = backend.parse_options({})
    spaces = backend.spaces(options)
    assert spaces, "a backend declares at least one latent space"
    for name, s in spaces.items():
        assert s.name == name, f"space key {name!r} differs from its name {s.name!r}"
        assert all(isinstance(d, int) and d > 0 for d in s.shape), f"space {name!r} has a bad shape {s.shape}"
    roles = {r for s in spaces.values() for r in s.roles}
    if SAMPLE in backend.capabilities:
        assert SEED in roles, "a backend that samples needs a space with the 'seed' role"
    if ENCODE in backend.capabilities or DECODE in backend.capabilities:
        assert CODEC in roles, "a backend that encodes or decodes needs a space with the 'codec' role"
    c, h, w = backend.image_shape(options)
    assert c in (1, 3) and h > 0 and w > 0, f"image_shape must be (1|3, H, W), got {(c, h, w)}"


def check_bad_options(backend: Backend) -> None:
    """An unknown option gets a clear one-line InputError."""
    try:
        backend.parse_options({"no_such_option_xyz": 1})
    except InputError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), f"unclear error for an unknown option: {exc!r}"
    else:
        raise AssertionError("an unknown option was accepted")


def check_shapes_and_range(backend: Backend) -> None:
    """Decoded samples have the declared image shape, are finite, and lie in [-1, 1]."""
    options = backend.parse_options({})
    point = _point(backend, SEEDS, options)
    for name, z in point.items():
        shape = backend.spaces(options)[name].shape
        assert tuple(z.shape) == (N, *shape), f"space {name!r}: latent batch {tuple(z.shape)} != {(N, *shape)}"
        assert z.device.type == "cpu" and z.dtype == torch.float32, f"space {name!r}: latents must be CPU float32"
    images = backend.decode(point, options)
    assert tuple(images.shape) == (N, *backend.image_shape(options)), \
        f"decode gave {tuple(images.shape)}, expected {(N, *backend.image_shape(options))}"
    assert images.dtype == torch.float32 and images.device.type == "cpu", "images must be CPU float32"
    assert torch.isfinite(images).all(), "decoded images contain NaN or inf"
    assert images.min() >= -1.0 - 1e-5 and images.max() <= 1.0 + 1e-5, "decoded images must lie in [-1, 1]"


def check_determinism(backend: Backend) -> None:
    """Same seeds, same pixels; different seeds, different images; a seed does not depend on its batch."""
    options = backend.parse_options({})
    a, b = _render(backend, SEEDS, options), _render(backend, SEEDS, options)
    assert torch.equal(a, b), "the same seeds gave different images"
    c = _render(backend, [s + 100 for s in SEEDS], options)
    assert not torch.allclose(a, c), "different seeds gave the same images"
    seed_space = backend.space_for(SEED, options).name
    z1 = backend.sample_prior(seed_space, [SEEDS[1]], options)
    zb = backend.sample_prior(seed_space, SEEDS, options)
    assert torch.equal(z1[0], zb[1]), "a seed's latent must not depend on the other seeds in its batch"


def check_decode_batch_invariance(backend: Backend) -> None:
    """Decoding items one by one gives the same images as decoding them in one batch (micro-batching relies on
    it): for seed points (SAMPLE) and codec points (DECODE)."""
    from studio.points import take

    options = _quick_options(backend)
    points = {}
    if SAMPLE in backend.capabilities:
        points["seed"] = _point(backend, SEEDS, options)
    if DECODE in backend.capabilities:
        codec = _codec_point(backend, options)
        if set(codec) != set(points.get("seed", {})):
            points["codec"] = codec
    for kind, point in points.items():
        batch = backend.decode(point, options)
        alone = torch.cat([backend.decode(take(point, i), options) for i in range(batch.shape[0])])
        worst = float((batch - alone).abs().max())
        assert worst <= BATCH_ATOL, f"decoding {kind} points one by one differs from decoding them as a batch " \
                                    f"by up to {worst:.3g} (allowed {BATCH_ATOL:g}): an item depends on its batch"


def check_bad_latents(backend: Backend) -> None:
    """Latents of the wrong shape get a one-line StudioError (InputError) from decode, not a raw framework error."""
    options = backend.parse_options({})
    point = _point(backend, SEEDS[:1], options) if SAMPLE in backend.capabilities else \
        {k: v[:1] for k, v in _codec_point(backend, options).items()}
    name = next(iter(point))
    shape = tuple(point[name].shape[1:])
    for bad in [(1, 3, 3, 3, 3), (1, *shape[:-1], shape[-1] + 1), shape]:
        z = torch.zeros(bad)
        _refused(lambda z=z: backend.decode({**point, name: z}, options),
                 f"decode of a latent of shape {bad} for space {name!r} (expected (n, {', '.join(map(str, shape))}))")


def check_roundtrip(backend: Backend) -> None:
    """encode then decode: the declared codec shape, finite, and each reconstruction is closest to its own input."""
    options = backend.parse_options({})
    images, point = _encoded_sample(backend)
    n = images.shape[0]
    codec = backend.space_for(CODEC, options)
    assert codec.name in point, f"encode must return the codec space {codec.name!r}, got {sorted(point)}"
    assert tuple(point[codec.name].shape) == (n, *codec.shape), "encoded latents have the wrong shape"
    recon = backend.decode({codec.name: point[codec.name]}, options)
    assert tuple(recon.shape) == tuple(images.shape), "decode(encode(x)) changed the image shape"
    assert torch.isfinite(recon).all(), "reconstruction contains NaN or inf"
    err = ((recon.unsqueeze(1) - images.unsqueeze(0)) ** 2).flatten(2).mean(-1)  # [recon i, image j]
    own = err.diagonal()
    others = err.masked_fill(torch.eye(n, dtype=torch.bool), float("inf")).min(dim=1).values
    assert bool((own <= others).all()), f"reconstructions are not closest to their own inputs (own {own.tolist()}, " \
                                        f"nearest other {others.tolist()})"


def check_coding_statistics(backend: Backend) -> None:
    """The declared coding_mean/coding_std of the codec space match encoded latents within a factor of 4
    (compression sizes its range and entropy model from them)."""
    from studio.ops.compression import coding_stats

    options = backend.parse_options({})
    codec = backend.space_for(CODEC, options)
    _, point = _encoded_sample(backend)
    z = point[codec.name].double().reshape(point[codec.name].shape[0], -1)
    try:
        mean, std = (torch.from_numpy(a) for a in coding_stats(codec))
    except ValueError as exc:
        raise AssertionError(str(exc)) from None
    n = z.shape[0]
    assert n >= 2, "the coding statistics need at least two encoded images"
    centred = z - z.mean(0)
    ratio = math.sqrt(float(((centred / std) ** 2).sum()) / ((n - 1) * z.shape[1]))
    measured = math.sqrt(float((centred ** 2).sum()) / ((n - 1) * z.shape[1]))
    declared = math.sqrt(float((std ** 2).mean()))
    assert 1 / CODING_FACTOR <= ratio <= CODING_FACTOR, \
        f"space {codec.name!r}: encoded latents have std {measured:.4g} but coding_std declares {declared:.4g} " \
        f"(measured/declared {ratio:.3g}, allowed {1 / CODING_FACTOR:g} to {CODING_FACTOR:g}; {n} images)"
    offset = math.sqrt(float((((z.mean(0) - mean) / std) ** 2).mean()))
    assert offset <= CODING_FACTOR, \
        f"space {codec.name!r}: encoded latents have mean {float(z.mean()):.4g} but coding_mean declares " \
        f"{float(mean.mean()):.4g} ({offset:.3g} declared stds away, allowed {CODING_FACTOR:g}; {n} images)"


def check_bad_images(backend: Backend) -> None:
    """Images of the wrong shape get a one-line StudioError (InputError) from encode, not a raw framework error."""
    options = backend.parse_options({})
    c, h, w = backend.image_shape(options)
    for bad in [(1, 2, 5, 5), (1, c, h + 1, w + 1), (c, h, w)]:
        x = torch.zeros(bad)
        _refused(lambda x=x: backend.encode(x, options),
                 f"encode of images of shape {bad} (expected (n, {c}, {h}, {w}))")


def check_img2img(backend: Backend) -> None:
    """IMG2IMG: a point with the seed and the codec space decodes; its Options take a `strength`; strength 0
    gives the codec's own decode, and the default strength changes it."""
    fields = backend.Options.model_fields
    assert "strength" in fields, f"an img2img backend's Options need a 'strength' field (has {sorted(fields)})"
    options = _quick_options(backend)
    none = _quick_options(backend, strength=0.0)
    codec = _codec_point(backend, options)
    seed = backend.space_for(SEED, options).name
    n = next(iter(codec.values())).shape[0]
    point = {**codec, **_point(backend, [s + 1000 for s in range(n)], options)}  # noise unlike the codec's seeds
    assert seed in point, f"the img2img point has no seed space {seed!r}"
    plain = backend.decode(codec, options)
    kept = backend.decode(point, none)
    worst = float((kept - plain).abs().max())
    assert worst <= BATCH_ATOL, f"img2img at strength 0 differs from decoding the codec point by {worst:.3g}"
    changed = backend.decode(point, options)
    assert not torch.allclose(changed, plain, atol=BATCH_ATOL), \
        f"img2img at the default strength {getattr(options, 'strength', None)} gave the codec point's own images"


def check_text_options(backend: Backend) -> None:
    """TEXT: the Options subclass studio.contract.TextOptions (the text fields every front end reads)."""
    options_cls = backend.Options
    assert isinstance(options_cls, type) and issubclass(options_cls, TextOptions), \
        f"a TEXT backend's Options ({getattr(options_cls, '__name__', options_cls)}) must subclass " \
        "studio.contract.TextOptions"
    parsed = backend.parse_options({"prompt": "a red circle", "negative_prompt": "blur"})
    assert (parsed.prompt, parsed.negative_prompt) == ("a red circle", "blur"), "the text fields were not kept"


def check_text_prompts(backend: Backend) -> None:
    """TEXT: different prompts give different images (with two denoising steps: TextOptions' `steps`)."""
    a = _render(backend, SEEDS[:1], _quick_options(backend, prompt="a red circle"))
    b = _render(backend, SEEDS[:1], _quick_options(backend, prompt="a blue square"))
    assert not torch.allclose(a, b), "a text backend gave the same image for different prompts"


def check_train(backend: Backend, options: Mapping[str, object] | None = None) -> None:
    """TRAIN: one epoch on a few images writes a valid safetensors file (or, for `train_output = "folder"`, a folder
    of them) and returns JSON-able metrics. `options` are extra keyword arguments for the backend's `train` (to keep
    it small)."""
    from studio.config import load_settings
    from studio.safetensors_io import read_header

    cls = type(backend)
    with tempfile.TemporaryDirectory(prefix="studio-kit-") as tmp:
        out = Path(tmp) / (f"{cls.name}-check" + (".safetensors" if cls.train_output == "file" else ""))
        metrics = cls.train(TRAIN_DATASET, 1, str(out), 0, load_settings(), limit=TRAIN_LIMIT, **dict(options or {}))
        assert isinstance(metrics, dict) and metrics, f"train must return a non-empty dict of metrics, got {metrics!r}"
        try:
            json.dumps(metrics)
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"train's metrics are not JSON-serialisable: {exc}") from None
        files = [out] if cls.train_output == "file" else sorted(out.rglob("*.safetensors"))
        assert files and all(f.is_file() for f in files), f"train did not write its weights to `out` ({out.name})"
        for f in files:
            tensors = [k for k in read_header(f) if k != "__metadata__"]
            assert tensors, f"{f.relative_to(tmp)} holds no tensors"


def check_undeclared_capabilities(backend: Backend) -> None:
    """encode and train refuse when ENCODE or TRAIN is not declared (NotImplementedError or a StudioError)."""
    from studio.config import load_settings

    with tempfile.TemporaryDirectory(prefix="studio-kit-") as tmp:
        calls: dict[str, Callable[[], object]] = {}
        if ENCODE not in backend.capabilities:
            calls["encode"] = lambda: backend.encode(torch.zeros(1, *backend.image_shape()))
        if TRAIN not in backend.capabilities:
            calls["train"] = lambda: type(backend).train(TRAIN_DATASET, 1, str(Path(tmp) / "x.safetensors"), 0,
                                                         load_settings(), limit=TRAIN_LIMIT)
        for what, call in calls.items():
            try:
                call()
            except (NotImplementedError, StudioError):
                continue
            raise AssertionError(f"a backend without the {what!r} capability must refuse {what}()")


CHECKS: list[Check] = [
    Check(check_declarations),
    Check(check_bad_options),
    Check(check_shapes_and_range, needs=frozenset({SAMPLE})),
    Check(check_determinism, needs=frozenset({SAMPLE})),
    Check(check_decode_batch_invariance, needs_any=frozenset({SAMPLE, DECODE})),
    Check(check_bad_latents, needs_any=frozenset({SAMPLE, DECODE})),
    Check(check_roundtrip, needs=frozenset({ENCODE, DECODE})),
    Check(check_coding_statistics, needs=frozenset({ENCODE})),
    Check(check_bad_images, needs=frozenset({ENCODE})),
    Check(check_img2img, needs=frozenset({IMG2IMG, SAMPLE, DECODE})),
    Check(check_text_options, needs=frozenset({TEXT})),
    Check(check_text_prompts, needs=frozenset({TEXT, SAMPLE})),
    Check(check_train, needs=frozenset({TRAIN})),
    Check(check_undeclared_capabilities, lacks_any=frozenset({ENCODE, TRAIN})),
]
CHECK_NAMES = frozenset(c.name for c in CHECKS)


def _validated(expected_failed_checks: Mapping[str, str] | None) -> dict[str, str]:
    expected = dict(expected_failed_checks or {})
    unknown = sorted(set(expected) - CHECK_NAMES)
    if unknown:
        raise InputError(f"expected_failed_checks names unknown checks {unknown} "
                         f"(known: {', '.join(sorted(CHECK_NAMES))})")
    return expected


def checks_for(backend_name: str, capabilities: frozenset[str], expected_failed_checks: Mapping[str, str] | None = None,
               train_options: Mapping[str, object] | None = None) -> list[tuple[Check, str | None]]:
    """Every check bound to this backend's expectations, with the reason it is skipped (None: it runs)."""
    expected = _validated(expected_failed_checks)
    out = []
    for check in CHECKS:
        kwargs = {"options": dict(train_options)} if check.fn is check_train and train_options else {}
        bound = dataclasses.replace(check, kwargs=kwargs, expected_failure=expected.get(check.name))
        out.append((bound, check.skip_reason(backend_name, frozenset(capabilities))))
    return out


def run_check(check: Check, backend: Backend) -> CheckResult:
    """Run one (applicable) check: pass or fail, or xfail when its failure is expected."""
    try:
        check(backend)
    except Exception as exc:  # report every failure, keep checking
        detail = f"{type(exc).__name__}: {exc}"
        if check.expected_failure is not None:
            return CheckResult(check.name, XFAIL, f"{check.expected_failure} ({clip(detail, 200)})")
        return CheckResult(check.name, FAIL, detail)
    if check.expected_failure is not None:
        return CheckResult(check.name, FAIL, f"passed, but expected_failed_checks lists it "
                                             f"({check.expected_failure!r}): remove it from the list")
    return CheckResult(check.name, PASS)


def check_backend(backend: Backend, expected_failed_checks: Mapping[str, str] | None = None,
                  train_options: Mapping[str, object] | None = None) -> list[CheckResult]:
    """Run every check against a loaded backend; inapplicable ones come back as SKIP with the reason.
    `train_options`: extra keyword arguments for the TRAIN check's call of `train`."""
    results = []
    for check, skip in checks_for(backend.name, backend.capabilities, expected_failed_checks, train_options):
        results.append(CheckResult(check.name, SKIP, skip) if skip else run_check(check, backend))
    return results


def run_checks(target: str | Backend, model: str | None = None, settings=None,
               expected_failed_checks: Mapping[str, str] | None = None,
               train_options: Mapping[str, object] | None = None) -> list[CheckResult]:
    """Check a loaded backend, or load an installed one by name (and model) first."""
    if isinstance(target, Backend):
        backend = target
    else:
        from studio.config import load_settings
        from studio.registry import get_backend_class

        backend = get_backend_class(target).load(model, settings or load_settings())
    return check_backend(backend, expected_failed_checks, train_options)


def parametrize_with_checks(backends: Sequence[str | tuple[str, str | None] | Backend],
                            expected_failed_checks: Mapping[str, str] | Callable[[str, str | None], Mapping[str, str]]
                            | None = None,
                            train_options: Mapping[str, Mapping[str, object]] | None = None):
    """A pytest decorator: one test per (backend, check), with ids like `vae:mnist-check_roundtrip`.

    Backends are names, (name, model) pairs (loaded once, lazily, with the current settings) or loaded Backend
    instances. Checks that do not apply to a backend's capabilities are skipped with the reason.
    `expected_failed_checks` maps check names to reasons, or is a function of (backend name, model name) that
    returns such a map: those checks run, fail as XFAIL, and a pass fails the test (remove it from the list).
    `train_options` maps a backend name to extra keyword arguments for the TRAIN check. `train` is a class
    method, so it is checked once per backend class (later models of the same class skip it).
    """
    import pytest

    cache: dict = {}
    trained: dict[type, str] = {}
    params = []
    for target in backends:
        if isinstance(target, Backend):
            cls, name, model, capabilities = type(target), target.name, target.model.name, target.capabilities
            backend: object = target
        else:
            from studio.registry import get_backend_class

            name, model = (target, None) if isinstance(target, str) else target
            cls = get_backend_class(name)
            capabilities, backend = cls.capabilities, _Lazy(_loader(cache, name, model))
        label = f"{name}:{model or 'default'}"
        expected = expected_failed_checks(name, model) if callable(expected_failed_checks) else expected_failed_checks
        for check, skip in checks_for(name, capabilities, expected, (train_options or {}).get(name)):
            if not skip and check.fn is check_train:
                if cls in trained:
                    skip = f"train is a class method: checked once per backend class, with {trained[cls]}"
                trained.setdefault(cls, label)
            marks = [pytest.mark.skip(reason=skip)] if skip else []
            params.append(pytest.param(backend, check, id=f"{label}-{check.name}", marks=marks))

    def decorate(fn):
        return pytest.mark.parametrize("backend, check", params)(_resolving(fn))

    return decorate


def _loader(cache: dict, name: str, model: str | None) -> Callable[[], Backend]:
    def load() -> Backend:
        if (name, model) not in cache:
            from studio.config import load_settings
            from studio.registry import get_backend_class

            cache[(name, model)] = get_backend_class(name).load(model, load_settings())
        return cache[(name, model)]
    return load


class _Lazy:
    def __init__(self, load: Callable[[], Backend]) -> None:
        self.load = load


def _resolving(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(backend, check, *args, **kwargs):
        import pytest

        backend = backend.load() if isinstance(backend, _Lazy) else backend
        reason = getattr(check, "expected_failure", None)
        if reason is None:
            return fn(backend, check, *args, **kwargs)
        try:
            fn(backend, check, *args, **kwargs)
        except Exception as exc:
            pytest.xfail(f"{reason} ({type(exc).__name__}: {clip(exc, 200)})")
        pytest.fail(f"{check.name} passed, but expected_failed_checks lists it ({reason!r}): remove it from the list")

    return wrapper
