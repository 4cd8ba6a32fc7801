"""The tile plan run on the model's device: cut, pad, batch, run, blend, resize to a size off the
model's scale (Pillow's LANCZOS) and quantise there.

The numpy tiler (app/tiling.py) hands every window to the host and back; on a GPU that copy, the
float32 blend in numpy and the host-side quantisation cost more than the model itself for small nets.
Here the whole image is one tensor on the device: windows are views of it, windows of one shape run
as one batch, their outputs are weighted by the same ramps (built on the device) and added into one
float32 accumulator, and only the caller's final integer image leaves the device. The plan
(`plan_tiles`), the ramps and the out-of-memory halving are the numpy tiler's, so both give the same
pixels. torch arrives as an argument: the service starts without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.errors import Cancelled, OutOfMemory
from app.imaging import lanczos
from app.tiling import MIN_TILE, CancelFlag, TilePlan, grid_padding, is_oom, plan_tiles

Forward = Callable[[Any], Any]
"""(B, C, h, w) float tensor, values 0..1 -> (B, C, h*s, w*s) float32 tensor clamped to 0..1."""
BatchFor = Callable[[TilePlan], int]


def upscale_tensor(
    torch: Any,
    forward: Forward,
    x: Any,
    scale: int,
    tile: int,
    pad: int,
    *,
    multiple: int = 1,
    batch_for: BatchFor | None = None,
    cancel: CancelFlag | None = None,
) -> Any:
    """Upscale (1, C, H, W) float tensor `x` by `scale` with `forward`; returns float32 (1, C, H*s, W*s)
    on x's device. `tile` <= 0 (or >= the image) runs it whole. `batch_for(plan)` says how many windows
    may run in one forward (1 when absent). Out-of-memory: a batch is retried window by window, a
    window as tiles of half the size down to 64 px, then OutOfMemory. Cancelled between batches."""
    _, _, h, w = x.shape
    ph, pw, mode = grid_padding(h, w, multiple)
    if ph or pw:
        # Reflect up to the model's grid (as the numpy tiler does), run aligned, crop back.
        padded = torch.nn.functional.pad(
            x, (0, pw, 0, ph), mode="reflect" if mode == "reflect" else "replicate"
        )
        full = upscale_tensor(
            torch, forward, padded, scale, tile, pad, multiple=multiple, batch_for=batch_for, cancel=cancel
        )
        return full[:, :, : h * scale, : w * scale]
    plan = plan_tiles(h, w, scale, tile, pad, multiple)
    if len(plan.windows) == 1:
        return _run_or_split(torch, forward, x, scale, max(h, w), pad, multiple, cancel)
    out = torch.zeros((1, x.shape[1], h * scale, w * scale), dtype=torch.float32, device=x.device)
    step = max(1, batch_for(plan) if batch_for is not None else 1)
    windows = plan.windows
    for first in range(0, len(windows), step):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        group = windows[first : first + step]
        fed = [x[:, :, win.fy : win.fy + plan.win_h, win.fx : win.fx + plan.win_w] for win in group]
        stack = fed[0] if len(fed) == 1 else torch.cat(fed)
        del fed
        result = _run_or_split(torch, forward, stack, scale, tile, pad, multiple, cancel)
        for i, win in enumerate(group):
            oy, ox = (win.ky0 - win.fy) * scale, (win.kx0 - win.fx) * scale
            kh, kw = (win.ky1 - win.ky0) * scale, (win.kx1 - win.kx0) * scale
            kept = result[i : i + 1, :, oy : oy + kh, ox : ox + kw]
            weight = _weights(torch, kh, kw, win.bands, str(x.device))
            region = out[:, :, win.ky0 * scale : win.ky1 * scale, win.kx0 * scale : win.kx1 * scale]
            region.addcmul_(kept, weight)
    return out


def resize_tensor(torch: Any, x: Any, size: tuple[int, int]) -> Any:
    """(B, C, H, W) float tensor -> (B, C, size[1], size[0]): Pillow's LANCZOS on the tensor's device,
    horizontal pass then vertical as Pillow runs them, with Pillow's weights (app/imaging/lanczos.py),
    each output sample a weighted sum of its taps. Pillow's result to float32 rounding."""
    width, height = size
    if x.shape[-1] != width:
        x = _resample(torch, x, width, dim=-1)
    if x.shape[-2] != height:
        x = _resample(torch, x, height, dim=-2)
    return x


