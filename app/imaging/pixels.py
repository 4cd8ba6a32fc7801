"""Pixel maths on float arrays: LANCZOS resizing, 0..1 conversion, quantising, and the one output type
(a `Picture`) that every path hands to the encoder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.imaging.resample import lanczos


@dataclass(frozen=True)
class Picture:
    """An output image: `pixels` (H, W, C) uint8 or uint16, C = 1 (gray), 2 (gray + alpha), 3 (RGB)
    or 4 (RGBA). The dtype is the bit depth."""

    pixels: np.ndarray

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.pixels.shape[1], self.pixels.shape[0]

    @classmethod
    def from_pil(cls, img: Image.Image) -> Picture:
        """From a Pillow image in L, LA, RGB, RGBA or I;16."""
        return cls.from_array(np.asarray(img))

    @classmethod
    def from_array(cls, arr: np.ndarray) -> Picture:
        """From (H, W) or (H, W, C) uint8 / uint16 samples, as `np.asarray` gives a Pillow image's."""
        return cls(np.ascontiguousarray(arr[..., None] if arr.ndim == 2 else arr))

    def crop(self, box: tuple[int, int, int, int] | None) -> Picture:
        """(left, top, right, bottom), or None for the whole picture."""
        if box is None:
            return self
        left, top, right, bottom = box
        return Picture(np.ascontiguousarray(self.pixels[top:bottom, left:right]))


def resize_array(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """LANCZOS-resize a float32 (H, W, C) or (H, W) array to `size` = (W, H), channel by channel.
    Values are not clipped: LANCZOS may overshoot the input range a little (quantize() clips)."""
    if arr.ndim == 2:
        return lanczos(Image.fromarray(arr.astype(np.float32, copy=False), "F"), size)
    out = np.empty((size[1], size[0], arr.shape[2]), np.float32)
    for c in range(arr.shape[2]):
        lanczos(Image.fromarray(np.ascontiguousarray(arr[..., c], dtype=np.float32), "F"), size, out[..., c])
    return out


def resized(x: np.ndarray, size: tuple[int, int] | None, bit_depth: int | None) -> np.ndarray:
    """A model's (H, W, C) float32 output LANCZOS-resized to `size` = (W, H) when it differs, then
    quantised to `bit_depth` (8 / 16; None keeps float32)."""
    if size is not None and (x.shape[1], x.shape[0]) != size:
        x = resize_array(x, size)
    return x if bit_depth is None else quantize(x, bit_depth)


def to_unit_float(arr: np.ndarray) -> np.ndarray:
    """uint8 / uint16 -> float32 in 0..1 (float input is returned as float32)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * (1.0 / 255.0)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) * (1.0 / 65535.0)
    return arr.astype(np.float32, copy=False)


def quantize(arr: np.ndarray, bit_depth: int) -> np.ndarray:
    """float (any shape, about 0..1) -> uint8 or uint16, rounded to nearest and clipped.

    Works in float32 whatever comes in: float16 cannot even hold 65535. NaN (a model that overflowed)
    becomes 0 instead of an undefined cast.
    """
    peak, dtype = (65535.0, np.uint16) if bit_depth == 16 else (255.0, np.uint8)
    out = np.nan_to_num(np.asarray(arr, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    out *= peak
    out += 0.5
    return out.astype(dtype)


def compose(color: np.ndarray, alpha: np.ndarray | None, bit_depth: int) -> Picture:
    """Build the output picture: `color` (H, W, 1|3) float about 0..1 (or already quantised: uint8 /
    uint16), `alpha` (H, W) float or None, quantised to `bit_depth` (8 or 16)."""
    q = color if color.dtype.kind == "u" else quantize(color, bit_depth)
    if alpha is None:
        return Picture(q)
    return Picture(np.dstack([q, quantize(alpha, bit_depth)]))
