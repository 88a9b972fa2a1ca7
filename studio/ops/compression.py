"""The compression round trip, written once over the contract: encode -> quantise -> entropy-code -> bytes ->
decode, with PSNR/SSIM/bits-per-pixel and JPEG/WebP baselines at matched bytes.

Quantiser: element d of the CODEC space (coding mean m_d, std s_d, from its LatentSpace) is clipped to
[m_d - R s_d, m_d + R s_d] with R = RANGE_STDS = 4 (a N(0, 1) value falls outside with probability 6e-5)
and cut into 2**bits equal bins. Dequantising returns the bin's centroid under N(m_d, s_d), the
least-squares reconstruction under the coding model: close to the bin midpoint for fine bins, and much
better than it for coarse ones (1 bit gives m_d +- 0.80 s_d, not +- 2 s_d).

Entropy model: the same Gaussian, discretised on those bins (`studio.ops.entropy.gaussian_tables`). Encoder
and decoder derive everything from (space, bits), so a payload is only the arithmetic-code bytes of one image.

Baselines: Pillow JPEG (optimize=True, quality 1..100), WebP (quality 0..100, method 4 and 6) and AVIF
(quality 0..100, where Pillow has it) at the highest quality whose whole file (headers included) is no
larger than our payload for the same image; and WebP of a downscaled image (the honest baseline at tiny
budgets): the image is shrunk (Lanczos) to each of `DOWNSCALE_SIDES`, coded as WebP (method 6) at the
highest quality that fits, decoded and enlarged back (Lanczos) for scoring; the size with the best PSNR
wins, per image. When no quality fits, the matched result is None and the smallest file the encoder can
make is reported. `roundtrip` lists them all under `metrics["baselines"]`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from studio.contract import CODEC, DECODE, ENCODE, Backend, LatentSpace, Progress, no_progress
from studio.errors import InputError
from studio.ops.entropy import FrequencyTables, decode_symbols, encode_symbols, gaussian_tables
from studio.ops.metrics import PSNR_CAP_DB, psnr, ssim

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

RANGE_STDS = 4.0
MIN_BITS, MAX_BITS = 1, 12
JPEG_QUALITIES = (1, 100)  # libjpeg treats 0 as 1
WEBP_QUALITIES = (0, 100)
WEBP_METHODS = (4, 6)  # Pillow's default and the slowest, tightest one; the better fit wins
AVIF_QUALITIES = (0, 100)
DOWNSCALE_FRACTIONS = (0.75, 0.6, 0.5, 0.43, 0.36, 0.29, 0.22, 0.15)  # 28 px -> 21, 17, 14, 12, 10, 8, 6, 4
DOWNSCALE_METHOD = 6
RESAMPLE = Image.Resampling.LANCZOS  # measured on MNIST: 0.2-1.6 dB above bicubic when enlarging 4-21 px
BASELINE_CODECS = ("jpeg", "webp", "avif", "webp_downscaled")
ENCODE_CACHE_SIZE = 1 << 15  # files kept per process; only images of up to CACHED_PIXEL_BYTES are cached
CACHED_PIXEL_BYTES = 1 << 14


# ----- quantiser -----

def check_bits(bits: object) -> int:
    """`bits` as an int in 1..12, or InputError."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise InputError(f"bits must be between {MIN_BITS} and {MAX_BITS}, got {bits}")
    return int(bits)


