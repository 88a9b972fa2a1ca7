"""The compression round trip over the contract, with a PCA backend fitted on sklearn's 8x8 digits."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from studio.contract import CODEC, DECODE, ENCODE, SEED, Backend, LatentSpace, ModelInfo
from studio.errors import InputError
from studio.images import to_pil
from studio.ops import compression as comp
from studio.ops.metrics import PSNR_CAP_DB, psnr, ssim, ssim_window

COMPONENTS = 12


@pytest.fixture(autouse=True)
def _studio_home(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))


def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.from_numpy((load_digits().images / 8.0 - 1.0).astype(np.float32)).unsqueeze(1)


class PCABackend(Backend):
    """A linear codec: PCA scores of 8x8 digits, per-component coding std declared from the fit."""

    name = "pca-test"
    version = "0"
    capabilities = frozenset({ENCODE, DECODE})

    def __init__(self, train: torch.Tensor, components: int = COMPONENTS) -> None:
        super().__init__(ModelInfo("pca", "", "0" * 64))
        x = train.reshape(len(train), -1).double()
        self.mean = x.mean(0)
        _, s, vt = torch.linalg.svd(x - self.mean, full_matrices=False)
        self.basis = vt[:components]
        self.stds = (s[:components] / math.sqrt(len(x) - 1)).tolist()

    @classmethod
    def available_models(cls, settings):
        return []

    @classmethod
    def load(cls, model, settings, device="cpu", dtype="float32"):
        return cls(_digits())

    def spaces(self, options=None):
        return {"z": LatentSpace("z", (len(self.stds),), "none", frozenset({SEED, CODEC}),
                                 coding_mean=0.0, coding_std=tuple(self.stds))}

    def image_shape(self, options=None):
        return (1, 8, 8)

    def encode(self, images, options=None, seed=0, progress=None):
        z = (images.reshape(len(images), -1).double() - self.mean) @ self.basis.T
        return {"z": z.float()}

    def decode(self, point, options=None, progress=None):
        x = point["z"].double() @ self.basis + self.mean
        return x.reshape(-1, 1, 8, 8).clamp(-1, 1).float()


class DecodeOnly(PCABackend):
    capabilities = frozenset({DECODE})


@pytest.fixture(scope="module")
def data():
    images = _digits()
    return PCABackend(images[:1500]), images[1500:1560]


def _space(shape=(3, 2, 2), mean=0.0, std=1.0) -> LatentSpace:
    return LatentSpace("c", shape, "none", frozenset({CODEC}), coding_mean=mean, coding_std=std)


# ----- quantiser and payloads -----

@pytest.mark.parametrize("bits", [0, 13, -1, 2.5, True, "8", None])
def test_bits_out_of_range_is_an_input_error(bits, data):
    backend, images = data
    space = backend.space_for(CODEC)
    z = torch.zeros(2, COMPONENTS)
    for call in (lambda: comp.quantise(z, space, bits), lambda: comp.compress(z, space, bits),
                 lambda: comp.dequantise(np.zeros((2, COMPONENTS), dtype=int), space, bits),
                 lambda: comp.roundtrip(backend, images[:2], bits)):
        with pytest.raises(InputError, match=f"^bits must be between 1 and 12, got {bits}$"):
            call()


def test_quantiser_bins_clip_and_centroids():
    space = _space(mean=(1.0, -2.0, 0.5), std=(0.5, 2.0, 1.0))  # per channel
    mean, std = comp.coding_stats(space)
    assert mean.shape == (12,) and std[4] == 2.0 and mean[-1] == 0.5
    z = torch.from_numpy(np.stack([mean - 10 * std, mean + 10 * std, mean, mean + 1.5 * std]).reshape(4, 3, 2, 2))
    sym = comp.quantise(z, space, 3)
    assert sym.shape == (4, 3, 2, 2) and sym.dtype == np.int64
    assert np.all(sym[0] == 0) and np.all(sym[1] == 7) and np.all(sym[2] == 4) and np.all(sym[3] == 5)
    back = comp.dequantise(sym, space, 3).double().numpy().reshape(4, -1)
    # Bins are 1 std wide over [-4, 4] std; an inner bin's centroid lies inside it, pulled towards the mean.
    assert np.all(back[3] > mean + 1.0 * std) and np.all(back[3] < mean + 1.5 * std)
    assert np.all(back[2] > mean) and np.all(back[2] < mean + 0.5 * std)
    assert np.all(back[0] < mean - 3.0 * std)
    # One bit: the half-normal centroid, +-sqrt(2/pi) std.
    one = comp.dequantise(np.array([[0] * 12, [1] * 12]), space, 1).double().numpy().reshape(2, -1)
    np.testing.assert_allclose(one[1], mean + math.sqrt(2 / math.pi) * std, rtol=1e-6)
    with pytest.raises(InputError, match="NaN"):
        comp.quantise(torch.full((1, 3, 2, 2), float("nan")), space, 4)
    with pytest.raises(InputError, match="does not fit"):
        comp.quantise(torch.zeros(1, 12), space, 4)
    with pytest.raises(InputError, match="must lie in"):
        comp.dequantise(np.full((1, 12), 8), space, 3)


def test_coding_stats_shapes():
    assert comp.coding_stats(_space())[0].shape == (12,)
    assert comp.coding_stats(_space(std=tuple(range(1, 13))))[1][11] == 12
    with pytest.raises(ValueError, match="expected 1, 3"):
        comp.coding_stats(_space(mean=(0.0, 1.0)))
    with pytest.raises(ValueError, match="> 0"):
        comp.coding_stats(_space(std=0.0))


def test_payloads_are_bytes_and_decode_exactly_to_the_symbols(data):
    backend, images = data
    space = backend.space_for(CODEC)
    z = backend.encode(images)["z"]
    for bits in (1, 4, 8, 12):
        payloads = comp.compress(z, space, bits)
        assert len(payloads) == len(images) and all(type(p) is bytes for p in payloads)
        symbols = comp.quantise(z, space, bits)
        np.testing.assert_array_equal(comp.decompress_symbols(payloads, space, bits), symbols)
        assert torch.equal(comp.decompress(payloads, space, bits), comp.dequantise(symbols, space, bits))
    with pytest.raises(InputError, match="must be bytes"):
        comp.decompress(["abc"], space, 4)
    assert comp.decompress([], space, 4).shape == (0, COMPONENTS)


def test_more_bits_means_lower_latent_error_and_more_bytes(data):
    backend, images = data
    space = backend.space_for(CODEC)
    z = backend.encode(images)["z"]
    errors, sizes = [], []
    for bits in range(1, 13):
        payloads = comp.compress(z, space, bits)
        errors.append(float(((comp.decompress(payloads, space, bits) - z) ** 2).mean()))
        sizes.append(np.mean([len(p) for p in payloads]))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert all(a < b for a, b in zip(sizes, sizes[1:], strict=False)), sizes
    # Fine quantisation: the error is the uniform quantiser's step**2 / 12 (bins are 8 std / 4096 wide).
    step = 8 * np.array(backend.stds) / 4096
    assert errors[-1] < 2 * float(np.mean(step**2 / 12))


# ----- baselines -----

def _photo() -> Image.Image:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:48, 0:48]
    rgb = np.stack([xx * 5, yy * 5, (xx + yy) * 2], -1) + rng.normal(0, 6, (48, 48, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("make", [comp.jpeg_baseline, comp.webp_baseline])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_baselines_never_exceed_the_budget(make, mode):
    image = _photo().convert(mode)
    smallest = make(image, 0).smallest
    for budget in (0, smallest.n_bytes - 1, smallest.n_bytes, smallest.n_bytes + 37, 400, 900, 5000):
        result = make(image, budget)
        assert result.max_bytes == budget
        if result.matched is None:
            assert budget < result.smallest.n_bytes
            continue
        m = result.matched
        assert m.n_bytes == len(m.data) <= budget
        assert m.image.mode == mode and m.image.size == image.size
        # The decoded file's metrics are what a direct computation gives.
        decoded = Image.open(io.BytesIO(m.data)).convert(mode)
        a = np.asarray(image, dtype=np.float32) / 127.5 - 1
        b = np.asarray(decoded, dtype=np.float32) / 127.5 - 1
        a, b = (x[None, None] if x.ndim == 2 else x.transpose(2, 0, 1)[None] for x in (a, b))
        assert m.psnr == pytest.approx(float(psnr(a, b)[0])) and m.ssim == pytest.approx(float(ssim(a, b)[0]))
        if m.quality < 100 and make is comp.jpeg_baseline:  # the highest quality that fits
            bigger = io.BytesIO()
            image.save(bigger, "JPEG", quality=m.quality + 1, optimize=True)
            assert len(bigger.getvalue()) > budget
    big = make(image, 10**6).matched
    assert big is not None and big.quality == 100


def test_palette_and_alpha_images_are_compared_in_colour():
    for mode in ("P", "RGBA"):
        result = comp.webp_baseline(_photo().convert(mode), 10**6)
        decoded = np.asarray(result.matched.image, dtype=np.int64)
        assert result.matched.image.mode == "RGB" and np.abs(decoded[..., 0] - decoded[..., 2]).mean() > 20
        assert result.matched.psnr > 20


# ----- the round trip -----

def test_roundtrip_metrics_match_a_direct_computation(data):
    backend, images = data
    steps = []
    result = comp.roundtrip(backend, images, 6, progress=lambda s, t, message="", preview=None: steps.append((s, t)),
                            batch_size=25)
    m = result.metrics
    assert steps[0] == (0, 60) and steps[-1] == (60, 60) and len(steps) == 4
    for key in ("psnr", "ssim", "bytes_per_image", "bpp", "psnr_unquantised", "ssim_unquantised", "latent_rmse",
                "ideal_bytes_per_image", "jpeg_coverage", "webp_coverage", "jpeg_min_bytes", "webp_min_bytes",
                "jpeg_psnr_at_min_bytes", "webp_psnr_at_min_bytes"):
        assert math.isfinite(m[key]), key
    for key in ("jpeg_psnr", "webp_psnr", "jpeg_ssim", "webp_ssim", "jpeg_bytes", "webp_bytes"):
        assert key in m
    assert m["n"] == 60 and m["bits"] == 6 and m["latent_elements"] == COMPONENTS
    json.dumps(m, allow_nan=False)

    space = backend.space_for(CODEC)
    z = backend.encode(images)["z"]
    payloads = comp.compress(z, space, 6)
    assert result.payloads == payloads
    expected = backend.decode({"z": comp.dequantise(comp.quantise(z, space, 6), space, 6)})
    np.testing.assert_allclose(result.reconstructions.numpy(), expected.numpy(), atol=1e-6)
    assert m["psnr"] == pytest.approx(float(psnr(images, expected).mean()))
    assert m["ssim"] == pytest.approx(float(ssim(images, expected).mean()))
    assert m["psnr_unquantised"] == pytest.approx(float(psnr(images, backend.decode({"z": z})).mean()))
    sizes = [len(p) for p in payloads]
    assert m["bytes_per_image"] == pytest.approx(np.mean(sizes))
    assert m["bpp"] == pytest.approx(8 * np.mean(sizes) / 64)
    assert abs(m["bytes_per_image"] - m["ideal_bytes_per_image"]) <= 1  # 1 termination bit, whole bytes
    assert m["psnr"] < m["psnr_unquantised"]

    # Baselines were matched image by image against our payload's size.
    for payload, jpeg, webp in zip(payloads, result.jpeg, result.webp, strict=True):
        assert jpeg.max_bytes == webp.max_bytes == len(payload)
        for r in (jpeg, webp):
            assert r.matched is None or r.matched.n_bytes <= len(payload)
    covered = np.array([r.matched is not None for r in result.webp])
    assert m["webp_coverage"] == pytest.approx(covered.mean())
    if covered.any():
        assert m["webp_psnr"] == pytest.approx(np.mean([r.matched.psnr for r in result.webp if r.matched]))
        assert m["psnr_on_webp_covered"] == pytest.approx(result.per_image["psnr"][covered].mean())
    else:
        assert m["webp_psnr"] is None and m["psnr_on_webp_covered"] is None
    assert m["jpeg_min_bytes"] == pytest.approx(np.mean([r.smallest.n_bytes for r in result.jpeg]))


def test_roundtrip_exposes_its_unquantised_reconstructions(data):
    backend, images = data
    result = comp.roundtrip(backend, images, 6, batch_size=25, baselines=False)
    exact = backend.decode(backend.encode(images))
    assert result.unquantised.shape == images.shape
    np.testing.assert_allclose(result.unquantised.numpy(), exact.clamp(-1, 1).numpy(), atol=1e-6)
    assert result.metrics["psnr_unquantised"] == pytest.approx(float(psnr(images, result.unquantised).mean()))


def test_an_8x8_payload_is_far_below_any_jpeg(data):
    backend, images = data
    m = comp.roundtrip(backend, images[:5], 4).metrics
    # ~12 elements at ~2.5 bits: a few bytes. No JPEG file is that small, and the report says so.
    assert m["bytes_per_image"] < 12 < m["jpeg_min_bytes"]
    assert m["jpeg_psnr"] is None and m["jpeg_coverage"] == 0.0 and m["jpeg_bytes"] is None


def test_roundtrip_refuses_bad_input(data):
    backend, images = data
    with pytest.raises(InputError, match="shape"):
        comp.roundtrip(backend, torch.zeros(2, 1, 9, 9), 4)
    with pytest.raises(InputError, match="at least one image"):
        comp.roundtrip(backend, images[:0], 4)
    decode_only = DecodeOnly(images)
    with pytest.raises(InputError, match="cannot encode"):
        comp.roundtrip(decode_only, images[:2], 4)


def test_single_image_panel(data):
    backend, images = data
    result = comp.roundtrip(backend, images[:1], 8)
    original = to_pil(images[:1])[0]
    panel = comp.roundtrip_panel(result, original)
    assert panel.width >= 4 * 8 * 21 and panel.height > 8 * 21  # upscaled from 8x8
    # The upscaled original sits in the first tile, pixel for pixel.
    scale = math.ceil(168 / 8)
    tile = panel.crop((8, 8, 8 + 8 * scale, 8 + 8 * scale)).convert("L")
    assert tile.resize((8, 8), Image.Resampling.NEAREST).tobytes() == original.tobytes()
    with pytest.raises(ValueError, match="4 labels"):
        comp.side_by_side(original, original, None, None, ["a"])


class ChannelCodec(Backend):
    """An SD-like shape: RGB 16x16 images, a (4, 2, 2) codec latent with per-channel coding statistics."""

    name = "channel-test"
    version = "0"
    capabilities = frozenset({ENCODE, DECODE})

    def __init__(self) -> None:
        super().__init__(ModelInfo("random", "", "0" * 64))
        self.weight = torch.randn(16, 3 * 16 * 16, generator=torch.Generator().manual_seed(0)) / 16
        self.inverse = torch.linalg.pinv(self.weight)

    @classmethod
    def available_models(cls, settings):
        return []

    @classmethod
    def load(cls, model, settings, device="cpu", dtype="float32"):
        return cls()

    def spaces(self, options=None):
        return {"codec": LatentSpace("codec", (4, 2, 2), "none", frozenset({CODEC}),
                                     coding_mean=(0.0, 0.1, -0.1, 0.0), coding_std=(0.5, 0.6, 0.7, 0.8))}

    def image_shape(self, options=None):
        return (3, 16, 16)

    def encode(self, images, options=None, seed=0, progress=None):
        return {"codec": (images.reshape(len(images), -1) @ self.weight.T).reshape(-1, 4, 2, 2)}

    def decode(self, point, options=None, progress=None):
        return (point["codec"].reshape(len(point["codec"]), -1) @ self.inverse.T).reshape(-1, 3, 16, 16).clamp(-1, 1)


def test_roundtrip_on_an_rgb_backend_with_a_multi_dimensional_codec_space():
    backend = ChannelCodec()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    result = comp.roundtrip(backend, images, 10)
    space = backend.space_for(CODEC)
    z = backend.encode(images)["codec"]
    assert [len(p) for p in result.payloads] == [len(p) for p in comp.compress(z, space, 10)]
    np.testing.assert_array_equal(comp.decompress_symbols(result.payloads, space, 10), comp.quantise(z, space, 10))
    assert result.reconstructions.shape == (3, 3, 16, 16) and result.metrics["latent_elements"] == 16
    assert result.metrics["bpp"] == pytest.approx(8 * result.metrics["bytes_per_image"] / 256)
    assert all(math.isfinite(result.metrics[k]) for k in ("psnr", "ssim", "webp_min_bytes", "jpeg_psnr_at_min_bytes"))
    assert result.webp[0].smallest.image.mode == "RGB"


# ----- metrics -----

def test_metrics_on_known_values():
    a = torch.zeros(2, 1, 28, 28)
    b = a.clone()
    b[1] += 0.2  # 0.1 on [0, 1]: mse 0.01, 20 dB
    np.testing.assert_allclose(psnr(a, b), [PSNR_CAP_DB, 20.0])
    s = ssim(a, b)
    assert s[0] == pytest.approx(1.0) and s[1] < 1.0
    rgb = torch.rand(3, 3, 8, 8) * 2 - 1
    assert np.all(ssim(rgb, rgb) == pytest.approx(1.0)) and np.all(psnr(rgb, rgb) == PSNR_CAP_DB)
    noisy = (rgb + 0.3 * torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert np.all(ssim(rgb, noisy) < 0.99)
    assert (ssim_window(28, 28), ssim_window(8, 8), ssim_window(6, 9), ssim_window(3, 3)) == (7, 7, 5, 3)
    with pytest.raises(ValueError, match="at least 3x3"):
        ssim(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="differ"):
        psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


# ----- AVIF and downscaled WebP baselines; the baselines list -----

def _digit28(index: int = 0) -> Image.Image:
    """An 8x8 sklearn digit enlarged to 28x28: MNIST's size and look, offline."""
    from sklearn.datasets import load_digits

    small = (load_digits().images[index] * 255 / 16).astype(np.uint8)
    return Image.fromarray(small, "L").resize((28, 28), Image.Resampling.BILINEAR)


