"""Convert an RRDBNet checkpoint (ESRGAN / Real-ESRGAN) to a Core ML package the service serves on macOS.

    python scripts/convert_coreml.py weights/RealESRGAN_x4plus.pth                 # one 256 x 256 tile
    python scripts/convert_coreml.py weights/x2.safetensors --shapes 128,256,512   # enumerated shapes
    python scripts/convert_coreml.py x4.pth --output weights/x4.mlpackage --precision fp32 --check

The checkpoint loads through the service's safe loader (a pickle that would run code is refused) into
the service's RRDBNet, which is traced and converted to an ML program: input `input` (1, C, H, W) float32
in 0..1, output `output`, user metadata with scale, arch, hyper-parameters, tile sizes and the
checkpoint's sha256. Conversion runs on Linux too. `--check` compares the package with torch at every
shape: through Core ML on macOS, through the reference executor of the package's program elsewhere.
Exit status: 0 done, 1 conversion or check failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.backends.coreml import CoreMLRunner  # noqa: E402
from scripts.coreml_convert import (  # noqa: E402
    DEFAULT_TILE,
    PRECISIONS,
    TARGETS,
    UnsupportedRequest,
    compare_with_torch,
    convert_checkpoint,
    format_shapes,
    parse_shapes,
)

CHECK_MIN_PSNR = 40.0
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
SERVICE_TILE_PAD = 16  # UPSCALER_TILE_PAD's default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", type=Path, help="checkpoint: .pth, .pt or .safetensors")
    p.add_argument("--output", type=Path, help="package to write (default: WEIGHTS with .mlpackage)")
    sizes = p.add_mutually_exclusive_group()
    sizes.add_argument("--tile", type=int, help=f"one fixed N x N input shape (default {DEFAULT_TILE})")
    sizes.add_argument("--shapes", help="enumerated input shapes: N or HxW, comma-separated (128,256,512)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16", help="fp16 runs on the Neural Engine")
    p.add_argument("--target", choices=TARGETS, default="macOS13", help="minimum macOS (x2 / x1: macOS13+)")
    p.add_argument("--compute-units", choices=COMPUTE_UNITS, default="ALL", help="for --check on macOS")
    p.add_argument("--check", action="store_true", help=f"compare with torch; fail below {CHECK_MIN_PSNR} dB")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.weights.is_file():
        print(f"error: {args.weights} is not a file", file=sys.stderr)
        return 2
    try:
        shapes = parse_shapes(args.shapes) if args.shapes else [(args.tile or DEFAULT_TILE,) * 2]
    except ValueError as exc:
        print(f"error: --shapes: {exc}", file=sys.stderr)
        return 2
    output = args.output or args.weights.with_suffix(".mlpackage")
    t0 = time.perf_counter()
    try:
        done = convert_checkpoint(args.weights, output, shapes, args.precision, args.target)
    except UnsupportedRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # unreadable or refused checkpoint, unknown architecture
        print(f"error: {args.weights}: {exc}", file=sys.stderr)
        return 1
    a = done.descriptor
    print(f"wrote {done.output} in {time.perf_counter() - t0:.1f} s")
    print(f"  {a.family} x{a.scale}: " + ", ".join(f"{k} {v}" for k, v in a.hyperparameters.items()))
    print(f"  input (1, {a.in_ch}, H, W), H x W in {format_shapes(done.shapes)}")
    print(f"  {args.precision}, minimum {args.target}")
    served = CoreMLRunner(lambda x: x, a.scale, done.shapes, SERVICE_TILE_PAD, a.in_ch, a.size_multiple)
    print(
        f"  the service runs {served.default_tile} px tiles with {served.pad} px context "
        f"(at UPSCALER_TILE_PAD={SERVICE_TILE_PAD})"
    )
    print(f"  source sha256 {done.metadata['source_sha256']}")
    if not args.check:
        return 0
    runtime, results = compare_with_torch(done.output, done.net, a.in_ch, done.shapes, args.compute_units)
    if runtime != "coreml":
        print("check: Core ML predicts only on macOS; comparing the package's program run by the reference")
        print("       executor (scripts/mil_reference.py) instead, which is not Core ML's runtime")
    print(f"{'shape':>11}  {'PSNR vs torch (dB)':>18}  [{runtime}]")
    for (h, w), db in results:
        print(f"{h:>5}x{w:<5}  {db:18.2f}")
    worst = min(db for _, db in results)
    if worst < CHECK_MIN_PSNR:
        print(f"check failed: {worst:.2f} dB < {CHECK_MIN_PSNR} dB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