def coding_stats(space: LatentSpace) -> tuple[np.ndarray, np.ndarray]:
    """Per-element coding mean and std (D,) of a space.

    `coding_mean`/`coding_std` may be a scalar, one value per element, or one value per channel (the
    first dimension of the shape), which is broadcast over the rest.
    """
    size = math.prod(space.shape)
    out = []
    for what, value in (("coding_mean", space.coding_mean), ("coding_std", space.coding_std)):
        a = np.asarray(value, dtype=np.float64).reshape(-1)
        if a.size == 1:
            a = np.full(size, a[0])
        elif a.size == space.shape[0] and a.size != size:
            a = np.repeat(a, size // space.shape[0])
        elif a.size != size:
            raise ValueError(f"space {space.name!r}: {what} has {a.size} values; expected 1, "
                             f"{space.shape[0]} (per channel) or {size} (per element)")
        out.append(a)
    mean, std = out
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError(f"space {space.name!r}: coding_mean must be finite and coding_std finite and > 0")
    return mean, std


@lru_cache(maxsize=16)
def _centroids(bits: int) -> np.ndarray:
    """Centroid of each bin of the standard normal (in std units), outer bins including the tails."""
    from scipy.special import ndtr

    levels = 1 << bits
    edges = -RANGE_STDS + 2 * RANGE_STDS * np.arange(levels + 1) / levels
    edges[0], edges[-1] = -np.inf, np.inf
    mass = np.diff(ndtr(edges))
    density = np.exp(-0.5 * edges**2) / math.sqrt(2 * math.pi)
    midpoints = -RANGE_STDS + 2 * RANGE_STDS * (np.arange(levels) + 0.5) / levels
    with np.errstate(divide="ignore", invalid="ignore"):
        centroids = (density[:-1] - density[1:]) / mass
    return np.where(mass > 1e-300, centroids, midpoints)


def coding_tables(space: LatentSpace, bits: int) -> FrequencyTables:
    """The entropy coder's tables for a space at `bits` (both sides build the same ones)."""
    try:
        return _cached_tables(space, bits)
    except TypeError:  # a space holding lists is not hashable: build without the cache
        return _build_tables(space, bits)


def _build_tables(space: LatentSpace, bits: int) -> FrequencyTables:
    mean, std = coding_stats(space)
    return gaussian_tables(1 << bits, mean, std, mean - RANGE_STDS * std, mean + RANGE_STDS * std)


_cached_tables = lru_cache(maxsize=16)(_build_tables)


def _flat(z: torch.Tensor | np.ndarray, space: LatentSpace) -> np.ndarray:
    a = z.detach().cpu().double().numpy() if hasattr(z, "detach") else np.asarray(z, dtype=np.float64)
    if tuple(a.shape[1:]) != tuple(space.shape):
        raise InputError(f"latent of shape {list(a.shape)} does not fit space {space.name!r} of shape "
                         f"{list(space.shape)} (batch first)")
    return a.reshape(len(a), -1)


def quantise(z: torch.Tensor | np.ndarray, space: LatentSpace, bits: int) -> np.ndarray:
    """Latents (N, *space.shape) -> int64 symbols of the same shape, each in [0, 2**bits)."""
    bits = check_bits(bits)
    flat = _flat(z, space)
    if not np.all(np.isfinite(flat)):
        raise InputError("the latent holds NaN or infinite values; it cannot be quantised")
    mean, std = coding_stats(space)
    levels = 1 << bits
    units = (flat - mean) / std
    symbols = np.floor((units + RANGE_STDS) * (levels / (2 * RANGE_STDS)))
    return np.clip(symbols, 0, levels - 1).astype(np.int64).reshape((len(flat), *space.shape))


def dequantise(symbols: np.ndarray, space: LatentSpace, bits: int) -> torch.Tensor:
    """Symbols (N, *space.shape) or (N, D) -> float32 latents (N, *space.shape) at their bins' centroids."""
    import torch

    bits = check_bits(bits)
    sym = np.asarray(symbols)
    size = math.prod(space.shape)
    if sym.ndim < 1 or sym.size != len(sym) * size:
        raise InputError(f"symbols of shape {list(sym.shape)} do not fit space {space.name!r} of shape "
                         f"{list(space.shape)} (batch first)")
    sym = sym.reshape(len(sym), size)
    if sym.size and (sym.min() < 0 or sym.max() >= 1 << bits):
        raise InputError(f"symbols must lie in [0, {(1 << bits) - 1}] for {bits} bits")
    mean, std = coding_stats(space)
    z = mean + std * _centroids(bits)[sym]
    return torch.from_numpy(z.astype(np.float32).reshape((len(sym), *space.shape)))


def compress(z: torch.Tensor | np.ndarray, space: LatentSpace, bits: int) -> list[bytes]:
    """Latents (N, *space.shape) -> one payload per image: whole bytes, nothing but the code."""
    symbols = quantise(z, space, bits).reshape(len(z), -1)
    tables = coding_tables(space, check_bits(bits))
    return [encode_symbols(row, tables) for row in symbols]


def decompress_symbols(payloads: Sequence[bytes], space: LatentSpace, bits: int) -> np.ndarray:
    """Payloads -> int64 symbols (N, *space.shape)."""
    tables = coding_tables(space, check_bits(bits))
    for p in payloads:
        if not isinstance(p, (bytes, bytearray, memoryview)):
            raise InputError(f"a payload must be bytes, got {type(p).__name__}")
    rows = [decode_symbols(p, tables) for p in payloads]
    flat = np.stack(rows) if rows else np.zeros((0, tables.count), dtype=np.int64)
    return flat.reshape((len(flat), *space.shape))


def decompress(payloads: Sequence[bytes], space: LatentSpace, bits: int) -> torch.Tensor:
    """Payloads -> dequantised latents (N, *space.shape), float32."""
    return dequantise(decompress_symbols(payloads, space, bits), space, bits)


# ----- baselines -----

@dataclass
class EncodedImage:
    """One baseline file: its bytes, settings, decoded image and quality against the original."""

    format: str
    quality: int
    data: bytes
    image: Image.Image
    psnr: float
    ssim: float
    method: int | None = None
    scaled_to: tuple[int, int] | None = None  # (width, height) coded, for a downscaled baseline

    @property
    def n_bytes(self) -> int:
        return len(self.data)


@dataclass
class BaselineResult:
    """The best file within `max_bytes` (None when none fits) and the lowest-quality file (`smallest`).

    File size grows with quality almost always, so `smallest` is in practice the smallest file the encoder
    makes; it is what the report shows when nothing fits.
    """

    format: str
    max_bytes: int
    matched: EncodedImage | None
    smallest: EncodedImage


def _image_array(image: Image.Image, mode: str) -> np.ndarray:
    a = np.asarray(image.convert(mode), dtype=np.float64) / 127.5 - 1.0
    return a[None, None] if a.ndim == 2 else a.transpose(2, 0, 1)[None]


def _search(image: Image.Image, fmt: str, encode: Callable[[int], bytes], qualities: tuple[int, int],
            max_bytes: int, reference: np.ndarray | None, method: int | None,
            scaled_to: tuple[int, int] | None = None, name: str | None = None) -> BaselineResult:
    """Binary search for the highest quality that fits; the decoded file is enlarged back when `scaled_to`."""
    mode = "L" if image.mode in ("L", "1", "I", "F", "LA") else "RGB"
    ref = _image_array(image, mode) if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.ndim == 3:
        ref = ref[None]

    def result(quality: int, data: bytes) -> EncodedImage:
        decoded = Image.open(io.BytesIO(data), formats=(fmt.upper(),))  # our own encoder's output, in its format
        decoded.load()
        decoded = decoded.convert(mode)
        if decoded.size != image.size:
            decoded = decoded.resize(image.size, RESAMPLE)
        arr = _image_array(decoded, mode)
        return EncodedImage(name or fmt, quality, data, decoded, float(psnr(ref, arr)[0]), float(ssim(ref, arr)[0]),
                            method, scaled_to)

    cache: dict[int, bytes] = {}

    def file_at(q: int) -> bytes:
        if q not in cache:
            cache[q] = encode(q)
        return cache[q]

    lo, hi = qualities
    best: int | None = None
    if len(file_at(lo)) > max_bytes:  # even the lowest quality is too large: no search needed
        hi = lo - 1
    while lo <= hi:  # file size grows with quality (nearly always; every accepted file is checked anyway)
        mid = (lo + hi) // 2
        if len(file_at(mid)) <= max_bytes:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    smallest_q = qualities[0]
    matched = result(best, cache[best]) if best is not None else None
    smallest = matched if best == smallest_q and matched is not None else result(smallest_q, file_at(smallest_q))
    return BaselineResult(name or fmt, max_bytes, matched, smallest)


def _pil_bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    """The file Pillow writes; identical pixels and settings are encoded once per process (an LRU cache)."""
    settings = tuple(sorted(kwargs.items()))
    if image.mode not in ("L", "RGB") or image.width * image.height * len(image.mode) > CACHED_PIXEL_BYTES:
        return _encode(image, fmt, settings)
    return _cached_encode(image.mode, image.size, image.tobytes(), fmt, settings)


def _encode(image: Image.Image, fmt: str, kwargs: tuple[tuple[str, object], ...]) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **dict(kwargs))
    return buf.getvalue()


