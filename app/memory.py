"""How much memory one request needs, and how much it may have.

`estimate_bytes()` works from the header size and the chosen model alone, so a request that would
exhaust memory is refused (413 image_too_large) before a pixel is decoded. It is deliberately on the
high side: a refused request costs a retry with a smaller image; an exhausted machine costs every request.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.backends.base import ModelEntry

MIB = 1024 * 1024
FLOAT32 = 4
# Colour plus alpha: the header does not say which the image has, so count the larger.
CHANNELS = 4
# Activation values per input pixel at the peak of one forward, for runners whose model has no
# descriptor (stubs): an RRDBNet x4 with num_feat 64 (three 64-channel maps at 16x the pixels).
DEFAULT_ACTIVATIONS_PER_PIXEL = 3 * 64 * 16
AUTO_FRACTION = 0.5  # of the machine's (or container's) memory, when UPSCALER_MEMORY_BUDGET_MB is 0
UNKNOWN_TOTAL = 8 * 1024 * MIB  # assumed when the total cannot be read (no /proc, no sysconf)


def estimate_bytes(
    width: int,
    height: int,
    target: tuple[int, int],
    factor: float,
    entry: ModelEntry | None,
    *,
    tile: int | None,
    pad: int,
    max_pixels: int,
) -> int:
    """Peak bytes to upscale a `width` x `height` image to `target` (w, h) with `entry` (None: LANCZOS).

    Follows engine.run_model's passes: each holds its float32 input and output buffers plus one tile's
    activations (on the host; on CUDA they live in device memory, guarded by the smaller-tile retries);
    the finish holds the last pass's output and the float32 target-size buffer.
    """
    source = width * height * CHANNELS * 2  # decoded pixels, up to 16 bits, alive throughout
    target_buf = target[0] * target[1] * CHANNELS * FLOAT32
    runner = entry.runner if entry is not None else None
    if runner is None:
        return source + width * height * CHANNELS * FLOAT32 + target_buf
    s = runner.scale
    side = runner.default_tile if tile is None else tile
    precision = getattr(runner, "precision", "fp32")
    elem = 2 if precision in ("fp16", "bf16") else FLOAT32
    on_host = getattr(runner, "device", "cpu") != "cuda"
    desc = entry.descriptor if entry is not None else None
    per_px = desc.activations_per_pixel if desc is not None and desc.activations_per_pixel else None
    w, h, total, peak = width, height, 1, 0
    while True:
        whole = side <= 0 or (side >= w and side >= h)
        tile_px = w * h if whole else (min(side, w) + 2 * pad) * (min(side, h) + 2 * pad)
        if per_px is None:  # scaled to the runner's factor: the published nets' head at that scale
            per_px = DEFAULT_ACTIVATIONS_PER_PIXEL * s * s // 16
        activations = tile_px * per_px * elem if on_host else 0
        peak = max(peak, (w * h + w * h * s * s) * CHANNELS * FLOAT32 + activations)
        w, h, total = w * s, h * s, total * s
        if total >= factor - 1e-6 or s == 1 or w * h * s * s > max_pixels:
            break
    finish = w * h * CHANNELS * FLOAT32 + target_buf
    return source + max(peak, finish)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def total_memory_bytes(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The machine's memory (MemTotal, else sysconf), lowered to the container's cgroup limit if any."""
    total: int | None = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024  # reported in kB
                break
    except (OSError, ValueError, IndexError):
        total = None
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            total = None
    limits = [
        v
        for v in (_read_int(cgroup / "memory.max"), _read_int(cgroup / "memory" / "memory.limit_in_bytes"))
        if v is not None and v > 0
    ]
    if limits and (total is None or min(limits) < total):  # v1 says "no limit" with a huge number
        total = min(limits)
    return total


def budget_bytes(budget_mb: float, total: int | None = None) -> int:
    """UPSCALER_MEMORY_BUDGET_MB in bytes; 0 means AUTO_FRACTION of `total` (default: this machine's)."""
    if budget_mb > 0:
        return int(budget_mb * MIB)
    total = total if total is not None else total_memory_bytes()
    return int((total or UNKNOWN_TOTAL) * AUTO_FRACTION)
