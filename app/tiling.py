"""Tiled upscaling around any callable: split, pad with context, run, blend the overlaps in place.

Knows nothing of models. Each tile's core (a `tile` x `tile` cell of a grid) is widened by `blend`
pixels on every inner side and fed with `pad` more pixels of context (a window of constant size, the
largest cell + 2*pad, shifted inward at the image edges); its output is weighted by a
separable ramp that rises over the 2*`blend` band shared with the neighbour. Neighbouring ramps sum
to one, so the weighted outputs add straight into the output buffer with no normalisation pass and no
visible seam. Image borders get no ramp.

`fn(x)` takes an (h, w, C) array (the input's dtype) and returns (h*s, w*s, C) float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.errors import Cancelled, OutOfMemory

MIN_TILE = 64


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


def _ramp(n_out: int, lo_band: int, hi_band: int) -> np.ndarray:
    """Weights (n_out,) rising linearly over `lo_band` samples at the start and falling over `hi_band`."""
    w = np.ones(n_out, np.float32)
    if lo_band:
        w[:lo_band] = (np.arange(lo_band, dtype=np.float32) + 0.5) / lo_band
    if hi_band:
        falling = (np.arange(hi_band, 0, -1, dtype=np.float32) - 0.5) / hi_band
        w[n_out - hi_band :] = np.minimum(w[n_out - hi_band :], falling)
    return w


def _spans(length: int, tile: int) -> list[tuple[int, int]]:
    n = max(1, -(-length // tile))
    step = -(-length // n)  # equal cells, so no sliver tile at the end
    return [(i * step, min(length, (i + 1) * step)) for i in range(n) if i * step < length]


def _window(length: int, needed: int, multiple: int) -> int:
    """Window side: `needed` plus room to slide down to the grid, rounded up to it; at most the image."""
    return min(length, -(-(needed + multiple - 1) // multiple) * multiple)


def _fed_start(kept_start: int, length: int, fed: int, context: int, multiple: int) -> int:
    """Start of the fed window: `context` before the kept region, shifted inward at the image edges so
    every window has the same size (one tensor shape: kernels and fixed-shape packages are reused),
    then down onto the `multiple` grid (`length` and `fed` are multiples of it)."""
    start = max(0, min(kept_start - context, length - fed))
    return start - start % multiple


def is_oom(exc: BaseException) -> bool:
    """MemoryError, or torch's CUDA/MPS out-of-memory (a RuntimeError subclass or message)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


@dataclass(frozen=True)
class Window:
    """One fed window of a tile plan: its origin (`fy`, `fx`; the size is the plan's), the region of the
    input it keeps (`ky0:ky1`, `kx0:kx1`) and the ramp bands of that region's output, in output pixels
    (top, bottom, left, right; 0 at an image border)."""

    fy: int
    fx: int
    ky0: int
    ky1: int
    kx0: int
    kx1: int
    bands: tuple[int, int, int, int]

    def weights(self, scale: int) -> tuple[np.ndarray, np.ndarray]:
        """The separable blend weights (rows, columns) of the kept region's output."""
        top, bottom, left, right = self.bands
        return (
            _ramp((self.ky1 - self.ky0) * scale, top, bottom),
            _ramp((self.kx1 - self.kx0) * scale, left, right),
        )


@dataclass(frozen=True)
class TilePlan:
    """Every window of one image, all of one shape (`win_h` x `win_w`): one tensor shape per image, so
    kernels (and fixed-shape packages) are reused and windows can be batched."""

    height: int
    width: int
    win_h: int
    win_w: int
    windows: tuple[Window, ...]