def _encode_from_pixels(mode: str, size: tuple[int, int], pixels: bytes, fmt: str,
                        kwargs: tuple[tuple[str, object], ...]) -> bytes:
    return _encode(Image.frombytes(mode, size, pixels), fmt, kwargs)


_cached_encode = lru_cache(maxsize=ENCODE_CACHE_SIZE)(_encode_from_pixels)


def set_encode_cache(maxsize: int) -> None:
    """Resize (and empty) the per-process cache of baseline files, e.g. to hold one pass of a benchmark."""
    global _cached_encode
    _cached_encode = lru_cache(maxsize=maxsize)(_encode_from_pixels)


def _baseline_mode(image: Image.Image) -> Image.Image:
    """Grey images stay grey (L); everything else (palette, alpha, CMYK) becomes RGB."""
    if image.mode in ("L", "RGB"):
        return image
    return image.convert("L" if image.mode in ("1", "LA", "I", "I;16", "F") else "RGB")


def jpeg_baseline(image: Image.Image, max_bytes: int, reference: np.ndarray | None = None) -> BaselineResult:
    """Pillow JPEG (optimize=True) at the highest quality whose whole file is <= max_bytes.

    Metrics compare the decoded file with `reference` (CHW or NCHW in [-1, 1]; default: `image` itself).
    """
    image = _baseline_mode(image)
    return _search(image, "jpeg", lambda q: _pil_bytes(image, "JPEG", quality=q, optimize=True), JPEG_QUALITIES,
                   max_bytes, reference, None)