def test_downscaled_webp_fits_budgets_that_full_size_webp_cannot():
    image = _digit28()
    full_min = comp.webp_baseline(image, 0).smallest.n_bytes
    none = comp.downscaled_webp_baseline(image, 0)
    assert none.matched is None and none.format == "webp_downscaled"
    assert none.smallest.n_bytes < full_min  # the reason it exists: a smaller file than any full-size WebP
    assert comp.downscale_sizes(28, 28) == [(21, 21), (17, 17), (14, 14), (12, 12), (10, 10), (8, 8), (6, 6), (4, 4)]
    ref = np.asarray(image, dtype=np.float64)[None, None] / 127.5 - 1
    for budget in (none.smallest.n_bytes, full_min - 1, full_min + 40, 300):
        result = comp.downscaled_webp_baseline(image, budget)
        m = result.matched
        assert m is not None and m.n_bytes == len(m.data) <= budget and m.format == "webp_downscaled"
        decoded = Image.open(io.BytesIO(m.data))
        assert decoded.format == "WEBP" and decoded.size == m.scaled_to and m.scaled_to[0] < 28
        assert m.image.size == (28, 28)
        # Scored as a viewer would see it: decoded, enlarged back with Lanczos, against the original.
        up = np.asarray(decoded.convert("L").resize((28, 28), Image.Resampling.LANCZOS), dtype=np.float64)
        up = up[None, None] / 127.5 - 1
        assert m.psnr == pytest.approx(float(psnr(ref, up)[0])) and m.ssim == pytest.approx(float(ssim(ref, up)[0]))
        # The best size wins: no other size's best fitting file scores higher.
        for size in comp.downscale_sizes(28, 28):
            small = image.resize(size, Image.Resampling.LANCZOS)
            fitting = [q for q in (0, 25, 50, 75, 100)
                       if len(comp._pil_bytes(small, "WEBP", quality=q, method=6)) <= budget]
            if fitting:
                data = comp._pil_bytes(small, "WEBP", quality=max(fitting), method=6)
                other = Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.Resampling.LANCZOS)
                other = np.asarray(other, dtype=np.float64)[None, None] / 127.5 - 1
                assert float(psnr(ref, other)[0]) <= m.psnr + 1e-9
    assert comp.downscaled_webp_baseline(image, full_min - 1).matched is not None  # full size fits nothing there


