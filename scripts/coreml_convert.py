"""Convert RRDBNet and SRVGGNetCompact checkpoints (or ncnn pairs) to Core ML packages (ML programs),
and check a package against torch.

Shared by scripts/convert_coreml.py and the tests. Conversion runs anywhere coremltools installs;
`compare_with_torch` uses Core ML itself on macOS and the reference executor (mil_reference) elsewhere.
torch and coremltools are imported inside functions only.

A package takes `input` (1, C, H, W) float32 in 0..1, where H x W is its fixed tile shape or one of a
few enumerated shapes (no unbounded RangeDim: the Neural Engine wants shapes known at compile time),
and gives `output` (1, C, H*s, W*s). Its user metadata says what it is; `coreml.describe` reads it.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.models.descriptor import ModelDescriptor
from scripts.quality import psnr_unit

TARGETS = ("macOS12", "macOS13", "macOS14", "macOS15", "macOS26")
PRECISIONS = ("fp16", "fp32")
DEFAULT_TILE = 256
MIN_SIDE = 16
MAX_SHAPES = 16  # Core ML allows 128; each one is compiled and kept per device
UNSHUFFLE_TARGET = "macOS13"  # the pixel_unshuffle op of x2 / x1 models exists from iOS16 / macOS13 on
# Families whose op set the converter and the reference executor (mil_reference) cover.
CONVERTIBLE = ("RRDBNet", "SRVGGNetCompact")


class UnsupportedRequest(ValueError):
    """Shapes, target, precision or output this model cannot be converted with; says what to change."""


@dataclass(frozen=True)
class Conversion:
    """What `convert_checkpoint` wrote: the package, the converted net (torch, fp32, eval) and its
    descriptor, the (H, W) input shapes and the user metadata."""

    output: Path
    net: Any
    descriptor: ModelDescriptor
    shapes: list[tuple[int, int]]
    metadata: dict[str, str]


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'128,256,512' (squares) or '256x384' (H x W) -> sorted unique (H, W). Raises ValueError."""
    shapes = set()
    for token in (t.strip() for t in text.split(",")):
        m = re.fullmatch(r"(\d+)(?:x(\d+))?", token)
        if not m:
            raise ValueError(f"bad shape {token!r}: use N for N x N, or HxW, separated by commas")
        h = int(m.group(1))
        shapes.add((h, int(m.group(2) or h)))
    return sorted(shapes, key=lambda s: (s[0] * s[1], s))


def format_shapes(shapes: list[tuple[int, int]]) -> str:
    """The inverse of `parse_shapes`."""
    return ",".join(str(h) if h == w else f"{h}x{w}" for h, w in shapes)


def check_request(desc: ModelDescriptor, shapes: list[tuple[int, int]], target: str) -> None:
    """Raise UnsupportedRequest, saying what to change, for shapes or a target this model cannot have."""
    if desc.family not in CONVERTIBLE:
        raise UnsupportedRequest(
            f"{desc.family} models are not converted to Core ML here (only {', '.join(CONVERTIBLE)})"
        )
    if target not in TARGETS:
        raise UnsupportedRequest(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if desc.unshuffle > 1 and TARGETS.index(target) < TARGETS.index(UNSHUFFLE_TARGET):
        raise UnsupportedRequest(
            f"x{desc.scale} {desc.family} models pixel-unshuffle their input, which Core ML has from "
            f"{UNSHUFFLE_TARGET} on: use --target {UNSHUFFLE_TARGET} or newer (asked for {target})"
        )
    if not 1 <= len(shapes) <= MAX_SHAPES:
        raise UnsupportedRequest(f"give 1 to {MAX_SHAPES} input shapes, not {len(shapes)}")
    m = desc.size_multiple
    for h, w in shapes:
        if min(h, w) < MIN_SIDE or h % m or w % m:
            multiple = f" and multiples of {m}" if m > 1 else ""
            raise UnsupportedRequest(
                f"shape {h}x{w}: sides must be at least {MIN_SIDE}{multiple} for an x{desc.scale} model"
            )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: Path) -> tuple[Any, ModelDescriptor]:
    """The service's net with `path`'s weights, loaded through the service's safe loader
    (safetensors, torch.load(weights_only=True), or an ncnn pair): (net in fp32 eval mode, descriptor).
    Raises ValueError (unreadable or refused file, unknown architecture) or RuntimeError (weights that
    do not fit)."""
    from app.models.architectures import load_file

    desc, net, _ = load_file(Path(path))
    return net.eval().requires_grad_(False), desc


