"""How much memory one request needs, and how much it may have.

`estimate_bytes()` works from the header size and the chosen model alone, so a request that would
exhaust memory is refused (413 image_too_large) before a pixel is decoded. It is deliberately on the
high side: a refused request costs a retry with a smaller image; an exhausted machine costs every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from app.backends.base import ModelEntry
from app.errors import ImageTooLarge, Overloaded

MIB = 1024 * 1024
FLOAT32 = 4
# Bytes alive per sample (one channel of one pixel) at the peak of each stage, measured on this
# pipeline (tests/unit/test_memory_estimate.py runs every mode and bit depth and checks the estimate
# is never below the peak RSS): decoding holds the file, the decoder's buffers and our arrays;
# the Pillow LANCZOS path of 8-bit images holds the resized image, its array copy and the encoder's;
# the float path (16-bit images, and every model output) holds float32 planes, their quantised copy,
# the assembled picture and the encoder's rows.
SOURCE_BYTES = {8: 12, 16: 24}
TARGET_BYTES_PILLOW = 12
TARGET_BYTES_FLOAT = 24
# Activation values per input pixel at the peak of one forward, for runners whose model has no
# descriptor (stubs): an RRDBNet x4 with num_feat 64 (three 64-channel maps at 16x the pixels).
DEFAULT_ACTIVATIONS_PER_PIXEL = 3 * 64 * 16
# What a forward really takes beyond the descriptor's activation count: the allocator's rounding, the
# convolution workspaces and the temporaries of concatenations (measured: up to 1.3x on CPU).
ACTIVATION_OVERHEAD = 1.5
IDLE_S = 5.0  # nothing reserved for this long: the budget calls its on_idle
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
    planes: int = 4,
    bit_depth: int = 16,
    data_bytes: int = 0,
) -> int:
    """Peak bytes to upscale a `width` x `height` image of `planes` channels (1-4, alpha included) and
    `bit_depth` to `target` (w, h) with `entry` (None: LANCZOS), from the header alone.

    Follows the pipeline: the upload and the decoded image stay alive throughout; each model pass
    holds its float32 input and output plus one tile's activations (on the host; on CUDA they live in
    device memory, guarded by the smaller-tile retries); the finish resizes, quantises and encodes.
    """
    samples_in = width * height * planes
    samples_out = target[0] * target[1] * planes
    # The upload, and the copy of its pixel chunks that the PNG decoder reads (app/imaging/pngread.py).
    source = 2 * data_bytes + samples_in * SOURCE_BYTES[16 if bit_depth == 16 else 8]
    runner = entry.runner if entry is not None else None
    if runner is None:
        per_out = TARGET_BYTES_PILLOW if bit_depth == 8 else TARGET_BYTES_FLOAT
        return source + samples_out * per_out
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
        activations = int(tile_px * per_px * elem * ACTIVATION_OVERHEAD) if on_host else 0
        # A gray image runs through a colour model as three planes.
        peak = max(peak, (w * h + w * h * s * s) * max(planes, 3) * FLOAT32 + activations)
        w, h, total = w * s, h * s, total * s
        if total >= factor - 1e-6 or s == 1 or w * h * s * s > max_pixels:
            break
    finish = w * h * planes * FLOAT32 + samples_out * TARGET_BYTES_FLOAT
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


class MemoryBudget:
    """One memory budget for the whole process: every request reserves its estimate before it decodes
    and gives it back when its response is built. A request larger than the whole budget is refused
    (413); one that does not fit now waits, with at most `max_waiting` others, until memory is given
    back or its deadline passes (503 overloaded with Retry-After either way)."""

    def __init__(
        self,
        total: int,
        max_waiting: int,
        on_idle: Callable[[], object] | None = None,
        idle_s: float = IDLE_S,
    ) -> None:
        """`on_idle` runs on a worker thread once nothing has been reserved for `idle_s` seconds
        (app.allocator.give_back: the memory the requests freed goes back to the kernel)."""
        self.total = total
        self.max_waiting = max_waiting
        self.reserved = 0
        self.waiting = 0
        self._changed = asyncio.Condition()
        self._on_idle, self._idle_s = on_idle, idle_s
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_work: asyncio.Future[object] | None = None  # held, so the task is not collected

    @contextlib.asynccontextmanager
    async def reserve(self, need: int, deadline: float, what: str) -> AsyncIterator[Reservation]:
        """Hold `need` bytes for the body of the `async with`, and beyond it for work the body left
        running (`Reservation.outlive`). Raises ImageTooLarge and Overloaded."""
        if need > self.total:
            raise ImageTooLarge(
                f"{what} needs about {need / MIB:.1f} MiB; the memory budget is {self.total / MIB:.1f} MiB "
                "(UPSCALER_MEMORY_BUDGET_MB)"
            )
        async with self._changed:
            if self.reserved + need > self.total:
                if self.waiting >= self.max_waiting:
                    raise Overloaded("the memory budget is taken by requests in flight; retry shortly", 2)
                self.waiting += 1
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self.reserved + need <= self.total),
                        timeout=max(0.0, deadline - time.monotonic()),
                    )
                except (TimeoutError, asyncio.TimeoutError):
                    raise Overloaded(
                        "the memory budget stayed taken until the request's deadline", 2
                    ) from None
                finally:
                    self.waiting -= 1
            self.reserved += need
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
        reservation = Reservation()
        try:
            yield reservation
        finally:
            pending = [f for f in reservation.running if not f.done()]
            if pending:  # abandoned work still holds its memory: give it back when the work ends
                gathered = asyncio.gather(*pending, return_exceptions=True)
                gathered.add_done_callback(lambda _: asyncio.ensure_future(self._release(need)))
            else:
                await self._release(need)

    async def _release(self, need: int) -> None:
        async with self._changed:
            self.reserved -= need
            self._changed.notify_all()
            if self.reserved == 0 and self._on_idle is not None:
                self._idle_timer = asyncio.get_running_loop().call_later(self._idle_s, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if self.reserved == 0 and self._on_idle is not None:
            self._idle_work = asyncio.ensure_future(asyncio.to_thread(self._on_idle))


class Reservation:
    """A request's hold on the budget; work it abandons (a timed-out stage) keeps the hold alive."""

    def __init__(self) -> None:
        self.running: list[asyncio.Future[Any]] = []

    def outlive(self, future: asyncio.Future[Any]) -> None:
        self.running.append(future)
