"""A reference executor for the ML programs that RRDBNet and SRVGGNetCompact packages hold, in torch,
for machines without Core ML's runtime (anything but macOS).

It reads the saved package's program back (its MIL ops and weight blobs) and runs it op by op, rounding
every fp16 value to fp16 as the package stores it. This checks what conversion wrote, on Linux; it is not
Core ML's runtime, which accumulates in its own precision per device (the macOS check compares that).
Only the op set those two families convert to is known; any other op raises NotImplementedError.

torch and coremltools are imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def load_program(package: Path) -> Any:
    """The package's `main` function as a coremltools MIL function. Raises ValueError for a package
    that holds no ML program (an old neural-network `.mlmodel`)."""
    from app.backends.coreml import import_coremltools

    ct = import_coremltools()  # first, so its import-time notes are handled
    from coremltools.converters.mil.frontend.milproto.load import load

    model = ct.models.MLModel(str(package), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{package.name} holds a {spec.WhichOneof('Type')}, not an ML program")
    return load(spec, spec.specificationVersion, model.weights_dir).functions["main"]


def run_program(function: Any, x: np.ndarray) -> np.ndarray:
    """Run `function` (from `load_program`) on a float32 (1, C, H, W) input; returns its only output
    as float32 numpy."""
    import torch

    from app.backends.coreml import import_coremltools

    import_coremltools()
    from coremltools.converters.mil.mil import types

    env: dict[str, Any] = {}
    (in_name,) = function.inputs
    env[in_name] = torch.from_numpy(np.ascontiguousarray(x, np.float32))

    def value(var: Any) -> Any:
        if isinstance(var, (tuple, list)):
            return [value(v) for v in var]
        if var.name in env:
            return env[var.name]
        val = var.val
        if isinstance(val, np.ndarray) and val.ndim and val.dtype.kind == "f":
            return torch.from_numpy(val.astype(np.float32))  # weights; integer attributes stay numpy
        return val

    with torch.inference_mode():
        for op in function.operations:
            if op.op_type == "const":
                continue
            run = _OPS.get(op.op_type)
            if run is None:
                raise NotImplementedError(f"the reference executor does not know MIL op {op.op_type!r}")
            out = run(torch, {k: value(v) for k, v in op.inputs.items()})
            if op.outputs[0].dtype == types.fp16:
                out = out.half().float()  # the package stores this value in fp16
            env[op.outputs[0].name] = out
        return env[function.outputs[0].name].float().numpy()


def _conv(torch: Any, a: dict[str, Any]) -> Any:
    x, pad_type = a["x"], str(a.get("pad_type", "valid"))
    if pad_type == "custom":
        top, bottom, left, right = (int(p) for p in a["pad"])
        x = torch.nn.functional.pad(x, (left, right, top, bottom))
    elif pad_type != "valid":
        raise NotImplementedError(f"conv pad_type {pad_type!r}")
    return torch.nn.functional.conv2d(
        x,
        a["weight"],
        a.get("bias"),
        stride=[int(s) for s in a.get("strides", (1, 1))],
        dilation=[int(d) for d in a.get("dilations", (1, 1))],
        groups=int(a.get("groups", 1)),
    )


def _concat(torch: Any, a: dict[str, Any]) -> Any:
    if bool(a.get("interleave", False)):
        raise NotImplementedError("interleaved concat")
    return torch.cat(a["values"], dim=int(a["axis"]))


def _upsample(torch: Any, a: dict[str, Any]) -> Any:
    scale = (float(a.get("scale_factor_height", 1)), float(a.get("scale_factor_width", 1)))
    return torch.nn.functional.interpolate(a["x"], scale_factor=scale, mode="nearest")


def _number(v: Any) -> Any:
    return float(v) if isinstance(v, (np.generic, float, int)) else v


_OPS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "cast": lambda torch, a: a["x"],  # rounding to fp16 happens per output dtype
    "conv": _conv,
    "concat": _concat,
    "pixel_unshuffle": lambda torch, a: torch.nn.functional.pixel_unshuffle(
        a["x"], int(a["downscale_factor"])
    ),
    "upsample_nearest_neighbor": _upsample,
    "prelu": lambda torch, a: torch.nn.functional.prelu(a["x"], a["alpha"]),
    "pixel_shuffle": lambda torch, a: torch.nn.functional.pixel_shuffle(a["x"], int(a["upscale_factor"])),
    "leaky_relu": lambda torch, a: torch.nn.functional.leaky_relu(a["x"], float(a["alpha"])),
    "relu": lambda torch, a: torch.relu(a["x"]),
    "add": lambda torch, a: a["x"] + _number(a["y"]),
    "mul": lambda torch, a: a["x"] * _number(a["y"]),
    "sub": lambda torch, a: a["x"] - _number(a["y"]),
    "clip": lambda torch, a: a["x"].clamp(float(a["alpha"]), float(a["beta"])),
}