def package_metadata(
    desc: ModelDescriptor,
    shapes: list[tuple[int, int]],
    source: Path,
    sha256: str,
    precision: str,
    target: str,
) -> dict[str, str]:
    """User metadata for the package; `coreml.describe` reads `arch`, `scale` and `hyperparameters`."""
    return {
        "arch": desc.family,
        "scale": str(desc.scale),
        "hyperparameters": json.dumps(desc.health(), sort_keys=True),
        "activations_per_pixel": str(desc.activations_per_pixel),
        "tile_sizes": format_shapes(shapes),
        "shape_mode": "fixed" if len(shapes) == 1 else "enumerated",
        "precision": precision,
        "deployment_target": target,
        "source_file": source.name,
        "source_sha256": sha256,
        "converter": "scripts/convert_coreml.py",
    }


def convert_checkpoint(
    weights: Path,
    output: Path,
    shapes: list[tuple[int, int]] | None = None,
    precision: str = "fp16",
    target: str = "macOS13",
) -> Conversion:
    """Convert `weights` to the ML program package `output` (.mlpackage, replaced if present).
    `shapes` defaults to one DEFAULT_TILE square. Raises UnsupportedRequest (a ValueError) for shapes,
    target, precision or output it cannot have, ValueError for an unreadable or refused checkpoint."""
    import torch

    from app.backends.coreml import import_coremltools

    if output.suffix != ".mlpackage":
        raise UnsupportedRequest(f"an ML program is saved as a .mlpackage, not {output.name!r}")
    if precision not in PRECISIONS:
        raise UnsupportedRequest(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    shapes = shapes or [(DEFAULT_TILE, DEFAULT_TILE)]
    net, desc = load_checkpoint(weights)
    check_request(desc, shapes, target)
    ct = import_coremltools()
    c = desc.in_ch
    if len(shapes) == 1:
        in_shape: Any = (1, c, *shapes[0])
    else:
        in_shape = ct.EnumeratedShapes(shapes=[(1, c, h, w) for h, w in shapes], default=(1, c, *shapes[-1]))
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript tracing, but TorchScript is coremltools 9's tested frontend
        # (torch.export cannot take EnumeratedShapes); the pair is verified by the conversion tests.
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated", category=DeprecationWarning
        )
        traced = torch.jit.trace(net, torch.rand(1, c, *shapes[0]))
    with warnings.catch_warnings():
        # coremltools 9 leaves its temporary weights folder to the garbage collector, which warns.
        warnings.filterwarnings(
            "ignore", message=r"Implicitly cleaning up <TemporaryDirectory", category=ResourceWarning
        )
        model = ct.convert(
            traced,
            inputs=[ct.TensorType(name="input", shape=in_shape, dtype=np.float32)],
            outputs=[ct.TensorType(name="output", dtype=np.float32)],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            skip_model_load=True,  # loading is for prediction, which exists only on macOS
        )
    metadata = package_metadata(desc, shapes, Path(weights), file_sha256(Path(weights)), precision, target)
    model.user_defined_metadata.update(metadata)
    model.short_description = f"{desc.family} x{desc.scale} super-resolution from {Path(weights).name}"
    channels = "RGB" if c == 3 else "grayscale"
    model.input_description["input"] = f"{channels} image (1, {c}, H, W) float32 in 0..1"
    model.output_description["output"] = f"upscaled image (1, {desc.out_ch}, H*{desc.scale}, W*{desc.scale})"
    model.save(str(output))
    return Conversion(output, net, desc, list(shapes), metadata)


def sample_input(c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic image-like (1, c, h, w) float32 input in 0..1: smooth gradients plus fine noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    planes = [0.5 + 0.4 * np.sin(x / (5 + 3 * i) + y / (7 + 2 * i) + i) for i in range(c)]
    noise = np.random.default_rng(seed).normal(0.0, 0.05, (c, h, w))
    return np.clip(np.stack(planes) + noise, 0.0, 1.0).astype(np.float32)[None]


def compare_with_torch(
    package: Path, net: Any, channels: int, shapes: list[tuple[int, int]], compute_units: str = "ALL"
) -> tuple[str, list[tuple[tuple[int, int], float]]]:
    """Run the package and `net` (fp32, `channels` in) on `sample_input` at every shape:
    (runtime, [(shape, PSNR dB)]).
    The runtime is "coreml" on macOS; elsewhere "reference" (mil_reference, not Core ML itself)."""
    import torch

    if sys.platform == "darwin":
        from app.backends.coreml import open_package

        predict, _ = open_package(package, compute_units)
        runtime = "coreml"
    else:
        from scripts.mil_reference import load_program, run_program

        function = load_program(package)
        runtime = "reference"

        def predict(x: np.ndarray) -> np.ndarray:
            return run_program(function, x)

    results = []
    for h, w in shapes:
        x = sample_input(channels, h, w)
        with torch.inference_mode():
            expected = net(torch.from_numpy(x)).numpy()
        results.append(((h, w), psnr_unit(np.asarray(predict(x), np.float32), expected)))
    return runtime, results
