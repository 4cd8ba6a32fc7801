"""Where and how a PyTorch model runs: the device, the precision and the CPU / GPU tile side.

Choices from what the machine reports: torch is passed in (never imported here) and the CPU's flags
are read from a file the caller may name, so the choices are tested without the hardware they are for.
"""

from __future__ import annotations

from typing import Any

from app.models.descriptor import ModelDescriptor

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """AVX512-BF16 or AMX in the CPU's flags: bf16 convolutions run faster than fp32 there (oneDNN).
    False where the file cannot be read (not Linux)."""
    try:
        with open(cpuinfo) as f:
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


# Activation memory a CPU tile may take (float32 values): 768 MiB is what RRDBNet's measured best tiles
# use (256 px for x4, whose head holds three num_feat maps at 16x the pixels; 512 px for x2).
CPU_TILE_BYTES = 768 * 1024 * 1024
CPU_TILES = (512, 384, 256, 192, 128)
GPU_TILES = (1024, 768, 512, 384, 256, 192, 128)


def default_tile(device: str, desc: ModelDescriptor, free_bytes: int | None) -> int:
    """Tile side in input pixels; 0 (the whole image) for models whose descriptor discourages tiling
    or tiles internally (the out-of-memory halving still applies).

    CPU: measured with scripts/bench.py, per-pixel speed stays flat from 128 px up while each tile's
    context costs (1 + 2*pad/tile)^2, so tiles are as large as CPU_TILE_BYTES of activations allow,
    up to 512 px. GPU: the largest tile whose fp16 activations fit a quarter of free memory.
    """
    if desc.tiling != "supported":
        return 0
    per_px = max(1, desc.activations_per_pixel)
    if device == "cpu" or free_bytes is None:
        return next((t for t in CPU_TILES if t * t * per_px * 4 <= CPU_TILE_BYTES), CPU_TILES[-1])
    return next((t for t in GPU_TILES if t * t * per_px * 2 < free_bytes / 4), 64)


def effective_precision(precision: str, desc: ModelDescriptor) -> str:
    """The backend's precision, lowered to fp32 where the model's descriptor says it is not safe."""
    if precision == "fp16" and not desc.supports_half:
        return "fp32"
    if precision == "bf16" and not desc.supports_bfloat16:
        return "fp32"
    return precision
