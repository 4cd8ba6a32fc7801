"""Run a loaded model over a whole image: tiled passes, repeated until the wanted factor is reached.

The service and the scripts (evaluate, bench) call this same function, so what they measure is what
the service runs. A runner with `upscale_image` (PyTorch) keeps the whole image on its device for all
passes (app/backends/torch_tiles.py); any other runner (Core ML's fixed-shape packages) is driven
window by window by the numpy tiler.
"""

from __future__ import annotations

import numpy as np

from app.backends.base import Runner
from app.errors import Cancelled, ModelFailed, OutOfMemory
from app.imaging.pixels import resized
from app.tiling import CancelFlag, is_oom, upscale_tiled


def model_passes(h: int, w: int, scale: int, factor: float, max_pixels: int) -> int:
    """How many passes of an x`scale` model reach `factor`: another pass while short of it, unless its
    output would pass `max_pixels` (LANCZOS finishes: run_model's `size`) or the model does not enlarge."""
    passes, total = 1, scale
    while total < factor - 1e-6 and scale > 1 and h * w * total**2 * scale**2 <= max_pixels:
        passes, total = passes + 1, total * scale
    return passes


def run_model(
    pixels: np.ndarray,
    runner: Runner,
    factor: float,
    *,
    tile: int | None = None,
    pad: int = 16,
    max_pixels: int = 1 << 62,
    cancel: CancelFlag | None = None,
    bit_depth: int | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Upscale (H, W, C) `pixels` by the model's scale, again while short of `factor`, then LANCZOS to
    `size` = (W, H) when given (on the model's device where the runner can).

    Returns (H*s^n, W*s^n, C), or `size`: float32 in 0..1, or uint8 / uint16 with `bit_depth` 8 / 16
    (quantised where the model ran). A further pass is skipped when its output would pass `max_pixels`
    (the resize to `size` finishes). Raises OutOfMemory (after the smaller-tile retries), ModelFailed
    for any other model error, and Cancelled.
    """
    tile = runner.default_tile if tile is None else tile
    h, w = pixels.shape[:2]
    passes = model_passes(h, w, runner.scale, factor, max_pixels)
    try:
        upscale_image = getattr(runner, "upscale_image", None)
        if upscale_image is not None:
            out: np.ndarray = upscale_image(
                pixels, passes, tile=tile, pad=pad, cancel=cancel, bit_depth=bit_depth, size=size
            )
            return out
        x = pixels
        for _ in range(passes):
            x = upscale_tiled(
                x, runner.run, runner.scale, tile, pad, multiple=runner.size_multiple, cancel=cancel
            )
        return resized(x, size, bit_depth)
    except (OutOfMemory, Cancelled):
        raise
    except Exception as exc:
        if is_oom(exc):
            raise OutOfMemory(str(exc)) from None
        raise ModelFailed(f"{type(exc).__name__}: {str(exc).strip()[:300]}") from None