def webp_baseline(image: Image.Image, max_bytes: int, reference: np.ndarray | None = None) -> BaselineResult:
    """Pillow lossy WebP at the highest quality whose whole file is <= max_bytes, trying methods 4 and 6.

    Of the two methods, the fitting file with the higher PSNR wins; `smallest` is the smaller of their
    lowest-quality files.
    """
    image = _baseline_mode(image)
    results = [_search(image, "webp", lambda q, m=m: _pil_bytes(image, "WEBP", quality=q, method=m),
                       WEBP_QUALITIES, max_bytes, reference, m) for m in WEBP_METHODS]
    fits = [r.matched for r in results if r.matched is not None]
    matched = max(fits, key=lambda e: (e.psnr, -e.n_bytes)) if fits else None
    smallest = min((r.smallest for r in results), key=lambda e: (e.n_bytes, -e.psnr))
    return BaselineResult("webp", max_bytes, matched, smallest)


def avif_available() -> bool:
    """Whether this Pillow can write AVIF."""
    from PIL import features

    return bool(features.check("avif"))


def avif_baseline(image: Image.Image, max_bytes: int, reference: np.ndarray | None = None) -> BaselineResult:
    """Pillow AVIF at the highest quality (0..100, default speed) whose whole file is <= max_bytes.

    Raises InputError when this Pillow has no AVIF support (`avif_available()` says so beforehand).
    """
    if not avif_available():
        raise InputError("this Pillow cannot write AVIF (built without libavif)")
    image = _baseline_mode(image)
    return _search(image, "avif", lambda q: _pil_bytes(image, "AVIF", quality=q), AVIF_QUALITIES, max_bytes,
                   reference, None)