def _resample(torch: Any, x: Any, out_size: int, dim: int) -> Any:
    index, weights = lanczos.taps(x.shape[dim], out_size)
    index_t = torch.from_numpy(index).to(x.device)
    weights_t = torch.from_numpy(weights).to(x.device, torch.float32)
    out = None
    for j in range(index.shape[1]):
        w = weights_t[:, j] if dim == -1 else weights_t[:, j].view(-1, 1)
        term = x.index_select(dim, index_t[:, j]) * w
        out = term if out is None else out.add_(term)
    return out


def release_cached(torch: Any, device: str) -> None:
    """Give the allocator's cached blocks back to the device after an out-of-memory error, so the
    smaller retry (or the next request) can have them: CUDA's and MPS's caching allocators."""
    if device == "cuda":
        torch.cuda.empty_cache()
    elif device == "mps":
        torch.mps.empty_cache()


def _run_or_split(
    torch: Any,
    forward: Forward,
    stack: Any,
    scale: int,
    tile: int,
    pad: int,
    multiple: int,
    cancel: CancelFlag | None,
) -> Any:
    try:
        return forward(stack)
    except Exception as exc:
        if not is_oom(exc):
            raise
    # Out of the except block: the failed attempt's tensors are released before the retry.
    release_cached(torch, stack.device.type)
    if stack.shape[0] > 1:
        return torch.cat(
            [
                _run_or_split(torch, forward, stack[i : i + 1], scale, tile, pad, multiple, cancel)
                for i in range(stack.shape[0])
            ]
        )
    current = min(tile, max(stack.shape[2], stack.shape[3]))
    if current <= MIN_TILE:
        raise OutOfMemory(f"out of memory even with {MIN_TILE}px tiles")
    return upscale_tensor(
        torch, forward, stack, scale, max(MIN_TILE, current // 2), pad, multiple=multiple, cancel=cancel
    )


def _ramp(torch: Any, n: int, lo: int, hi: int, device: str) -> Any:
    """app.tiling._ramp on the device: weights (n,) rising over `lo` samples, falling over `hi`."""
    w = torch.ones(n, dtype=torch.float32, device=device)
    if lo:
        w[:lo] = (torch.arange(lo, dtype=torch.float32, device=device) + 0.5) / lo
    if hi:
        falling = (torch.arange(hi, 0, -1, dtype=torch.float32, device=device) - 0.5) / hi
        w[n - hi :] = torch.minimum(w[n - hi :], falling)
    return w


def _weights(torch: Any, kh: int, kw: int, bands: tuple[int, int, int, int], device: str) -> Any:
    """The (kh, kw) blend weights of a kept region, built on the device in the current stream (a few
    tiny kernels; a cache shared between streams would need cross-stream synchronisation)."""
    top, bottom, left, right = bands
    return _ramp(torch, kh, top, bottom, device)[:, None] * _ramp(torch, kw, left, right, device)[None, :]


def quantize_tensor(torch: Any, y: Any, bit_depth: int) -> Any:
    """float (about 0..1) -> uint8, or for 16 bits int16 holding v - 32768 (torch has no general
    uint16; the host adds 32768 back). Rounded to nearest and clipped as app.imaging.pixels.quantize
    does; NaN becomes 0. A float32 `y` is worked on in place (no second output-sized float buffer)."""
    peak = 65535.0 if bit_depth == 16 else 255.0
    y = y.float().nan_to_num_(nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0).mul_(peak).add_(0.5).floor_()
    if bit_depth == 16:
        return y.sub_(32768.0).to(torch.int16)
    return y.to(torch.uint8)
