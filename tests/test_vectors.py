"""Attribute measurements, vector fitting math, the vector store, and fits over a (tiny, linear) backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from studio.attributes import attribute_split, confounders, slant, thickness
from studio.config import load_settings
from studio.contract import CODEC, DECODE, ENCODE, SAMPLE, SEED, Backend, LatentSpace, ModelInfo
from studio.datasets import Dataset, load_dataset
from studio.errors import InputError, NotFound
from studio.ops.vectors import fit_attribute_vector, fit_example_vector, fit_vector, pca_directions
from studio.vectorstore import list_vectors, load_vector, save_vector

SHA = "ab" * 32


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STUDIO_CONFIG", raising=False)
    return load_settings()


@pytest.fixture
def digits(settings) -> Dataset:
    return load_dataset("digits", "train", settings=settings)


def _cos(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _planted(n: int = 400, dim: int = 32, strength: float = 2.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(dim, generator=g)
    u = u / u.norm()
    pos = torch.randn(n, dim, generator=g) + strength * u
    neg = torch.randn(n, dim, generator=g)
    return pos, neg, u


# ----- fit_vector -----

@pytest.mark.parametrize("method", ["mean", "balanced", "classifier"])
def test_each_method_recovers_a_planted_direction(method):
    pos, neg, u = _planted(strength=3.0)
    rng = np.random.default_rng(1)
    groups = {"pos_groups": rng.integers(0, 3, len(pos)), "neg_groups": rng.integers(0, 3, len(neg))}
    fit = fit_vector(pos, neg, method, **groups)
    assert fit.vector.shape == u.shape
    assert _cos(fit.vector, u) > 0.9
    assert fit.auc > 0.95 and fit.auc_split == "held-out"  # the best linear rule reaches 0.983 here
    assert (fit.n_pos, fit.n_neg) == (400, 400)
    assert fit.norm == pytest.approx(float(fit.vector.norm()), rel=1e-5)


def test_balanced_removes_a_planted_confounder_that_the_mean_keeps():
    g = torch.Generator().manual_seed(3)
    dim, n = 24, 600
    u = torch.zeros(dim)
    u[0] = 1.0  # the attribute
    w = torch.zeros(dim)
    w[1] = 3.0  # what the confounder (group 1) adds
    pos_groups = (torch.rand(n, generator=g) < 0.8).long().numpy()  # the attribute mostly comes with group 1
    neg_groups = (torch.rand(n, generator=g) < 0.2).long().numpy()
    pos = torch.randn(n, dim, generator=g) + u + torch.from_numpy(pos_groups)[:, None].float() * w
    neg = torch.randn(n, dim, generator=g) + torch.from_numpy(neg_groups)[:, None].float() * w
    plain = fit_vector(pos, neg, "mean")
    balanced = fit_vector(pos, neg, "balanced", pos_groups=pos_groups, neg_groups=neg_groups)
    assert _cos(plain.vector, u) < 0.7  # the plain mean mostly points at the confounder
    assert _cos(balanced.vector, u) > 0.9
    assert abs(_cos(balanced.vector, w)) < 0.25


def test_balanced_with_disjoint_cells_weights_each_cell_equally():
    # pos: one cell; neg: cell 1 (many, at +5 on dim 1) and cell 2 (few, at -5): equal weights cancel them.
    pos = torch.zeros(10, 3)
    pos[:, 0] = 1.0
    neg = torch.zeros(40, 3)
    neg[:30, 1], neg[30:, 1] = 5.0, -5.0
    fit = fit_vector(pos, neg, "balanced", pos_groups=np.zeros(10), neg_groups=np.r_[np.ones(30), 2 * np.ones(10)],
                     holdout=0.0)
    assert torch.allclose(fit.vector, torch.tensor([1.0, 0.0, 0.0]))
    assert not torch.allclose(fit_vector(pos, neg, "mean", holdout=0.0).vector, torch.tensor([1.0, 0.0, 0.0]))


def test_classifier_vector_is_scaled_to_the_mean_difference_projection():
    pos, neg, _ = _planted(n=200, dim=8, strength=1.5, seed=5)
    fit = fit_vector(pos, neg, "classifier", holdout=0.0)
    unit = fit.vector / fit.vector.norm()
    step = float((pos.mean(0) - neg.mean(0)) @ unit)
    assert fit.norm == pytest.approx(step, rel=1e-4)
    assert fit.auc_split == "in-sample"


def test_std_scale_measures_strength_in_standard_deviations_of_the_reference():
    pos, neg, u = _planted(n=300, dim=10, strength=2.0, seed=11)
    step = fit_vector(pos, neg, "mean", holdout=0.0)
    reference = torch.randn(5000, 10, generator=torch.Generator().manual_seed(12)) * 3.0
    std = fit_vector(pos, neg, "mean", holdout=0.0, scale="std", reference=reference)
    assert _cos(std.vector, step.vector) == pytest.approx(1.0, abs=1e-6)
    assert std.norm == pytest.approx(3.0, rel=0.05) and std.sigma == pytest.approx(std.norm, rel=1e-5)
    assert std.separation == pytest.approx(step.norm / std.sigma, rel=1e-5)
    own = fit_vector(pos, neg, "mean", holdout=0.0, scale="std")  # default reference: the fitted latents
    both = torch.cat([pos, neg]).double() @ (step.vector.double() / step.vector.norm())
    assert own.norm == pytest.approx(float(both.std(unbiased=False)), rel=1e-4)
    with pytest.raises(InputError, match="unknown vector scale"):
        fit_vector(pos, neg, "mean", scale="huge")


def test_auc_is_near_one_when_separable_and_near_half_for_noise():
    pos, neg, _ = _planted(n=300, dim=16, strength=8.0, seed=7)
    assert fit_vector(pos, neg, "mean").auc > 0.99
    g = torch.Generator().manual_seed(8)
    noise = fit_vector(torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g), "mean")
    assert abs(noise.auc - 0.5) < 0.08


def test_fit_vector_refuses_bad_input():
    pos, neg, _ = _planted(n=20, dim=4)
    with pytest.raises(InputError, match="too few"):
        fit_vector(pos[:2], neg, "mean")  # 2 with: 1 left for the fit after holding one out
    with pytest.raises(InputError, match="unknown vector method"):
        fit_vector(pos, neg, "median")
    with pytest.raises(InputError, match="confounder"):
        fit_vector(pos, neg, "balanced")
    with pytest.raises(InputError, match="shape"):
        fit_vector(pos, neg[:, :3], "mean")
    with pytest.raises(InputError, match="one label per example"):
        fit_vector(pos, neg, "balanced", pos_groups=np.zeros(3), neg_groups=np.zeros(20))


def test_fit_vector_keeps_the_latent_shape():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(12, 2, 3, 3, generator=g) + 1, torch.randn(12, 2, 3, 3, generator=g)
    fit = fit_vector(pos, neg, "mean", holdout=0.0)
    assert fit.vector.shape == (2, 3, 3)
    assert torch.allclose(fit.vector, pos.mean(0) - neg.mean(0), atol=1e-6)


def test_pca_directions_are_scaled_by_component_std():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 6, generator=g) * torch.tensor([0.1, 5.0, 0.1, 2.0, 0.1, 0.1])
    dirs = pca_directions(x.reshape(4000, 2, 3), k=2)
    assert dirs.shape == (2, 2, 3)
    flat = dirs.reshape(2, -1)
    assert flat[0, 1] == pytest.approx(5.0, rel=0.05) and flat[1, 3] == pytest.approx(2.0, rel=0.05)
    assert abs(_cos(flat[0], torch.eye(6)[1])) > 0.999
    with pytest.raises(InputError):
        pca_directions(x, k=7)


# ----- attributes -----

def test_thickness_grows_when_a_digit_is_dilated(digits):
    images = digits.images[:50]
    ink = (images + 1) / 2
    dilated = F.max_pool2d(ink, 3, stride=1, padding=1) * 2 - 1
    assert np.all(thickness(dilated) > thickness(images))
    assert thickness(-torch.ones(1, 1, 8, 8))[0] == 0 and thickness(torch.ones(1, 1, 8, 8))[0] == 1


def test_slant_sign_flips_when_an_image_is_mirrored(digits):
    images = digits.images[:50]
    s, mirrored = slant(images), slant(torch.flip(images, dims=[3]))
    assert np.allclose(mirrored, -s, atol=1e-9)
    assert np.sum(np.abs(s) > 0.02) > 25  # real digits are slanted, so the test above means something


def test_slant_is_positive_for_an_italic_stroke_and_zero_for_an_upright_one():
    italic = -np.ones((1, 1, 20, 20))
    upright = -np.ones((1, 1, 20, 20))
    for row in range(20):
        italic[0, 0, row, 19 - row] = 1.0  # top row: right end; bottom row: left end
        upright[0, 0, row, 10] = 1.0
    assert slant(italic)[0] == pytest.approx(1.0)
    assert slant(upright)[0] == pytest.approx(0.0)
    assert slant(-np.ones((1, 20, 20)))[0] == 0.0


def test_attribute_split_forms(digits):
    pos, neg, desc = attribute_split(digits, "class:7")
    assert np.all(digits.labels[pos] == 7) and np.all(digits.labels[neg] != 7)
    assert len(pos) + len(neg) == len(digits) and "7" in desc
    pos, neg, _ = attribute_split(digits, "class:3-vs-8")
    assert np.all(digits.labels[pos] == 3) and np.all(digits.labels[neg] == 8)
    assert np.array_equal(confounders(digits, neg), digits.labels[neg])
    for name, measure in (("thickness", thickness), ("slant", slant)):
        pos, neg, desc = attribute_split(digits, name, quantile=0.3)
        assert len(pos) == len(neg) == int(0.3 * len(digits)) and not set(pos) & set(neg)
        values = measure(digits.images)
        assert values[pos].min() >= values[neg].max() and name in desc


def test_attribute_split_within_class_balances_the_class_cells(digits):
    pos, neg, desc = attribute_split(digits, "thickness", quantile=0.3, within_class=True)
    values = thickness(digits.images)
    assert "within each class" in desc and not set(pos) & set(neg)
    for c in range(10):
        members = np.flatnonzero(digits.labels == c)
        in_pos, in_neg = np.intersect1d(pos, members), np.intersect1d(neg, members)
        assert len(in_pos) == len(in_neg) == int(0.3 * len(members))
        assert values[in_pos].min() >= values[in_neg].max()
    global_pos, _, _ = attribute_split(digits, "thickness", quantile=0.3)
    assert not np.array_equal(np.sort(global_pos), np.sort(pos))  # classes differ in ink: the splits differ


def test_attribute_split_refuses_unknown_attributes(digits):
    with pytest.raises(InputError, match="class:A-vs-B"):
        attribute_split(digits, "boldness")
    with pytest.raises(InputError, match="unknown class '42'"):
        attribute_split(digits, "class:42")
    with pytest.raises(InputError, match="itself"):
        attribute_split(digits, "class:3-vs-3")
    with pytest.raises(InputError, match="quantile"):
        attribute_split(digits, "thickness", quantile=0.7)
    empty = Dataset("d", digits.images[:20], np.where(digits.labels[:20] == 0, 1, digits.labels[:20]), digits.classes)
    with pytest.raises(InputError, match="no images"):
        attribute_split(empty, "class:0")


# ----- vector store -----

def test_vector_store_round_trip_and_listing(settings):
    vector = torch.randn(4, 2, 2)
    path = save_vector(settings, "vae", SHA, "thick.v1", vector, {"space": "z", "method": "mean", "auc": 0.93})
    assert path.startswith(f"vectors/vae/{SHA[:16]}/") and path.endswith("/thick.v1.safetensors")  # its storage key
    loaded, meta = load_vector(settings, "vae", SHA, "thick.v1")
    assert torch.equal(loaded, vector) and meta["space"] == "z" and meta["shape"] == [4, 2, 2]
    save_vector(settings, "gan", "cd" * 32, "smile", torch.ones(3), {"space": "w", "attribute": "examples"})
    rows = list_vectors(settings)
    assert [(r["backend"], r["name"]) for r in rows] == [("gan", "smile"), ("vae", "thick.v1")]
    assert rows[1]["auc"] == 0.93 and rows[1]["method"] == "mean" and rows[1]["sha256"] == SHA and rows[1]["created"]
    assert [r["name"] for r in list_vectors(settings, backend="gan")] == ["smile"]
    assert list_vectors(settings, backend="sd") == []


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "", "x" * 65, "sp ace", "..", "-dash"])
def test_vector_store_refuses_unsafe_names(settings, name):
    with pytest.raises(InputError, match="invalid"):
        save_vector(settings, "vae", SHA, name, torch.ones(2), {"space": "z"})
    with pytest.raises(InputError, match="invalid"):
        load_vector(settings, "vae", SHA, name)
    assert list_vectors(settings) == [] and not any(settings.store_path.rglob("*.safetensors"))


def test_vector_store_missing_vector_names_the_stored_ones(settings):
    save_vector(settings, "vae", SHA, "thick", torch.ones(2), {"space": "z"})
    save_vector(settings, "vae", SHA, "slanted", torch.ones(2), {"space": "z"})
    with pytest.raises(NotFound, match=r"no vector 'thin'.*stored: slanted, thick"):
        load_vector(settings, "vae", SHA, "thin")
    with pytest.raises(NotFound, match="stored: none"):
        load_vector(settings, "vae", "ef" * 32, "thick")  # other weights do not see it
    with pytest.raises(InputError, match="space"):
        save_vector(settings, "vae", SHA, "nospace", torch.ones(2), {"method": "mean"})
    with pytest.raises(InputError, match="hex digest"):
        save_vector(settings, "vae", "../../etc", "x", torch.ones(2), {"space": "z"})


# ----- fits over a backend -----

class LinearBackend(Backend):
    """A linear 'autoencoder' over 28x28 images: z = W x, x = pinv(W) z. Row 0 of W measures ink."""

    name = "linear-test"
    version = "0"
    capabilities = frozenset({SAMPLE, ENCODE, DECODE})
    dim = 8

    def __init__(self) -> None:
        super().__init__(ModelInfo("tiny", "<memory>", "12" * 32))
        g = torch.Generator().manual_seed(0)
        w = torch.randn(self.dim, 784, generator=g) / 28 * 0.01  # small, so ink mass dominates the geometry
        w[0] = 1.0 / 784
        self.w = w
        self.w_inv = torch.linalg.pinv(w)

    @classmethod
    def available_models(cls, settings):
        return []

    @classmethod
    def load(cls, model, settings, device="cpu", dtype="float32"):
        return cls()

    def spaces(self, options=None):
        return {"z": LatentSpace("z", (self.dim,), "gaussian", frozenset({SEED, CODEC}))}

    def image_shape(self, options=None):
        return (1, 28, 28)

    def encode(self, images, options=None, seed=0, progress=None):
        return {"z": images.reshape(len(images), -1) @ self.w.T}

    def decode(self, point, options=None, progress=None):
        return (point["z"] @ self.w_inv.T).reshape(-1, 1, 28, 28).clamp(-1, 1)


class NoEncoderBackend(LinearBackend):
    name = "no-encoder"
    capabilities = frozenset({SAMPLE, DECODE})


@pytest.mark.parametrize("method", ["mean", "balanced", "classifier"])
def test_fit_attribute_vector_over_a_backend(settings, method):
    calls = []
    vector, meta = fit_attribute_vector(LinearBackend(), "digits", "thickness", method, settings, limit=600,
                                        progress=lambda step, total, message="", preview=None: calls.append(step))
    assert vector.shape == (LinearBackend.dim,)
    assert meta["space"] == "z" and meta["method"] == method and meta["attribute"] == "thickness"
    assert meta["dataset"] == "digits" and meta["auc_split"] == "held-out" and meta["weights_sha256"] == "12" * 32
    # balanced and classifier split within each class (floor(0.3 n) per class), mean over all 600 images
    assert meta["n_pos"] == meta["n_neg"] and (meta["n_pos"] == 180 if method == "mean" else
                                               170 <= meta["n_pos"] < 180)
    assert meta["scale"] == "std" and meta["norm"] == pytest.approx(meta["sigma"], rel=1e-5)
    assert meta["separation"] > 1.0  # the two sides lie more than one standard deviation apart
    assert meta["auc"] > 0.9  # ink mass is linear in z[0], so the vector separates thick from thin
    assert vector[0] > 0  # and it points towards more ink
    assert calls


def test_fit_attribute_vector_class_attribute_and_errors(settings):
    vector, meta = fit_attribute_vector(LinearBackend(), "digits", "class:0", "balanced", settings, limit=600)
    labels = load_dataset("digits", "train", limit=600, settings=settings).labels
    assert meta["n_pos"] == np.sum(labels == 0) and meta["n_neg"] == np.sum(labels != 0)
    assert 0.0 <= meta["auc"] <= 1.0 and meta["description"].startswith("class 0")
    with pytest.raises(InputError, match="cannot encode"):
        fit_attribute_vector(NoEncoderBackend(), "digits", "thickness", "mean", settings, limit=100)
    with pytest.raises(InputError, match="unknown attribute"):
        fit_attribute_vector(LinearBackend(), "digits", "boldness", "mean", settings, limit=100)


def test_fit_example_vector_is_the_mean_difference_of_prior_latents():
    backend = LinearBackend()
    vector, meta = fit_example_vector(backend, [1, 2, 3], [4, 5])
    expected = backend.sample_prior("z", [1, 2, 3]).mean(0) - backend.sample_prior("z", [4, 5]).mean(0)
    assert torch.allclose(vector, expected, atol=1e-6)
    assert meta["space"] == "z" and meta["auc_split"] == "in-sample" and meta["auc"] == 1.0
    assert meta["with_seeds"] == [1, 2, 3] and meta["n_pos"] == 3
    with pytest.raises(InputError, match="both with and without"):
        fit_example_vector(backend, [1, 2], [2, 3])
    with pytest.raises(InputError, match="at least one"):
        fit_example_vector(backend, [], [1])
    with pytest.raises(InputError, match="confounder"):
        fit_example_vector(backend, [1], [2], method="balanced")


# ----- quality on the shipped VAE (issue 2: thickness +2 edit) -----

@pytest.mark.slow
def test_thickness_edit_at_plus_two_thickens_and_keeps_the_class(settings):
    from studio.classifier import load_classifier
    from studio.ops.edit import apply_vector
    from studio.ops.vectors import DEFAULT_METHOD
    from studio.registry import get_backend_class

    backend = get_backend_class("vae").load(None, settings)
    classifier = load_classifier()
    vector, meta = fit_attribute_vector(backend, "mnist", "thickness", DEFAULT_METHOD, settings, limit=5000)
    assert meta["auc"] > 0.9
    images = load_dataset("mnist", "test", settings=settings).images[-200:]  # the bench uses the first 500
    point = backend.encode(images)
    reconstruction = backend.decode(point)
    edited = backend.decode(apply_vector(point, meta["space"], vector, [2.0]))
    thicker = np.mean(thickness(edited) > thickness(reconstruction))
    kept = np.mean(classifier.predict(edited).numpy() == classifier.predict(images).numpy())
    assert thicker >= 0.9, f"only {thicker:.1%} thicker"
    assert kept >= 0.9, f"class kept for only {kept:.1%}"