def test_avif_baseline_obeys_the_budget():
    if not comp.avif_available():
        with pytest.raises(InputError, match="AVIF"):
            comp.avif_baseline(_photo(), 10**6)
        return
    image = _photo()
    smallest = comp.avif_baseline(image, 0).smallest
    for budget in (smallest.n_bytes - 1, smallest.n_bytes, 3000):
        m = comp.avif_baseline(image, budget).matched
        assert (m is None) == (budget < smallest.n_bytes)
        if m is not None:
            assert m.n_bytes <= budget and Image.open(io.BytesIO(m.data)).format == "AVIF" and m.psnr > 15


def _mnist_like(n: int) -> torch.Tensor:
    return torch.cat([torch.from_numpy(np.asarray(_digit28(i), dtype=np.float32) / 127.5 - 1)[None, None]
                      for i in range(n)])


class PixelCodec(PCABackend):
    """PCA of 28x28 enlarged digits with enough components that payloads reach tens of bytes."""

    def __init__(self, train: torch.Tensor, components: int) -> None:
        super().__init__(train, components)

    def image_shape(self, options=None):
        return (1, 28, 28)

    def decode(self, point, options=None, progress=None):
        x = point["z"].double() @ self.basis + self.mean
        return x.reshape(-1, 1, 28, 28).clamp(-1, 1).float()


