"""Conformance checks for backends: the start of the third-party plugin kit.

Run them from the command line (`studio plugin check NAME`) or in a plugin's own test suite::

    from studio.conformance import parametrize_with_checks

    @parametrize_with_checks(["mybackend"])
    def test_conformance(backend, check):
        check(backend)

Each check takes a loaded backend and raises AssertionError with a clear message when the backend breaks the
contract (see studio/contract.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from studio.contract import CODEC, ENCODE, SAMPLE, SEED, TEXT, Backend
from studio.errors import InputError, StudioError

N = 3
SEEDS = [11, 12, 13]


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


def _point(backend: Backend, seeds: list[int], options=None) -> dict:
    from studio.points import random_point

    return random_point(backend, seeds, options)


def _render(backend: Backend, seeds: list[int], options=None) -> torch.Tensor:
    return backend.decode(_point(backend, seeds, options), options)


def check_declarations(backend: Backend) -> None:
    """Name, version, spaces with valid roles and shapes; the spaces that the capabilities need exist."""
    assert isinstance(backend.name, str) and backend.name, "backend.name must be a non-empty string"
    assert isinstance(backend.version, str) and backend.version, "backend.version must be a non-empty string"
    assert backend.model.sha256 and len(backend.model.sha256) == 64, "model.sha256 must be a sha256 hex digest"
    options = backend.parse_options({})
    spaces = backend.spaces(options)
    assert spaces, "a backend declares at least one latent space"
    for name, s in spaces.items():
        assert s.name == name, f"space key {name!r} differs from its name {s.name!r}"
        assert all(isinstance(d, int) and d > 0 for d in s.shape), f"space {name!r} has a bad shape {s.shape}"
    roles = {r for s in spaces.values() for r in s.roles}
    if SAMPLE in backend.capabilities:
        assert SEED in roles, "a backend that samples needs a space with the 'seed' role"
    if ENCODE in backend.capabilities:
        assert CODEC in roles, "a backend that encodes needs a space with the 'codec' role"
    c, h, w = backend.image_shape(options)
    assert c in (1, 3) and h > 0 and w > 0, f"image_shape must be (1|3, H, W), got {(c, h, w)}"


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


def check_roundtrip(backend: Backend) -> None:
    """encode then decode: the declared codec shape, finite, and each reconstruction is closest to its own input."""
    if ENCODE not in backend.capabilities:
        try:
            backend.encode(torch.zeros(1, *backend.image_shape()))
        except (NotImplementedError, StudioError):
            return
        raise AssertionError("a backend without the 'encode' capability must refuse encode()")
    options = backend.parse_options({})
    images = _render(backend, SEEDS, options)
    point = backend.encode(images, options, seed=0)
    codec = backend.space_for(CODEC, options)
    assert codec.name in point, f"encode must return the codec space {codec.name!r}, got {sorted(point)}"
    assert tuple(point[codec.name].shape) == (N, *codec.shape), "encoded latents have the wrong shape"
    recon = backend.decode({codec.name: point[codec.name]}, options)
    assert tuple(recon.shape) == tuple(images.shape), "decode(encode(x)) changed the image shape"
    assert torch.isfinite(recon).all(), "reconstruction contains NaN or inf"
    err = ((recon.unsqueeze(1) - images.unsqueeze(0)) ** 2).flatten(2).mean(-1)  # [recon i, image j]
    own = err.diagonal()
    others = err.masked_fill(torch.eye(N, dtype=torch.bool), float("inf")).min(dim=1).values
    assert bool((own <= others).all()), f"reconstructions are not closest to their own inputs (own {own.tolist()}, " \
                                        f"nearest other {others.tolist()})"


def check_capabilities(backend: Backend) -> None:
    """Declared capabilities are honoured: text backends react to prompts."""
    if TEXT in backend.capabilities:
        a = _render(backend, SEEDS[:1], backend.parse_options({"prompt": "a red circle"}))
        b = _render(backend, SEEDS[:1], backend.parse_options({"prompt": "a blue square"}))
        assert not torch.allclose(a, b), "a text backend gave the same image for different prompts"


def check_bad_input(backend: Backend) -> None:
    """Unknown options, wrong latent shapes and wrong image shapes get clear errors, not crashes."""
    try:
        backend.parse_options({"no_such_option_xyz": 1})
    except InputError as exc:
        assert str(exc), "empty error message"
    else:
        raise AssertionError("an unknown option was accepted")
    options = backend.parse_options({})
    point = _point(backend, SEEDS[:1], options)
    name = next(iter(point))
    bad = {**point, name: torch.zeros(1, 3, 3, 3, 3)}
    try:
        backend.decode(bad, options)
    except (StudioError, ValueError, RuntimeError) as exc:
        assert str(exc), "a wrong latent shape raised an error without a message"
    else:
        raise AssertionError(f"decode accepted a latent of the wrong shape for space {name!r}")
    if ENCODE in backend.capabilities:
        try:
            backend.encode(torch.zeros(1, 2, 5, 5), options)
        except (StudioError, ValueError, RuntimeError) as exc:
            assert str(exc), "a wrong image shape raised an error without a message"
        else:
            raise AssertionError("encode accepted images of the wrong shape")


CHECKS: list[Callable[[Backend], None]] = [check_declarations, check_shapes_and_range, check_determinism,
                                           check_roundtrip, check_capabilities, check_bad_input]


def check_backend(backend: Backend) -> list[CheckResult]:
    """Run every check against a loaded backend."""
    results = []
    for check in CHECKS:
        try:
            check(backend)
            results.append(CheckResult(check.__name__, True))
        except Exception as exc:  # report every failure, keep checking
            results.append(CheckResult(check.__name__, False, f"{type(exc).__name__}: {exc}"))
    return results


def run_checks(name: str, model: str | None = None, settings=None) -> list[CheckResult]:
    """Load an installed backend by name and check it."""
    from studio.config import load_settings
    from studio.registry import get_backend_class

    settings = settings or load_settings()
    backend = get_backend_class(name).load(model, settings)
    return check_backend(backend)


def parametrize_with_checks(backends: list[str | tuple[str, str | None]]):
    """A pytest decorator: one test per (backend, check). Backends are names or (name, model) pairs; each is
    loaded once, lazily, with the current settings."""
    import pytest

    cache: dict = {}

    def loader(name: str, model: str | None) -> Callable[[], Backend]:
        def load() -> Backend:
            if (name, model) not in cache:
                from studio.config import load_settings
                from studio.registry import get_backend_class

                cache[(name, model)] = get_backend_class(name).load(model, load_settings())
            return cache[(name, model)]
        return load

    params = []
    for b in backends:
        name, model = (b, None) if isinstance(b, str) else b
        for check in CHECKS:
            params.append(pytest.param(_Lazy(loader(name, model)), check, id=f"{name}-{check.__name__}"))

    def decorate(fn):
        return pytest.mark.parametrize("backend, check", params)(_resolving(fn))

    return decorate


class _Lazy:
    def __init__(self, load: Callable[[], Backend]) -> None:
        self.load = load


def _resolving(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(backend, check, *args, **kwargs):
        return fn(backend.load() if isinstance(backend, _Lazy) else backend, check, *args, **kwargs)

    return wrapper