def downscale_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """The smaller sizes a downscaled baseline tries: each of `DOWNSCALE_FRACTIONS`, at least 2 px a side."""
    sizes = [(max(2, round(width * f)), max(2, round(height * f))) for f in DOWNSCALE_FRACTIONS]
    return sorted({s for s in sizes if s[0] < width or s[1] < height}, reverse=True)


def downscaled_webp_baseline(image: Image.Image, max_bytes: int, reference: np.ndarray | None = None
                             ) -> BaselineResult:
    """WebP of the image shrunk to each of `downscale_sizes`, enlarged back for scoring; the best PSNR wins.

    At each size the highest quality (method 6) whose file is <= max_bytes is taken. `smallest` is the
    smallest file over all sizes. The format is "webp_downscaled"; `scaled_to` gives the coded size.
    """
    image = _baseline_mode(image)
    results = []
    for size in downscale_sizes(*image.size):
        small = image.resize(size, RESAMPLE)
        results.append(_search(image, "webp", lambda q, s=small: _pil_bytes(s, "WEBP", quality=q,
                                                                             method=DOWNSCALE_METHOD),
                               WEBP_QUALITIES, max_bytes, reference, DOWNSCALE_METHOD, size, "webp_downscaled"))
    if not results:
        raise InputError(f"an image of {image.size[0]}x{image.size[1]} pixels is too small to downscale")
    fits = [r.matched for r in results if r.matched is not None]
    matched = max(fits, key=lambda e: (e.psnr, -e.n_bytes)) if fits else None
    smallest = min((r.smallest for r in results), key=lambda e: (e.n_bytes, -e.psnr))
    return BaselineResult("webp_downscaled", max_bytes, matched, smallest)


# ----- the round trip -----

@dataclass
class RoundtripResult:
    """Everything a round trip produced. `metrics` is JSON-ready (None where a baseline never fit).
    `unquantised`: the decoded exact latents, decode(encode(x)) with no quantisation, clamped to [-1, 1] (what
    `psnr_unquantised` measures, and what the out-of-distribution score needs: `studio.ood.assess(...,
    reconstructions=result.unquantised)` encodes nothing again)."""

    reconstructions: torch.Tensor
    payloads: list[bytes]
    jpeg: list[BaselineResult]
    webp: list[BaselineResult]
    metrics: dict[str, object]
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    avif: list[BaselineResult] = field(default_factory=list)
    webp_downscaled: list[BaselineResult] = field(default_factory=list)
    unquantised: torch.Tensor | None = None

    @property
    def jpeg_images(self) -> list[Image.Image | None]:
        return [r.matched.image if r.matched else None for r in self.jpeg]

    @property
    def webp_images(self) -> list[Image.Image | None]:
        return [r.matched.image if r.matched else None for r in self.webp]


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _baseline_metrics(name: str, results: list[BaselineResult], ours_psnr: np.ndarray, ours_ssim: np.ndarray
                      ) -> dict[str, float | None]:
    fit = np.array([r.matched is not None for r in results], dtype=bool)
    matched = [r.matched for r in results if r.matched is not None]
    return {
        f"{name}_psnr": _mean(np.array([m.psnr for m in matched])),
        f"{name}_ssim": _mean(np.array([m.ssim for m in matched])),
        f"{name}_bytes": _mean(np.array([m.n_bytes for m in matched])),
        f"{name}_coverage": float(fit.mean()),
        f"psnr_on_{name}_covered": _mean(ours_psnr[fit]),
        f"ssim_on_{name}_covered": _mean(ours_ssim[fit]),
        f"{name}_min_bytes": float(np.mean([r.smallest.n_bytes for r in results])),
        f"{name}_psnr_at_min_bytes": float(np.mean([r.smallest.psnr for r in results])),
        f"{name}_ssim_at_min_bytes": float(np.mean([r.smallest.ssim for r in results])),
    }


def _encoding(progress: Progress, start: int, count: int, n: int, what: str) -> Progress:
    """The encoder's progress (step of total, e.g. a GAN's inversion steps) as progress through all `n` images, in
    hundredths of an image: a slow encoder's bar moves while it works instead of sitting at the chunk's start."""
    def report(step: int, total: int, message: str = "", preview: object = None) -> None:
        done = start + count * min(max(step, 0), total) / total if total > 0 else start
        progress(round(done * 100), n * 100, f"encoding {what}", preview)

    return report