def test_roundtrip_lists_every_baseline_including_downscaled_webp_within_our_bytes():
    train = _mnist_like(60)
    backend = PixelCodec(train[:48], 40)
    images = train[48:52]
    result = comp.roundtrip(backend, images, 12)
    m = result.metrics
    assert [e["codec"] for e in m["baselines"]] == ["jpeg", "webp", "avif", "webp_downscaled"]
    json.dumps(m, allow_nan=False)
    sizes = [len(p) for p in result.payloads]
    assert min(sizes) > 46  # big enough for a downscaled WebP, too small for JPEG and AVIF
    by_codec = {"jpeg": result.jpeg, "webp": result.webp, "avif": result.avif,
                "webp_downscaled": result.webp_downscaled}
    for entry in m["baselines"]:
        results = by_codec[entry["codec"]]
        if not entry["available"]:
            assert entry["codec"] == "avif" and results == [] and entry["psnr"] is None
            continue
        assert [r.max_bytes for r in results] == sizes  # matched to each image's own payload
        fits = [r.matched for r in results if r.matched is not None]
        assert all(r.matched.n_bytes <= s for r, s in zip(results, sizes, strict=True) if r.matched)
        assert entry["coverage"] == pytest.approx(len(fits) / len(sizes))
        if fits:
            assert entry["bytes_per_image"] == pytest.approx(np.mean([f.n_bytes for f in fits]))
            assert entry["psnr"] == pytest.approx(np.mean([f.psnr for f in fits]))
    small = next(e for e in m["baselines"] if e["codec"] == "webp_downscaled")
    assert small["available"] and small["coverage"] == 1.0 and all(r.matched.scaled_to for r in result.webp_downscaled)
    # The best baseline, image by image, over every codec whose file fit.
    best = np.array([max(r.matched.psnr for r in group if r.matched is not None)
                     for group in zip(result.jpeg, result.webp, result.webp_downscaled, strict=True)])
    assert m["best_baseline_coverage"] == 1.0 and m["best_baseline_psnr"] == pytest.approx(best.mean())
    assert m["psnr_gain_over_best_baseline"] == pytest.approx((result.per_image["psnr"] - best).mean())
    assert m["psnr_gain_over_best_baseline_min"] == pytest.approx((result.per_image["psnr"] - best).min())


