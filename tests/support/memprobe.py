"""Peak RSS of one upscale through the service's pipeline, beside its memory estimate.

Run as `python -m tests.support.memprobe MODE BITS SIZE SCALE MODEL [WEIGHTS_DIR]` in a process of its
own: the kernel's high-water mark (VmHWM, reset through /proc/self/clear_refs once the input is built)
is read after the upscale and printed as JSON with the estimate. Linux only.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import sys

import numpy as np
import png
from PIL import Image

from app.backends.pytorch import PyTorchBackend
from app.backends.registry import Registry
from app.config import load_settings
from app.service import Job, UpscaleService
from app.sizing import ScaleTo

PLANES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def noisy_png(mode: str, bits: int, size: int) -> bytes:
    """Incompressible pixels: the worst case for every buffer, the encoder's output included."""
    planes = PLANES[mode]
    buf = io.BytesIO()
    if bits == 16:
        arr16 = np.random.default_rng(0).integers(0, 65536, (size, size, planes), dtype=np.uint16)
        png.Writer(
            size, size, greyscale=planes <= 2, alpha=planes in (2, 4), bitdepth=16, compression=1
        ).write_array(buf, arr16.reshape(-1))
    else:
        arr8 = np.random.default_rng(0).integers(0, 256, (size, size, planes), dtype=np.uint8)
        Image.fromarray(arr8[..., 0] if planes == 1 else arr8, mode).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def main(argv: list[str]) -> None:
    mode, bits, size, scale, model = argv[0], int(argv[1]), int(argv[2]), float(argv[3]), argv[4]
    weights = argv[5] if len(argv) > 5 else "/nonexistent-weights"
    data = noisy_png(mode, bits, size)
    settings = load_settings({"UPSCALER_WEIGHTS_DIR": weights, "UPSCALER_MEMORY_BUDGET_MB": "100000"})
    registry = Registry([PyTorchBackend("cpu", "auto")])
    registry.scan(settings.weights_dir)
    service = UpscaleService(settings, registry, {})
    job = Job(data, ScaleTo(scale), model=model)
    plan = service.plan(job)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # start a fresh high-water mark
    before = status("VmRSS")
    result = asyncio.run(service.upscale(job))
    peak = status("VmHWM") - before
    print(json.dumps({"upscaler": result.upscaler, "estimate": plan.memory_bytes, "peak": peak}))


if __name__ == "__main__":
    main(sys.argv[1:])
