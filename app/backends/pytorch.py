"""PyTorch backend: safe checkpoint loading, device and precision choice, and the tile runner.

torch is imported inside functions only, so the service starts (LANCZOS only) without it.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from app.backends.base import (
    BACKEND_UNAVAILABLE,
    LIBRARY_MISSING,
    WEIGHTS_MISSING,
    Architecture,
    BackendStatus,
    ModelEntry,
)
from app.backends.checkpoint import UnknownArchitecture, detect, normalize_state_dict

log = logging.getLogger("app.backends.pytorch")

SUFFIXES = (".pth", ".pt", ".safetensors")
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions run faster than fp32 there (oneDNN)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(torch: Any, requested: str) -> str:
    """auto -> cuda, then mps, then cpu. Raises RuntimeError when an explicit device is absent."""
    has_cuda = torch.cuda.is_available()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return "cuda" if has_cuda else "mps" if has_mps else "cpu"
    if (requested == "cuda" and not has_cuda) or (requested == "mps" and not has_mps):
        raise RuntimeError(f"UPSCALER_DEVICE={requested} but this machine has no {requested} device")
    return requested


def pick_precision(device: str, requested: str, native_bf16: bool) -> str:
    """auto: fp16 on cuda and mps; bf16 on CPUs with native bf16; else fp32."""
    if requested != "auto":
        return requested
    if device in ("cuda", "mps"):
        return "fp16"
    return "bf16" if native_bf16 else "fp32"


def default_tile(device: str, arch: Architecture, free_bytes: int | None) -> int:
    """Tile side in input pixels.

    CPU: measured with scripts/bench.py, per-pixel speed stays flat from 128 px up while each tile's
    context costs (1 + 2*pad/tile)^2, so tiles are as large as a bounded activation memory allows:
    256 px for x4 (a 1152 px feature map at the head), 512 px for x2 / x1, whose trunk runs at half or
    a quarter of the resolution. GPU: the largest tile whose activations fit a quarter of free memory.
    """
    if device == "cpu" or free_bytes is None:
        return 256 if arch.scale == 4 else 512
    # Per input pixel: about num_feat values at 16x the pixels (the x4 head) plus the dense blocks' concat.
    per_px = 2 * (arch.num_feat * 16 * 3 + (arch.num_feat + 4 * arch.num_grow_ch) * 2) / arch.size_multiple**2
    for tile in (1024, 768, 512, 384, 256, 192, 128):
        if tile * tile * per_px < free_bytes / 4:
            return tile
    return 64


class TorchRunner:
    """Runs one RRDBNet on one device. Stateless per call: safe to share between requests."""

    def __init__(
        self, torch: Any, net: Any, arch: Architecture, device: str, precision: str, tile: int
    ) -> None:
        self.torch = torch
        self.net = net
        self.arch = arch
        self.scale = arch.scale
        self.size_multiple = arch.size_multiple
        self.device = device
        self.precision = precision
        self.default_tile = tile
        self.dtype = getattr(torch, DTYPES[precision])
        # On CPU, bf16 runs under autocast (oneDNN bf16 convolutions); elsewhere the weights are cast.
        self.autocast = device == "cpu" and precision == "bf16"

    def run(self, tile: np.ndarray) -> np.ndarray:
        """(h, w, C) uint8 / uint16 / float32 -> (h*s, w*s, C) float32, clamped to 0..1."""
        torch = self.torch
        h, w, c = tile.shape
        with torch.inference_mode():
            tile = np.ascontiguousarray(tile)
            # A read-only array (np.asarray of a Pillow image) cannot back a tensor: copy that one only.
            x = torch.from_numpy(tile) if tile.flags.writeable else torch.tensor(tile)
            if self.device == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            elif self.device != "cpu":
                x = x.to(self.device)
            # HWC memory viewed as NCHW is already channels_last: no copy.
            x = x.permute(2, 0, 1).unsqueeze(0)
            peak = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(tile.dtype, 1.0)
            x = x.to(torch.float32 if self.autocast else self.dtype)
            if peak != 1.0:
                x = x / peak
            if c == 1 and self.arch.in_ch == 3:
                x = x.expand(1, 3, h, w)
            elif c == 3 and self.arch.in_ch == 1:
                x = x.permute(1, 0, 2, 3)  # three grayscale images in one batch
            m = self.arch.size_multiple
            ph, pw = (-h) % m, (-w) % m
            if ph or pw:
                mode = "reflect" if h > ph and w > pw else "replicate"
                x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
            x = x.contiguous(memory_format=torch.channels_last)
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
                    y = self.net(x)
            except RuntimeError as exc:
                if self.device == "cuda" and "out of memory" in str(exc):
                    torch.cuda.empty_cache()
                raise
            y = y[:, :, : h * self.scale, : w * self.scale].float().clamp_(0.0, 1.0)
            if c == 1 and self.arch.out_ch == 3:
                y = y.mean(dim=1, keepdim=True)
            elif c == 3 and self.arch.in_ch == 1:
                y = y.permute(1, 0, 2, 3)
            return y[0].permute(1, 2, 0).contiguous().cpu().numpy()


class PyTorchBackend:
    name: str = "pytorch"
    suffixes: tuple[str, ...] = SUFFIXES

    def __init__(
        self, device: str = "auto", precision: str = "auto", tile: int | None = None, threads: int = 0
    ) -> None:
        self.requested_device = device
        self.requested_precision = precision
        self.tile = tile
        self.threads = threads
        self.torch: Any = None
        self.version: str | None = None
        self.device: str | None = None
        self.precision: str | None = None
        self.reason: str | None = None
        self.fallback_reason: str | None = None
        self._setup()

    def _setup(self) -> None:
        try:
            torch = importlib.import_module("torch")
        except Exception as exc:  # ImportError, or a broken install raising anything at import
            self.reason = f"torch is not importable: {exc}"
            self.fallback_reason = LIBRARY_MISSING
            return
        self.torch, self.version = torch, str(torch.__version__).split("+")[0]
        try:
            self.device = pick_device(torch, self.requested_device)
        except RuntimeError as exc:
            self.reason, self.fallback_reason = str(exc), BACKEND_UNAVAILABLE
            return
        self.precision = pick_precision(self.device, self.requested_precision, cpu_has_native_bf16())
        if self.device == "cpu":
            torch.set_num_threads(self.threads or os.cpu_count() or 1)

    def status(self) -> BackendStatus:
        return BackendStatus(
            self.name, self.reason is None, self.version, self.reason, self.device, self.precision
        )

    def read_state_dict(self, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
        """Load tensors through a safe path only. Raises ValueError with the reason."""
        torch = self.torch
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open
            from safetensors.torch import load_file

            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = dict(f.metadata() or {})
                return load_file(str(path)), meta
            except SafetensorError as exc:
                raise ValueError(f"not a readable safetensors file ({str(exc)[:200]})") from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            unsafe = [ln for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln]
            if unsafe:
                raise ValueError(
                    f"refused: the checkpoint's pickle would run code ({unsafe[0][:200]}); "
                    "it was not executed"
                ) from None
            detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[0] if lines else "")
            raise ValueError(f"not a readable PyTorch checkpoint ({detail[:200]})") from None
        return obj, {}

    def load(self, entry: ModelEntry) -> None:
        if self.reason is not None:
            entry.reason, entry.fallback_reason = self.reason, self.fallback_reason
            return
        torch = self.torch
        try:
            raw, entry.meta = self.read_state_dict(entry.file)
            sd = normalize_state_dict(raw)
            arch = detect(sd)
            entry.arch = arch
            from app.backends.rrdbnet import RRDBNet

            net = RRDBNet(
                arch.in_ch, arch.out_ch, arch.scale, arch.num_feat, arch.num_block, arch.num_grow_ch
            )
            net.load_state_dict(sd, strict=True)
        except (ValueError, UnknownArchitecture, RuntimeError, OSError, EOFError, KeyError) as exc:
            entry.reason = _one_line(exc)
            entry.fallback_reason = WEIGHTS_MISSING
            return
        assert self.device is not None and self.precision is not None
        try:
            net = net.eval().requires_grad_(False).to(self.device)
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            if self.precision != "fp32" and self.device != "cpu":
                net = net.to(getattr(torch, DTYPES[self.precision]))
            free = torch.cuda.mem_get_info()[0] if self.device == "cuda" else None
            tile = self.tile if self.tile is not None else default_tile(self.device, arch, free)
            runner = TorchRunner(torch, net, arch, self.device, self.precision, tile)
            runner.run(np.zeros((16, 16, arch.in_ch), np.uint8))  # warm-up: one tiny real forward
        except Exception as exc:  # a model that cannot even run a 16x16 tile must not stop start-up
            entry.reason = f"warm-up failed: {_one_line(exc)}"
            entry.fallback_reason = "model_error"
            return
        entry.runner = runner


def _one_line(exc: BaseException) -> str:
    """The exception as one line (multi-line messages such as load_state_dict's joined by '; ')."""
    text = "; ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
    return f"{type(exc).__name__}: {text[:400]}" if text else type(exc).__name__
