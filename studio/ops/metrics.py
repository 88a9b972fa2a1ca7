"""Image quality metrics, per image, for NCHW batches in [-1, 1] (torch tensors or numpy arrays).

Both metrics work on images mapped to [0, 1] and clipped there (what a viewer shows), with peak 1.
PSNR of identical images is infinite; it is capped at `PSNR_CAP_DB` (100 dB) so results stay valid JSON.
SSIM is skimage's `structural_similarity` (uniform window, data_range=1, channels averaged); the window is
7 pixels, or the largest odd size that fits smaller images (an 8x8 image uses 7, a 5x5 one uses 5).
"""

from __future__ import annotations

import numpy as np

PSNR_CAP_DB = 100.0
DEFAULT_SSIM_WINDOW = 7


def to_unit(images: object) -> np.ndarray:
    """NCHW (or CHW) images in [-1, 1] -> float64 NCHW numpy in [0, 1], clipped."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().double().numpy()  # type: ignore[attr-defined]
    a = np.asarray(images, dtype=np.float64)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"expected NCHW images, got shape {a.shape}")
    return np.clip((a + 1.0) / 2.0, 0.0, 1.0)


def _pair(a: object, b: object) -> tuple[np.ndarray, np.ndarray]:
    x, y = to_unit(a), to_unit(b)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    return x, y


def psnr(a: object, b: object) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image (peak 1 on [0, 1]), capped at PSNR_CAP_DB."""
    x, y = _pair(a, b)
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(1)
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(1.0 / mse)
    return np.minimum(values, PSNR_CAP_DB)


def ssim_window(height: int, width: int) -> int:
    """The SSIM window for an image size: 7, or the largest odd size that fits."""
    win = min(DEFAULT_SSIM_WINDOW, height, width)
    win -= 1 - win % 2
    if win < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {height}x{width}")
    return win


def ssim(a: object, b: object) -> np.ndarray:
    """Structural similarity per image (skimage, data_range=1, channels averaged)."""
    from skimage.metrics import structural_similarity

    x, y = _pair(a, b)
    win = ssim_window(x.shape[2], x.shape[3])
    out = np.empty(len(x))
    for i in range(len(x)):
        if x.shape[1] == 1:
            out[i] = structural_similarity(x[i, 0], y[i, 0], data_range=1.0, win_size=win)
        else:
            out[i] = structural_similarity(x[i].transpose(1, 2, 0), y[i].transpose(1, 2, 0), data_range=1.0,
                                           win_size=win, channel_axis=-1)
    return out