def roundtrip(backend: Backend, images: torch.Tensor, bits: int, options: BaseModel | None = None,
              progress: Progress = no_progress, batch_size: int = 256, baselines: bool = True) -> RoundtripResult:
    """Compress images through the backend's CODEC space and back; measure against JPEG, WebP, AVIF and
    downscaled WebP.

    Metrics (means over images unless said): psnr, ssim, psnr_unquantised/ssim_unquantised (decoding the
    exact latent: what quantisation costs), bytes_per_image, bpp (8 * bytes / (H * W)),
    ideal_bytes_per_image (the information content the coder approaches), latent_rmse; per baseline
    (jpeg, webp): _psnr/_ssim/_bytes over the images where a file fit our payload's size, _coverage (that
    share), psnr_on_<b>_covered (ours over the same images), _min_bytes and _psnr_at_min_bytes (the
    smallest file the encoder makes), and the same for avif and webp_downscaled. `baselines` lists every
    codec as {codec, available, bytes_per_image, psnr, ssim, coverage, ...} (an unavailable one says why
    and has None values); best_baseline_psnr/_ssim/_coverage take, per image, the best PSNR of any codec
    whose file fit, and psnr_gain_over_best_baseline (mean; _min: the worst image) is ours minus it on
    those images. PSNR is capped at 100 dB.
    """
    import torch

    from studio.images import to_pil

    bits = check_bits(bits)
    caps = set(backend.capabilities)
    if not {ENCODE, DECODE} <= caps:
        raise InputError(f"backend {backend.name!r} cannot encode and decode images, so it cannot compress them")
    shape = tuple(backend.image_shape(options))
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != shape:
        got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be a batch of shape [N, {', '.join(map(str, shape))}], got {got}")
    if len(images) == 0:
        raise InputError("the round trip needs at least one image")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    space = backend.space_for(CODEC, options)
    tables = coding_tables(space, bits)

    recon, exact, payloads, ideal_bits, latent_se = [], [], [], [], []
    jpeg: list[BaselineResult] = []
    webp: list[BaselineResult] = []
    avif: list[BaselineResult] = []
    small: list[BaselineResult] = []
    unavailable = _unavailable_baselines(shape)
    n = len(images)
    for start in range(0, n, batch_size):
        what = f"images {start + 1}-{min(start + batch_size, n)} of {n}"
        progress(start, n, f"compressing {what}")
        chunk = images[start:start + batch_size].float()
        z = backend.encode(chunk, options, progress=_encoding(progress, start, len(chunk), n, what))[space.name]
        z = z.float()
        chunk_payloads = compress(z, space, bits)
        symbols = decompress_symbols(chunk_payloads, space, bits)
        zhat = dequantise(symbols, space, bits)
        recon.append(backend.decode({space.name: zhat}, options).float().clamp(-1, 1))
        exact.append(backend.decode({space.name: z}, options).float().clamp(-1, 1))
        payloads.extend(chunk_payloads)
        ideal_bits.extend(tables.information_bits(row) for row in symbols.reshape(len(symbols), -1))
        latent_se.append(((zhat - z) ** 2).reshape(len(z), -1).mean(1))
        if baselines:
            originals = chunk.numpy()
            for i, (im, p) in enumerate(zip(to_pil(chunk), chunk_payloads, strict=True)):
                jpeg.append(jpeg_baseline(im, len(p), reference=originals[i]))
                webp.append(webp_baseline(im, len(p), reference=originals[i]))
                if "avif" not in unavailable:
                    avif.append(avif_baseline(im, len(p), reference=originals[i]))
                if "webp_downscaled" not in unavailable:
                    small.append(downscaled_webp_baseline(im, len(p), reference=originals[i]))
    progress(n, n, "measuring")
    reconstructions = torch.cat(recon)
    unquantised = torch.cat(exact)
    ours_psnr, ours_ssim = psnr(images, reconstructions), ssim(images, reconstructions)
    sizes = np.array([len(p) for p in payloads], dtype=np.float64)
    pixels = shape[1] * shape[2]
    metrics: dict[str, float | int | str | None] = {
        "n": n, "bits": bits, "levels": 1 << bits, "range_stds": RANGE_STDS, "space": space.name,
        "latent_elements": math.prod(space.shape),
        "psnr": float(ours_psnr.mean()), "ssim": float(ours_ssim.mean()),
        "psnr_unquantised": float(psnr(images, unquantised).mean()),
        "ssim_unquantised": float(ssim(images, unquantised).mean()),
        "bytes_per_image": float(sizes.mean()), "bytes_min": int(sizes.min()), "bytes_max": int(sizes.max()),
        "bpp": float(8 * sizes.mean() / pixels),
        "ideal_bytes_per_image": float(np.mean(ideal_bits) / 8),
        "latent_rmse": float(torch.cat(latent_se).mean().sqrt()),
        "psnr_cap_db": PSNR_CAP_DB,
    }
    per_image = {"psnr": ours_psnr, "ssim": ours_ssim, "bytes": sizes}
    if baselines:
        found = {"jpeg": jpeg, "webp": webp, "avif": avif, "webp_downscaled": small}
        for name, results in found.items():
            if name not in unavailable:
                metrics |= _baseline_metrics(name, results, ours_psnr, ours_ssim)
        metrics["baselines"] = [_baseline_entry(name, metrics, unavailable.get(name)) for name in BASELINE_CODECS]
        best = _best_baseline([results for name, results in found.items() if name not in unavailable], n)
        metrics |= _best_metrics(best, ours_psnr, ours_ssim)
        per_image["best_baseline_psnr"] = best[0]
    return RoundtripResult(reconstructions, payloads, jpeg, webp, metrics, per_image, avif, small, unquantised)


