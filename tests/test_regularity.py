"""Regularity of latent spaces (studio.regularity, `studio evaluate`): perceptual path length and linear
separability, on hand-made decoders whose answer is known and on the shipped models."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from studio.config import Settings, load_settings
from studio.contract import CODEC, DECODE, SAMPLE, SEED, Backend, LatentSpace, ModelInfo
from studio.errors import InputError, StudioError
from studio.regularity import (
    conditional_entropy,
    label_source,
    linear_separability,
    path_distances,
    perceptual_path_length,
    separability_of,
    trimmed_mean,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LATENT = 12



class LinearDecoder(Backend):
    """Images = W z (+ `rough` * sin(`frequency` * V z): a ripple that makes the path rough), 1x28x28."""

    name: ClassVar[str] = "linear"
    version: ClassVar[str] = "0"
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE, DECODE})
    rough: float = 0.0
    frequency: float = 0.0

    def __init__(self) -> None:
        super().__init__(ModelInfo("linear", "", "0" * 64))
        gen = torch.Generator().manual_seed(0)
        self.w = torch.randn(LATENT, 28 * 28, generator=gen) * 0.05
        self.v = torch.randn(LATENT, 28 * 28, generator=gen)

    @classmethod
    def available_models(cls, settings: Settings) -> list[ModelInfo]:
        return [ModelInfo("linear", "", "0" * 64)]

    @classmethod
    def load(cls, model, settings, device="cpu", dtype="float32") -> LinearDecoder:
        return cls()

    def spaces(self, options=None) -> dict[str, LatentSpace]:
        return {"z": LatentSpace("z", (LATENT,), "gaussian", frozenset({SEED, CODEC}))}

    def image_shape(self, options=None) -> tuple[int, int, int]:
        return (1, 28, 28)

    def decode(self, point, options=None, progress=None) -> torch.Tensor:
        z = point["z"].double()
        x = z @ self.w.double() + self.rough * torch.sin(self.frequency * (z @ self.v.double()))
        return x.float().reshape(-1, 1, 28, 28)


def test_trimmed_mean_drops_the_outer_percentiles() -> None:
    values = np.concatenate([np.ones(98), [1e9, -1e9]])
    assert trimmed_mean(values) == pytest.approx(1.0)
    assert trimmed_mean(np.arange(101.0), 0, 100) == pytest.approx(50.0)
    with pytest.raises(InputError):
        trimmed_mean(np.array([]))


def test_lerp_path_length_of_a_linear_decoder_is_the_exact_mean_step() -> None:
    """For images W z along lerp paths, the pixel distance / eps^2 is mean((W (b - a))^2), whatever t is."""
    backend = LinearDecoder()
    _, pixels = path_distances(backend, 40, "lerp", seed=3)
    prior = backend.sample_prior("z", range(3, 3 + 80)).double()
    expected = (((prior[1::2] - prior[0::2]) @ backend.w.double()) ** 2).mean(1).numpy()
    assert pixels == pytest.approx(expected, rel=2e-3)


def test_a_rough_decoder_has_a_longer_path_than_a_smooth_one() -> None:
    """The same linear decoder plus a small fast ripple (1% of the pixel range, frequency 40): the images barely
    change on average, but every small step wiggles; PPL must grow, in pixels and in classifier features."""
    smooth, rough = LinearDecoder(), LinearDecoder()
    rough.rough, rough.frequency = 0.01, 40.0
    a = perceptual_path_length(smooth, n_pairs=60, seed=1)
    b = perceptual_path_length(rough, n_pairs=60, seed=1)
    for key in ("ppl_slerp", "ppl_lerp", "ppl_slerp_pixels", "ppl_lerp_pixels"):
        assert math.isfinite(a[key]) and math.isfinite(b[key]) and a[key] > 0
        assert b[key] > 3 * a[key], (key, a[key], b[key])
    assert a["ppl_features"] == "mnist classifier features" and a["ppl_pairs"] == 60 and a["ppl_eps"] == 1e-4


def test_path_length_input_errors() -> None:
    backend = LinearDecoder()
    with pytest.raises(InputError, match="unknown path"):
        path_distances(backend, 4, "cubic")
    with pytest.raises(InputError, match="at least 1 pair"):
        path_distances(backend, 0, "lerp")
    with pytest.raises(InputError, match="no classifier for dataset"):
        perceptual_path_length(backend, 4, dataset="cifar")


def test_separability_of_separable_and_of_random_labels() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 100)
    x = rng.normal(size=(400, 6))
    x[:, 0] += 6 * y  # classes along one axis
    separable = separability_of(x, y)
    assert separable["separability_accuracy"] >= 0.95 and separable["separability_entropy_bits"] < 0.3
    noise = separability_of(rng.normal(size=(400, 6)), y)
    assert noise["separability_accuracy"] < 0.45 and noise["separability_entropy_bits"] > 1.5
    assert noise["separability_chance"] == pytest.approx(0.25)
    with pytest.raises(InputError, match="at least 8 latents of 2 classes"):
        separability_of(x[:5], y[:5])


def test_conditional_entropy() -> None:
    assert conditional_entropy([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(0.0)
    assert conditional_entropy([0, 1, 0, 1], [0, 0, 0, 0]) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def shipped(studio_home: Path):
    from studio.executor import Runtime

    runtime = Runtime(load_settings({"STUDIO_HOME": str(studio_home)}))
    return {b: runtime.get_backend(b, "mnist") for b in ("vae", "gan")}


def test_separability_of_the_mnist_vae_is_well_above_chance(shipped, settings: Settings) -> None:
    vae = shipped["vae"]
    assert label_source(vae) == "dataset"
    result = linear_separability(vae, n=800, settings=settings)
    assert result["separability_labels"] == "dataset" and result["separability_n"] == 800
    assert result["separability_chance"] < 0.2
    assert result["separability_accuracy"] > 3 * result["separability_chance"], result  # measured 0.84 vs 0.13


def test_evaluate_op_reports_regularity_for_the_shipped_models(shipped, settings: Settings) -> None:
    from studio.executor import Runtime, execute

    runtime = Runtime(settings)
    runtime._loaded.update({runtime.cache_key(b, "mnist"): backend for b, backend in shipped.items()})
    results = {}
    for name in ("vae", "gan"):
        spec = {"op": "evaluate", "backend": name, "model": "mnist", "quality": False, "n": 100, "ppl_pairs": 40,
                "separability_n": 200}
        results[name] = execute(spec, runtime).metrics
    for name, m in results.items():
        for key in ("ppl_slerp", "ppl_lerp", "ppl_slerp_pixels", "ppl_lerp_pixels", "separability_accuracy",
                    "separability_entropy_bits"):
            assert math.isfinite(m[key]) and m[key] >= 0, (name, key, m)
        assert "fcd" not in m and m["ppl_pairs"] == 40
    assert results["vae"]["separability_labels"] == "dataset"
    assert results["gan"]["separability_labels"] == "samples"  # inversion is costly: classifier-labelled samples
    assert results["gan"]["separability_n"] == 100  # the more confident half of 200


def test_evaluate_spec_defaults_follow_n_and_refuse_nothing_to_do() -> None:
    from studio.builtin_ops.latent import EvaluateSpec

    assert EvaluateSpec(backend="vae", n=10).regularity_sizes() == (10, 20)
    assert EvaluateSpec(backend="vae").regularity_sizes() == (1000, 4000)
    assert EvaluateSpec(backend="vae", n=20000, repeats=5, quality=False).regularity_sizes() == (1000, 4000)
    with pytest.raises(ValueError, match="at most 60000"):  # the disjoint training draws bind only with quality
        EvaluateSpec(backend="vae", n=20000, repeats=5)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        EvaluateSpec(backend="vae", quality=False, ppl_pairs=0, separability_n=0)


def test_labels_dataset_is_refused_where_encode_misses_the_seed_space(settings: Settings) -> None:
    with pytest.raises(InputError, match="does not encode into its seed space"):
        linear_separability(LinearDecoder(), n=20, labels="dataset", settings=settings)
    with pytest.raises(StudioError, match="unknown separability labels"):
        linear_separability(LinearDecoder(), n=20, labels="guess", settings=settings)