def plan_tiles(h: int, w: int, scale: int, tile: int, pad: int, multiple: int = 1) -> TilePlan:
    """The windows that cover an (h, w) image (sides multiples of `multiple`). `tile` <= 0 (or >= both
    sides) is one window: the whole image."""
    if tile <= 0 or (tile >= h and tile >= w):
        return TilePlan(h, w, h, w, (Window(0, 0, 0, h, 0, w, (0, 0, 0, 0)),))
    blend = min(pad // 2, tile // 4)
    rows, cols = _spans(h, tile), _spans(w, tile)
    # The window is the largest cell plus context (plus slack to start on the grid): one shape per axis.
    win_y = _window(h, max(b - a for a, b in rows) + 2 * pad, multiple)
    win_x = _window(w, max(b - a for a, b in cols) + 2 * pad, multiple)
    band = 2 * blend * scale
    windows = []
    for y0, y1 in rows:
        ky0, ky1 = max(0, y0 - blend), min(h, y1 + blend)
        fy = _fed_start(ky0, h, win_y, pad - blend, multiple)
        for x0, x1 in cols:
            kx0, kx1 = max(0, x0 - blend), min(w, x1 + blend)
            fx = _fed_start(kx0, w, win_x, pad - blend, multiple)
            bands = (
                band if y0 > 0 else 0,
                band if y1 < h else 0,
                band if x0 > 0 else 0,
                band if x1 < w else 0,
            )
            windows.append(Window(fy, fx, ky0, ky1, kx0, kx1, bands))
    return TilePlan(h, w, win_y, win_x, tuple(windows))


def grid_padding(h: int, w: int, multiple: int) -> tuple[int, int, str]:
    """Rows and columns to add (bottom, right) to reach the `multiple` grid, and the pad mode: reflect,
    or edge where the image is too small to reflect."""
    ph, pw = (-h) % multiple, (-w) % multiple
    return ph, pw, "reflect" if h > ph and w > pw else "edge"


def upscale_tiled(
    img: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray],
    scale: int,
    tile: int,
    pad: int,
    *,
    multiple: int = 1,
    cancel: CancelFlag | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Upscale (H, W, C) `img` by integer `scale`; returns float32 (H*scale, W*scale, C).

    `tile` <= 0 (or >= the image) runs the whole image at once. `multiple` is the model's input size
    multiple (2 / 4 for pixel-unshuffle x2 / x1 models): windows start on that grid, so every tile sees
    the same unshuffle phase as the whole image would (those models are not shift-invariant by one
    pixel). On out-of-memory a tile is redone as tiles of half the size, down to 64 px; below that
    OutOfMemory is raised. Raises Cancelled when `cancel` is set between tiles.
    """
    h, w, c = img.shape
    if h % multiple or w % multiple:
        # Reflect up to the grid (as the runner pads a whole image), run aligned, crop back.
        ph, pw, mode = grid_padding(h, w, multiple)
        padded = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)  # type: ignore[call-overload]
        full = upscale_tiled(padded, fn, scale, tile, pad, multiple=multiple, cancel=cancel)
        if out is None:
            return np.ascontiguousarray(full[: h * scale, : w * scale])
        out[:] = full[: h * scale, : w * scale]
        return out
    if out is None:
        out = np.zeros((h * scale, w * scale, c), np.float32)
    plan = plan_tiles(h, w, scale, tile, pad, multiple)
    if len(plan.windows) == 1:
        out[:] = _run_or_split(img, fn, scale, max(h, w), pad, multiple, cancel)
        return out
    for win in plan.windows:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        fed = img[win.fy : win.fy + plan.win_h, win.fx : win.fx + plan.win_w]
        result = _run_or_split(fed, fn, scale, tile, pad, multiple, cancel)
        oy, ox = (win.ky0 - win.fy) * scale, (win.kx0 - win.fx) * scale
        kept = result[oy : oy + (win.ky1 - win.ky0) * scale, ox : ox + (win.kx1 - win.kx0) * scale]
        wy, wx = win.weights(scale)
        region = out[win.ky0 * scale : win.ky1 * scale, win.kx0 * scale : win.kx1 * scale]
        region += kept * wy[:, None, None] * wx[None, :, None]
    return out


def _run_or_split(
    region: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray],
    scale: int,
    tile: int,
    pad: int,
    multiple: int,
    cancel: CancelFlag | None,
) -> np.ndarray:
    try:
        return fn(region)
    except Exception as exc:
        if not is_oom(exc):
            raise
    current = min(tile, max(region.shape[:2]))
    if current <= MIN_TILE:
        raise OutOfMemory(f"out of memory even with {MIN_TILE}px tiles")
    return upscale_tiled(
        region, fn, scale, max(MIN_TILE, current // 2), pad, multiple=multiple, cancel=cancel
    )