def test_an_unavailable_avif_is_listed_as_such_not_a_crash(data, monkeypatch):
    monkeypatch.setattr(comp, "avif_available", lambda: False)
    backend, images = data
    m = comp.roundtrip(backend, images[:3], 6).metrics
    avif = next(e for e in m["baselines"] if e["codec"] == "avif")
    assert avif["available"] is False and "AVIF" in avif["reason"] and avif["psnr"] is None
    assert "avif_psnr" not in m and m["jpeg_coverage"] == 0.0
    with pytest.raises(InputError, match="AVIF"):
        comp.avif_baseline(_photo(), 10**6)


def test_baseline_files_come_from_the_cache_unchanged():
    image = _digit28(3)
    comp.set_encode_cache(64)
    first = comp._pil_bytes(image, "WEBP", quality=40, method=6)
    again = comp._pil_bytes(image, "WEBP", quality=40, method=6)
    buf = io.BytesIO()
    image.save(buf, "WEBP", quality=40, method=6)
    assert first == again == buf.getvalue() and comp._cached_encode.cache_info().hits == 1
    other = comp._pil_bytes(_digit28(4), "WEBP", quality=40, method=6)
    assert other != first  # keyed on the pixels
    comp.set_encode_cache(comp.ENCODE_CACHE_SIZE)
