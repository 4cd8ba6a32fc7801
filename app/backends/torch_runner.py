"""The PyTorch runner: one model on its device, whole images in and out. The image goes to the device
once (integers from pinned memory on CUDA), is tiled, batched, blended, resized and quantised there
(torch_tiles.py), and only the final integer image comes back. On CUDA each calling thread has its own
stream, and repeated window shapes replay captured graphs (cuda_graphs.py).

torch is handed in by the backend (pytorch.py), never imported here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import numpy as np

from app.backends.cuda_graphs import GraphCache
from app.backends.placement import DTYPES
from app.backends.torch_tiles import quantize_tensor, release_cached, resize_tensor, upscale_tensor
from app.imaging.pixels import resized
from app.models.descriptor import ModelDescriptor
from app.tiling import CancelFlag, TilePlan, is_oom

# Windows of one shape run together while their activations fit this share of free GPU memory (the
# model's own tile choice takes a quarter; two requests run at once on separate streams).
BATCH_MEMORY_SHARE = 0.25
MAX_WINDOW_BATCH = 8
# CUDA graphs (cuda_graphs.py) for windows whose activations fit this (and a 16th of the GPU's memory);
# all of one thread's graphs together keep at most a 16th of it (an eighth for the two device threads).
GRAPH_BYTES = 2 << 30


class TorchRunner:
    """Runs one model on one device. Stateless per call: safe to share between requests (on CUDA each
    calling thread gets its own stream, so one request's copies overlap another's compute)."""

    def __init__(
        self,
        torch: Any,
        net: Any,
        desc: ModelDescriptor,
        device: str,
        precision: str,
        tile: int,
        graphs: bool = False,
    ) -> None:
        self.torch = torch
        self.net = net
        self.descriptor = desc
        self.scale = desc.scale
        self.size_multiple = desc.size_multiple
        self.device = device
        self.precision = precision
        self.default_tile = tile
        self.dtype = getattr(torch, DTYPES[precision])
        # On CPU, bf16 runs under autocast (oneDNN bf16 convolutions); elsewhere the weights are cast.
        self.autocast = device == "cpu" and precision == "bf16"
        # LANCZOS to a size off the model's scale: on the device, except on CPU, where Pillow's C loop
        # on the host ran 3-4x torch's taps (scripts/bench.py --models none: 2048² -> 1536² RGB,
        # quantised, 0.21-0.22 s against 0.62-0.84 s on 2 cores).
        self.resize_on_device = device != "cpu"
        self._local = threading.local()
        # With UPSCALER_CUDA_GRAPHS (the default) on CUDA, repeated window shapes replay a captured graph
        # (cuda_graphs.py): one launch where the eager forward is hundreds, each taking the GIL again.
        self.graphs: GraphCache | None = None
        if graphs and device == "cuda":
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            self.graphs = GraphCache(
                torch,
                lambda x: self.net(x),
                lambda x: self._activation_bytes(x.shape[0] * x.shape[2] * x.shape[3]),
                graph_bytes=min(GRAPH_BYTES, total // 16),
                thread_bytes=total // 16,
            )

    def _pad(self, x: Any, h: int, w: int) -> Any:
        """Pad (bottom / right) up to the model's size multiple, minimum and squareness."""
        d = self.descriptor
        th, tw = max(h, d.size_minimum), max(w, d.size_minimum)
        if d.hyperparameters.get("square"):
            th = tw = max(th, tw)
        th, tw = -(-th // d.size_multiple) * d.size_multiple, -(-tw // d.size_multiple) * d.size_multiple
        ph, pw = th - h, tw - w
        if not (ph or pw):
            return x
        mode = "reflect" if h > ph and w > pw else "replicate"
        return self.torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)

    def forward(self, x: Any) -> Any:
        """(B, C, h, w) float tensor on the device, values 0..1 -> (B, C, h*s, w*s) float32 in 0..1.
        A 1-channel image through a 3-channel model runs as gray RGB (the output averaged back); a
        3-channel image through a 1-channel model runs as three gray images in one batch."""
        torch = self.torch
        b, c, h, w = x.shape
        in_ch, out_ch, s = self.descriptor.in_ch, self.descriptor.out_ch, self.scale
        x = x.to(torch.float32 if self.autocast else self.dtype)
        if c == 1 and in_ch == 3:
            x = x.expand(b, 3, h, w)
        elif c == 3 and in_ch == 1:
            x = x.reshape(b * 3, 1, h, w)
        x = self._pad(x, h, w).contiguous(memory_format=torch.channels_last)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
                y = self.net(x) if self.graphs is None else self.graphs(x)
        except Exception as exc:
            if is_oom(exc):
                if self.graphs is not None:
                    self.graphs.clear()
                release_cached(torch, self.device)
            raise
        y = y[:, :, : h * s, : w * s].float().clamp_(0.0, 1.0)
        if c == 1 and out_ch == 3:
            y = y.mean(dim=1, keepdim=True)
        elif c == 3 and in_ch == 1:
            y = y.reshape(b, 3, h * s, w * s)
        return y

    # -- host <-> device ------------------------------------------------------------------------------
    def _stream(self) -> Any:
        """This thread's CUDA stream (made on first use), as a context; nothing elsewhere."""
        if self.device != "cuda":
            return contextlib.nullcontext()
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = self.torch.cuda.Stream()
        return self.torch.cuda.stream(stream)

    def _wait(self) -> None:
        """Until this thread's stream has done its work, asleep. A stream's synchronize spins a core for
        as long as the GPU works (CUDA's default while there are fewer contexts than cores): under 8
        clients that is a core per device thread taken from the decode and encode threads, which are
        then the bound. A blocking event sleeps until the GPU signals. On an H100 host: up to 0.5 ms
        more a request alone; under 8 clients (rrdb-x2, eager) 80-87 ms of server CPU an image
        against 82-91 spinning, the images/s within the rounds' spread."""
        done = getattr(self._local, "done", None)
        if done is None:
            done = self._local.done = self.torch.cuda.Event(blocking=True)
        done.record()
        done.synchronize()

    def _to_device(self, pixels: np.ndarray) -> Any:
        """(H, W, C) uint8 / uint16 / float32 -> (1, C, H, W) float32 on the device, values 0..1. The
        integers travel as they are (from pinned memory on CUDA) and become floats on the device."""
        torch = self.torch
        arr = np.ascontiguousarray(pixels)
        peak, offset = 1.0, 0.0
        if arr.dtype == np.uint8:
            peak = 255.0
        elif arr.dtype == np.uint16:  # torch has no general uint16: shift into int16, shift back there
            arr, peak, offset = (arr ^ np.uint16(0x8000)).view(np.int16), 65535.0, 32768.0
        elif arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        if self.device == "cuda":
            # numpy's copy, one memcpy: torch's own CPU copy splits 1.77 MB (a 768² RGB upload) over
            # all its intra-op threads, 0.23-0.26 ms with 16 of them against 0.05 ms (2-core machine).
            dtype = {np.uint8: torch.uint8, np.int16: torch.int16}.get(arr.dtype.type, torch.float32)
            staged = torch.empty(arr.shape, dtype=dtype, pin_memory=True)
            np.copyto(staged.numpy(), arr)
            host = staged.to(self.device, non_blocking=True)
        else:
            # A read-only array (np.asarray of a Pillow image) cannot back a tensor: copy that one only.
            host = torch.from_numpy(arr) if arr.flags.writeable else torch.tensor(arr)
            if self.device != "cpu":
                host = host.to(self.device)
        x = host.permute(2, 0, 1).unsqueeze(0).float()
        if offset:
            x += offset
        if peak != 1.0:
            x /= peak
        return x

    def _to_host(self, y: Any) -> np.ndarray:
        """(1, C, H, W) device tensor -> (H, W, C) numpy array (int16 offsets back to uint16)."""
        torch = self.torch
        hwc = y[0].permute(1, 2, 0).contiguous()
        if self.device == "cuda":
            host = torch.empty(hwc.shape, dtype=hwc.dtype, pin_memory=True)
            host.copy_(hwc, non_blocking=True)
            self._wait()
        else:
            host = hwc.cpu()
        arr = host.numpy()
        if arr.dtype == np.int16:
            return arr.view(np.uint16) ^ np.uint16(0x8000)
        return arr

    def _batch_for(self, plan: TilePlan) -> int:
        """Windows per forward: as many as fit BATCH_MEMORY_SHARE of free GPU memory (at most
        MAX_WINDOW_BATCH); one on CPU, where a batch runs no faster than its windows one by one."""
        if self.device != "cuda":
            return 1
        per_window = self._activation_bytes(plan.win_h * plan.win_w)
        free = self.torch.cuda.mem_get_info()[0]
        return max(1, min(MAX_WINDOW_BATCH, len(plan.windows), int(free * BATCH_MEMORY_SHARE // per_window)))

    def _activation_bytes(self, pixels: int) -> int:
        """The model's activations for `pixels` input pixels, estimated from its descriptor."""
        return pixels * max(1, self.descriptor.activations_per_pixel) * self.dtype.itemsize

    # -- the two entry points -------------------------------------------------------------------------
    def run(self, tile: np.ndarray) -> np.ndarray:
        """(h, w, C) uint8 / uint16 / float32 -> (h*s, w*s, C) float32, clamped to 0..1 (the Runner
        protocol: one window, for the numpy tiler)."""
        with self.torch.inference_mode(), self._stream():
            return self._to_host(self.forward(self._to_device(tile)))

    def upscale_image(
        self,
        pixels: np.ndarray,
        passes: int,
        *,
        tile: int,
        pad: int,
        cancel: CancelFlag | None = None,
        bit_depth: int | None = None,
        size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """The whole image through `passes` passes on the device: in once, tiled, batched, blended,
        LANCZOS-resized to `size` = (W, H) when given and different, and (with `bit_depth`) quantised
        there, out once. Returns (H', W', C) uint8 / uint16 with `bit_depth` 8 / 16, else float32 in
        0..1; H' x W' is `size`, else (H*s^n, W*s^n). Without `resize_on_device` (CPU) the resize and
        quantisation are Pillow's and numpy's on the host."""
        torch = self.torch
        with torch.inference_mode(), self._stream():
            x = self._to_device(pixels)
            for _ in range(passes):
                x = upscale_tensor(
                    torch,
                    self.forward,
                    x,
                    self.scale,
                    tile,
                    pad,
                    multiple=self.size_multiple,
                    batch_for=self._batch_for,
                    cancel=cancel,
                )
            if size is not None and (x.shape[-1], x.shape[-2]) != size:
                done = self._resize_on_device(x, size) if self.resize_on_device else None
                if done is None:  # CPU, or out of memory there: the host resizes the model's output
                    return resized(self._to_host(x), size, bit_depth)
                x = done
            if bit_depth is not None:
                x = quantize_tensor(torch, x, bit_depth)
            return self._to_host(x)

    def _resize_on_device(self, x: Any, size: tuple[int, int]) -> Any:
        """resize_tensor, or None when the device runs out of memory for it."""
        try:
            return resize_tensor(self.torch, x, size)
        except Exception as exc:
            if not is_oom(exc):
                raise
        release_cached(self.torch, self.device)  # out of the except block: the attempt's tensors are gone
        return None

    def compile(self) -> float:
        """torch.compile the net and compile it now (not on the first request); returns the seconds.

        Dynamic shapes: one graph serves every window side and batch the tile plans make (Inductor
        fuses the activations, residual scalings and concatenations around the convolutions, which
        stay cuDNN's / oneDNN's whatever the shape). The warm-ups make the compiles happen here, not on
        a request: unequal sides (equal ones would be assumed equal from then on), batches of one (a
        size of 1 is specialised) and of two, and sizes on both sides of the small-input convolution
        choice. A later shape outside those guards compiles once more, on its first request.
        Inductor's own cache (TORCHINDUCTOR_CACHE_DIR) makes a restart's compile much shorter."""
        torch = self.torch
        t0 = time.perf_counter()
        self.graphs = None  # Inductor's graph replaces the eager one
        self.net = torch.compile(self.net, dynamic=True)
        d, m = self.descriptor, self.size_multiple
        with torch.inference_mode(), self._stream():
            for batch, h, w in ((1, 32, 48), (1, 96, 128), (2, 128, 160), (2, 32, 48)):
                h, w = max(h, d.size_minimum), max(w, d.size_minimum)
                self.forward(torch.zeros((batch, d.in_ch, h - h % m, w - w % m), device=self.device))
            if self.device == "cuda":
                torch.cuda.current_stream().synchronize()
        return time.perf_counter() - t0
