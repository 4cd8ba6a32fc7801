"""Image-quality measures of the SR literature: PSNR and SSIM on the Y channel (ITU-R BT.601), and the
one PSNR helper the scripts and tests compare renderings with.

Inputs are uint8 RGB (H, W, 3) or L (H, W) arrays of the same shape; `shave` pixels are cut from
every border before comparing, as the usual protocol does for a scale-`shave` upscale.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def y_channel(img: np.ndarray) -> np.ndarray:
    """BT.601 luma in the 16..235 range, float64, from uint8 RGB (H, W, 3) or L (H, W)."""
    arr = img.astype(np.float64)
    if arr.ndim == 2:
        return arr
    return 16.0 + (65.481 * arr[..., 0] + 128.553 * arr[..., 1] + 24.966 * arr[..., 2]) / 255.0


def _shaved(a: np.ndarray, b: np.ndarray, shave: int) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    return a, b


def psnr_y(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """Y-channel PSNR in dB (inf when identical)."""
    ya, yb = _shaved(y_channel(a), y_channel(b), shave)
    mse = float(np.mean((ya - yb) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Plain PSNR over all channels (dB), for comparing two renderings of the same image."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def psnr_unit(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float arrays in 0..1 (clipped first, as outputs are); inf when equal."""
    return psnr(np.clip(a, 0.0, 1.0), np.clip(b, 0.0, 1.0), peak=1.0)


def _gaussian_filter(img: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    # 'valid' separable filtering, as the reference SSIM implementation crops the borders.
    rows = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 1, img)
    return np.apply_along_axis(lambda c: np.convolve(c, k, mode="valid"), 0, rows)


def ssim_y(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """Y-channel SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5), as in the SR literature."""
    ya, yb = _shaved(y_channel(a), y_channel(b), shave)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _gaussian_filter(ya), _gaussian_filter(yb)
    var_a = _gaussian_filter(ya * ya) - mu_a**2
    var_b = _gaussian_filter(yb * yb) - mu_b**2
    cov = _gaussian_filter(ya * yb) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def modcrop(img: Image.Image, scale: int) -> Image.Image:
    """Crop the right and bottom edges so both sides are multiples of `scale`."""
    w, h = img.size
    return img.crop((0, 0, w - w % scale, h - h % scale))


def bicubic_lr(hr: Image.Image, scale: int) -> Image.Image:
    """The benchmark's low-resolution input: Pillow BICUBIC downscale of the modcropped HR image."""
    w, h = hr.size
    return hr.resize((w // scale, h // scale), Image.Resampling.BICUBIC)
