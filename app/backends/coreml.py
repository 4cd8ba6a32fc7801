"""Core ML backend: `.mlpackage` / `.mlmodel` files converted from RRDBNet checkpoints.

Prediction exists only on macOS. Elsewhere (or without coremltools) every Core ML file is listed as
unavailable with the reason, and requests for it fall back. A package has a fixed input shape or a few
enumerated ones; the runner pads each tile up to the smallest shape that holds it and crops back, so it
serves through the same tiling and blending as the PyTorch path.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from app.backends.base import (
    BACKEND_UNAVAILABLE,
    LIBRARY_MISSING,
    WEIGHTS_MISSING,
    BackendStatus,
    ModelEntry,
)

log = logging.getLogger("app.backends.coreml")

SUFFIXES = (".mlpackage", ".mlmodel")
Predict = Callable[[np.ndarray], np.ndarray]


class CoreMLRunner:
    """Pads an (h, w, C) tile to a package shape, predicts, crops. `predict` maps a float32
    (1, 3, H, W) array in 0..1 to (1, 3, H*s, W*s); tests pass a stand-in that runs the torch model."""

    def __init__(self, predict: Predict, scale: int, shapes: list[tuple[int, int]], pad: int) -> None:
        if not shapes:
            raise ValueError("a Core ML runner needs at least one input shape")
        self.predict = predict
        self.scale = scale
        self.shapes = sorted(shapes, key=lambda s: s[0] * s[1])
        # Tiles plus their context must fit the largest shape.
        biggest = min(max(s[0] for s in self.shapes), max(s[1] for s in self.shapes))
        self.default_tile = max(16, biggest - 2 * pad)

    def _shape_for(self, h: int, w: int) -> tuple[int, int]:
        for sh, sw in self.shapes:
            if sh >= h and sw >= w:
                return sh, sw
        raise MemoryError(f"tile {w}x{h} exceeds the package's largest input shape")  # splits the tile

    def run(self, tile: np.ndarray) -> np.ndarray:
        from app.imaging import to_unit_float

        h, w, c = tile.shape
        x = to_unit_float(tile)
        if c == 1:
            x = np.repeat(x, 3, axis=2)
        sh, sw = self._shape_for(h, w)
        x = np.pad(x, ((0, sh - h), (0, sw - w), (0, 0)), mode="edge")
        y = self.predict(np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32))
        y = np.asarray(y, dtype=np.float32)[0, :, : h * self.scale, : w * self.scale].transpose(1, 2, 0)
        if c == 1:
            y = y.mean(axis=2, keepdims=True)
        return np.clip(y, 0.0, 1.0)


def package_shapes(spec: Any) -> list[tuple[int, int]]:
    """(H, W) input shapes a Core ML model spec accepts: its fixed shape or its enumerated shapes."""
    inp = spec.description.input[0].type.multiArrayType
    shapes = [tuple(s.shape[-2:]) for s in inp.enumeratedShapes.shapes]
    if not shapes:
        shapes = [tuple(inp.shape[-2:])]
    return [(int(h), int(w)) for h, w in shapes]


class CoreMLBackend:
    name: str = "coreml"
    suffixes: tuple[str, ...] = SUFFIXES

    def __init__(self, compute_units: str = "ALL", tile_pad: int = 16, platform: str | None = None) -> None:
        self.compute_units = compute_units
        self.tile_pad = tile_pad
        self.ct: Any = None
        self.version: str | None = None
        self.reason: str | None = None
        self.fallback_reason: str | None = None
        try:
            self.ct = importlib.import_module("coremltools")
            self.version = str(self.ct.__version__)
        except Exception as exc:
            self.reason, self.fallback_reason = f"coremltools is not importable: {exc}", LIBRARY_MISSING
        if (platform or sys.platform) != "darwin":
            self.reason, self.fallback_reason = "Core ML runs only on macOS", BACKEND_UNAVAILABLE

    def status(self) -> BackendStatus:
        device = None if self.reason else f"coreml:{self.compute_units}"
        return BackendStatus(self.name, self.reason is None, self.version, self.reason, device)

    def load(self, entry: ModelEntry) -> None:
        if self.reason is not None:
            entry.reason, entry.fallback_reason = self.reason, self.fallback_reason
            return
        ct = self.ct
        try:
            model = ct.models.MLModel(str(entry.file), compute_units=ct.ComputeUnit[self.compute_units])
            spec = model.get_spec()
            meta = dict(spec.description.metadata.userDefined)
            scale = int(meta.get("scale", "0"))
            if scale not in (1, 2, 4):
                raise ValueError(f"package metadata has no usable 'scale' ({meta.get('scale')!r})")
            shapes = package_shapes(spec)
            in_name = spec.description.input[0].name
            out_name = spec.description.output[0].name

            def predict(x: np.ndarray) -> np.ndarray:
                return np.asarray(model.predict({in_name: x})[out_name])

            runner = CoreMLRunner(predict, scale, shapes, self.tile_pad)
            runner.run(np.zeros((16, 16, 3), np.uint8))  # warm-up
        except Exception as exc:  # coremltools raises many kinds; one bad package never stops start-up
            entry.reason = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            entry.fallback_reason = WEIGHTS_MISSING
            return
        entry.meta = {k: v for k, v in meta.items() if k != "hyperparameters"}
        if "hyperparameters" in meta:
            entry.meta.update({k: str(v) for k, v in json.loads(meta["hyperparameters"]).items()})
        entry.runner = runner
