"""Run a loaded model over a whole image: tiled passes, repeated until the wanted factor is reached.

The service and the scripts (evaluate, bench) call this same function, so what they measure is what
the service runs.
"""

from __future__ import annotations

import numpy as np

from app.backends.base import Runner
from app.errors import Cancelled, ModelFailed, OutOfMemory
from app.tiling import CancelFlag, is_oom, upscale_tiled


def run_model(
    pixels: np.ndarray,
    runner: Runner,
    factor: float,
    *,
    tile: int | None = None,
    pad: int = 16,
    max_pixels: int = 1 << 62,
    cancel: CancelFlag | None = None,
) -> np.ndarray:
    """Upscale (H, W, C) `pixels` by the model's scale, again while short of `factor`.

    Returns float32 (H*s^n, W*s^n, C) in 0..1. A further pass is skipped when its output would pass
    `max_pixels` (the caller finishes with LANCZOS). Raises OutOfMemory (after the smaller-tile retries),
    ModelFailed for any other model error, and Cancelled.
    """
    tile = runner.default_tile if tile is None else tile
    x = pixels
    total = 1
    while True:
        try:
            x = upscale_tiled(
                x, runner.run, runner.scale, tile, pad, multiple=runner.size_multiple, cancel=cancel
            )
        except (OutOfMemory, Cancelled):
            raise
        except Exception as exc:
            if is_oom(exc):
                raise OutOfMemory(str(exc)) from None
            raise ModelFailed(f"{type(exc).__name__}: {str(exc).strip()[:300]}") from None
        total *= runner.scale
        bigger = x.shape[0] * x.shape[1] * runner.scale**2
        if total >= factor - 1e-6 or runner.scale == 1 or bigger > max_pixels:
            return x