def _unavailable_baselines(shape: tuple[int, ...]) -> dict[str, str]:
    """Baseline codecs that cannot run here, each with the reason."""
    out = {}
    if not avif_available():
        out["avif"] = "this Pillow cannot write AVIF (built without libavif)"
    if not downscale_sizes(shape[2], shape[1]):
        out["webp_downscaled"] = f"images of {shape[2]}x{shape[1]} pixels are too small to downscale"
    return out


def _baseline_entry(name: str, metrics: dict[str, object], reason: str | None) -> dict[str, object]:
    """One codec's line in `metrics["baselines"]`: means over the images where a file fit our payload."""
    if reason is not None:
        return {"codec": name, "available": False, "reason": reason, "bytes_per_image": None, "psnr": None,
                "ssim": None, "coverage": 0.0}
    return {"codec": name, "available": True, "bytes_per_image": metrics[f"{name}_bytes"],
            "psnr": metrics[f"{name}_psnr"], "ssim": metrics[f"{name}_ssim"], "coverage": metrics[f"{name}_coverage"],
            "psnr_ours_on_covered": metrics[f"psnr_on_{name}_covered"],
            "min_bytes": metrics[f"{name}_min_bytes"], "psnr_at_min_bytes": metrics[f"{name}_psnr_at_min_bytes"]}


