"""Pillow's LANCZOS resampling weights, for resizing where Pillow cannot run (on the model's device).

`taps(in_size, out_size)` is Pillow's `precompute_coeffs` (libImaging/Resample.c) for its LANCZOS filter
(a = 3) over the whole axis: for each output sample, the source indices and normalised weights Pillow
uses, in double precision as Pillow computes them. Applied separably (horizontal pass, then vertical,
as Pillow orders them), they give Pillow's result up to float32 rounding (tests/unit/imaging/
test_lanczos.py compares them on real photos). Written out because no library exposes Pillow's
coefficients; the formula is Pillow's, line for line.
"""

from __future__ import annotations

import math

import numpy as np

SUPPORT = 3.0


def _sinc(x: np.ndarray) -> np.ndarray:
    out = np.ones_like(x)
    nz = x != 0.0
    px = math.pi * x[nz]
    out[nz] = np.sin(px) / px
    return out


def _lanczos(x: np.ndarray) -> np.ndarray:
    """Pillow's lanczos_filter: sinc(x) * sinc(x / 3) on [-3, 3), 0 elsewhere."""
    return np.where((x >= -SUPPORT) & (x < SUPPORT), _sinc(x) * _sinc(x / SUPPORT), 0.0)


def taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(out_size, k) int64 source indices and float64 weights (each row sums to 1; unused taps have
    weight 0 and index 0), for resampling `in_size` samples to `out_size` as Pillow's LANCZOS does."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = SUPPORT * filterscale
    k = math.ceil(support) * 2 + 1
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # Pillow truncates toward zero (C's (int) cast) after adding 0.5, then clips to the axis.
    xmin = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(centers + support + 0.5), in_size).astype(np.int64)
    offsets = np.arange(k, dtype=np.int64)
    index = xmin[:, None] + offsets[None, :]
    used = offsets[None, :] < (xmax - xmin)[:, None]
    weights = _lanczos((index - centers[:, None] + 0.5) * (1.0 / filterscale))
    weights = np.where(used, weights, 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total != 0.0)
    return np.where(used, index, 0), weights
