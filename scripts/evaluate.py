"""PSNR / SSIM table on Set5 and Set14 (Y channel, BT.601), as the SR literature reports them.

    python scripts/evaluate.py                                   # weights/*.safetensors
    python scripts/evaluate.py ~/models/RealESRGAN_x4plus.pth    # plus any checkpoint

Protocol: HR modcropped to the scale, LR made with Pillow BICUBIC, `scale` pixels shaved from each
border, 8-bit outputs. Rows: bicubic, LANCZOS and each model at its native scale, run through the
service's own loader (safe path) and engine (tiling, precision), so the numbers are what it serves.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.backends.base import ModelEntry  # noqa: E402
from app.backends.pytorch import PyTorchBackend  # noqa: E402
from app.engine import run_model  # noqa: E402
from app.imaging.pixels import quantize  # noqa: E402
from scripts.quality import bicubic_lr, modcrop, psnr_y, ssim_y  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
SETS = ("Set5", "Set14")


def load_set(name: str) -> list[Image.Image]:
    folder = DATASETS / name
    if not folder.is_dir():
        raise SystemExit(f"{folder} not found: the benchmark images live in ../shared/datasets")
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]


def score(
    upscale: Callable[[Image.Image], np.ndarray], images: list[Image.Image], scale: int
) -> tuple[float, float, float]:
    """Mean Y-PSNR, mean Y-SSIM and seconds per image of `upscale(lr) -> uint8 array`."""
    psnrs, ssims, seconds = [], [], 0.0
    for img in images:
        hr = modcrop(img, scale)
        lr = bicubic_lr(hr, scale)
        t0 = time.perf_counter()
        sr = upscale(lr)
        seconds += time.perf_counter() - t0
        ref = np.asarray(hr)
        psnrs.append(psnr_y(sr, ref, shave=scale))
        ssims.append(ssim_y(sr, ref, shave=scale))
    return float(np.mean(psnrs)), float(np.mean(ssims)), seconds / len(images)


def resample(method: Image.Resampling, scale: int) -> Callable[[Image.Image], np.ndarray]:
    return lambda lr: np.asarray(lr.resize((lr.width * scale, lr.height * scale), method))


def neural(entry: ModelEntry, tile: int | None) -> Callable[[Image.Image], np.ndarray]:
    runner = entry.runner
    assert runner is not None
    return lambda lr: quantize(run_model(np.asarray(lr), runner, runner.scale, tile=tile), 8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", type=Path, help="extra checkpoints (.pth / .pt / .safetensors)")
    p.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--tile", type=int, default=None, help="tile side (default: the service's choice)")
    p.add_argument("--sets", default=",".join(SETS))
    args = p.parse_args()

    backend = PyTorchBackend(device="auto", precision=args.precision)
    if not backend.status().available:
        raise SystemExit(f"PyTorch backend unavailable: {backend.status().reason}")
    files = sorted(args.weights_dir.glob("*.safetensors")) + list(args.models)
    entries = []
    for f in files:
        entry = ModelEntry(f.stem, "pytorch", f)
        backend.load(entry)
        if not entry.available:
            print(f"skipping {f}: {entry.reason}", file=sys.stderr)
            continue
        entries.append(entry)
    sets = {name: load_set(name) for name in args.sets.split(",")}
    scales = sorted({e.scale for e in entries if e.scale and e.scale > 1} or {2, 4})

    status = backend.status()
    print(f"device {status.device}, precision {status.precision}; Y channel, shave = scale, bicubic LR\n")
    head = "| method | scale | " + " | ".join(f"{s} PSNR | {s} SSIM" for s in sets) + " | s/image (Set14) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for scale in scales:
        rows: list[tuple[str, Callable[[Image.Image], np.ndarray]]] = [
            ("bicubic", resample(Image.Resampling.BICUBIC, scale)),
            ("LANCZOS", resample(Image.Resampling.LANCZOS, scale)),
        ]
        rows += [(e.name, neural(e, args.tile)) for e in entries if e.scale == scale]
        for name, fn in rows:
            cells, secs = [], 0.0
            for images in sets.values():
                ps, ss, secs = score(fn, images, scale)
                cells.append(f"{ps:.2f} | {ss:.4f}")
            print(f"| {name} | x{scale} | " + " | ".join(cells) + f" | {secs:.3f} |", flush=True)


if __name__ == "__main__":
    main()