def _best_baseline(per_codec: list[list[BaselineResult]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the best PSNR (and its file's SSIM) over every codec whose file fit; NaN where none did."""
    best_psnr, best_ssim = np.full(n, np.nan), np.full(n, np.nan)
    for results in per_codec:
        for i, r in enumerate(results):
            if r.matched is not None and not r.matched.psnr <= best_psnr[i]:
                best_psnr[i], best_ssim[i] = r.matched.psnr, r.matched.ssim
    return best_psnr, best_ssim


def _best_metrics(best: tuple[np.ndarray, np.ndarray], ours_psnr: np.ndarray, ours_ssim: np.ndarray
                  ) -> dict[str, float | None]:
    best_psnr, best_ssim = best
    fit = ~np.isnan(best_psnr)
    return {
        "best_baseline_coverage": float(fit.mean()),
        "best_baseline_psnr": _mean(best_psnr[fit]),
        "best_baseline_ssim": _mean(best_ssim[fit]),
        "psnr_on_best_baseline_covered": _mean(ours_psnr[fit]),
        "psnr_gain_over_best_baseline": _mean(ours_psnr[fit] - best_psnr[fit]),
        "psnr_gain_over_best_baseline_min": float(np.min(ours_psnr[fit] - best_psnr[fit])) if fit.any() else None,
    }


# ----- single-image panel -----

def _tile(image: Image.Image | None, size: tuple[int, int], scale: int) -> Image.Image:
    w, h = size
    if image is None:
        tile = Image.new("RGB", (w * scale, h * scale), (48, 48, 48))
        draw = ImageDraw.Draw(tile)
        draw.line([(0, 0), (w * scale - 1, h * scale - 1)], fill=(160, 60, 60), width=2)
        draw.line([(0, h * scale - 1), (w * scale - 1, 0)], fill=(160, 60, 60), width=2)
        return tile
    return image.convert("RGB").resize((w * scale, h * scale), Image.Resampling.NEAREST)


def side_by_side(original: Image.Image, reconstruction: Image.Image, jpeg: Image.Image | None,
                 webp: Image.Image | None, labels: Sequence[str], min_size: int = 168) -> Image.Image:
    """Original, reconstruction, JPEG and WebP in a row, each captioned (a crossed tile where None).

    Small images are upscaled by an integer factor with NEAREST so that a 28x28 digit stays readable.
    `labels` holds one caption per tile; a caption may span lines with newlines.
    """
    tiles = [original, reconstruction, jpeg, webp]
    if len(labels) != len(tiles):
        raise ValueError(f"side_by_side needs {len(tiles)} labels, got {len(labels)}")
    size = original.size
    scale = max(1, math.ceil(min_size / max(1, min(size))))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.multiline_textbbox((0, 0), text, font=font) for text in labels]
    pad = 8
    cell_w = max(size[0] * scale, *(b[2] - b[0] for b in boxes)) + pad
    text_h = max(b[3] - b[1] for b in boxes) + pad
    panel = Image.new("RGB", (pad + len(tiles) * cell_w, 2 * pad + size[1] * scale + text_h), (24, 24, 24))
    draw = ImageDraw.Draw(panel)
    for i, (image, text) in enumerate(zip(tiles, labels, strict=True)):
        x = pad + i * cell_w
        panel.paste(_tile(image, size, scale), (x, pad))
        draw.multiline_text((x, 2 * pad + size[1] * scale - pad // 2), text, fill=(230, 230, 230), font=font)
    return panel


def roundtrip_panel(result: RoundtripResult, original: Image.Image, index: int = 0) -> Image.Image:
    """The single-image view of a round trip: captions carry PSNR and bytes.

    Where no baseline file fits our payload's size, its tile shows the encoder's smallest file instead,
    captioned as over budget.
    """
    from studio.images import to_pil

    recon = to_pil(result.reconstructions[index:index + 1])[0]
    labels = ["original",
              f"ours, {result.metrics['bits']} bits\n{result.per_image['psnr'][index]:.2f} dB, "
              f"{int(result.per_image['bytes'][index])} B"]
    images: list[Image.Image | None] = []
    for baseline in (result.jpeg[index], result.webp[index]):
        name = {"jpeg": "JPEG", "webp": "WebP"}.get(baseline.format, baseline.format)
        if baseline.matched is not None:
            m = baseline.matched
            labels.append(f"{name} q{m.quality}\n{m.psnr:.2f} dB, {m.n_bytes} B")
            images.append(m.image)
        else:
            s = baseline.smallest
            labels.append(f"{name}: none fits {baseline.max_bytes} B\nsmallest q{s.quality}: {s.n_bytes} B, "
                          f"{s.psnr:.2f} dB")
            images.append(s.image)
    return side_by_side(original, recon, images[0], images[1], labels)
