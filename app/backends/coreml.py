"""Core ML backend: `.mlpackage` / `.mlmodel` files converted by scripts/convert_coreml.py.

Prediction exists only on macOS. Elsewhere (or without coremltools) every Core ML file is listed as
unavailable with the reason, and requests for it fall back. A package has a fixed input shape or a few
enumerated ones; the runner pads each tile up to the smallest shape that holds it and crops back, so it
serves through the same tiling and blending as the PyTorch path.

coremltools is imported inside functions only (`import_coremltools`), never at import time.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.backends.base import (
    BACKEND_UNAVAILABLE,
    LIBRARY_MISSING,
    MODEL_ERROR,
    WEIGHTS_MISSING,
    BackendStatus,
    ModelEntry,
    one_line,
)
from app.imaging.pixels import to_unit_float
from app.models.descriptor import UNSHUFFLE_BY_SCALE, ModelDescriptor
from app.tiling import upscale_tiled

log = logging.getLogger("app.backends.coreml")

SUFFIXES = (".mlpackage", ".mlmodel")
DEFAULT_FEATURES = 64  # num_feat of the published models, for the memory estimate of older packages
OFF_MACOS = "Core ML runs only on macOS"
# Metadata coremltools writes itself; not shown on /health.
_TOOL_KEYS = "com.github.apple.coremltools."

Predict = Callable[[np.ndarray], np.ndarray]
"""float32 (1, C, H, W) in 0..1, H x W one of the package's shapes -> (1, C_out, H*s, W*s)."""
Opener = Callable[[Path, str], tuple[Predict, Any]]
"""(package file, compute units name) -> (predict, model spec)."""


class _ImportNotes(logging.Filter):
    """Drops two notes coremltools logs while it is imported, each handled by this project instead:
    - its torch-version check ("Torch version X has not been tested with coremltools"): the torch /
      coremltools pair the service installs is verified by tests/unit/test_coreml_convert.py (see README),
      so the note is replaced by one INFO line that says so;
    - off macOS, "Failed to load _ML...Proxy: No module named 'coremltools.libcoremlpython'" (one per
      native class): the prediction library exists only on macOS, which /health already reports."""

    TORCH = re.compile(r"^Torch version (\S+) has not been tested with coremltools")
    NO_NATIVE = re.compile(r"^Failed to load _ML\w+Proxy: No module named 'coremltools\.libcoremlpython'")

    def __init__(self, off_macos: bool) -> None:
        super().__init__()
        self.off_macos = off_macos
        self.untested_torch: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if m := self.TORCH.match(message):
            self.untested_torch = m.group(1)
            return False
        return not (self.off_macos and self.NO_NATIVE.match(message))


def import_coremltools() -> Any:
    """Import coremltools once, handling its import-time notes (see `_ImportNotes`). Raises ImportError
    (or whatever a broken install raises)."""
    if "coremltools" in sys.modules and sys.modules["coremltools"] is not None:
        return sys.modules["coremltools"]
    notes = _ImportNotes(off_macos=sys.platform != "darwin")
    ct_log = logging.getLogger("coremltools")
    ct_log.addFilter(notes)
    try:
        ct = importlib.import_module("coremltools")
    finally:
        ct_log.removeFilter(notes)
    if notes.untested_torch:
        log.info(
            "coremltools %s with torch %s: newer than coremltools has tested; this pair is verified by "
            "the project's conversion tests",
            ct.__version__,
            notes.untested_torch,
        )
    return ct


def installed_version() -> str | None:
    """coremltools' version without importing it (importing takes seconds and pulls in torch)."""
    try:
        return importlib.metadata.version("coremltools")
    except importlib.metadata.PackageNotFoundError:
        return None


class CoreMLRunner:
    """Runs (h, w, C) tiles through a package with fixed or enumerated (H, W) input shapes.

    Each tile is padded (reflected) up to the smallest shape that holds it and the output cropped back,
    so edge tiles of any size work. `default_tile` plus `pad` context on each side fits the largest
    shape, so the tiler's tiles fit as they come; a bigger region (UPSCALER_TILE=0, a large
    UPSCALER_TILE) is tiled again here. Stateless per call: safe to share between requests.
    """

    def __init__(
        self,
        predict: Predict,
        scale: int,
        shapes: list[tuple[int, int]],
        pad: int,
        channels: int = 3,
        size_multiple: int | None = None,
    ) -> None:
        if not shapes:
            raise ValueError("a Core ML runner needs at least one input shape")
        if channels not in (1, 3):
            raise ValueError(f"a Core ML package with {channels} input channels is not an image model")
        self.predict = predict
        self.scale = scale
        self.size_multiple = size_multiple or UNSHUFFLE_BY_SCALE.get(scale, 1)
        self.channels = channels
        self.shapes = sorted(set(shapes), key=lambda s: (s[0] * s[1], s))
        side = max(min(s) for s in self.shapes)
        # Context gives way before tile size: a tile is at least half the shape's side.
        self.pad = min(max(0, pad), side // 4)
        # The tiler's windows are a tile plus 2 x pad, plus up to size_multiple - 1 to start on the grid.
        self.default_tile = side - 2 * self.pad - (self.size_multiple - 1)

    def shape_for(self, h: int, w: int) -> tuple[int, int] | None:
        """The smallest package shape that holds an h x w tile, or None."""
        return next(((sh, sw) for sh, sw in self.shapes if sh >= h and sw >= w), None)

    def run(self, tile: np.ndarray) -> np.ndarray:
        """(h, w, C) uint8 / uint16 / float32, C 1 or 3 -> (h*s, w*s, C) float32 in 0..1."""
        h, w = tile.shape[:2]
        if self.shape_for(h, w) is None:
            return upscale_tiled(
                tile, self._run_fitted, self.scale, self.default_tile, self.pad, multiple=self.size_multiple
            )
        return self._run_fitted(tile)

    def _run_fitted(self, tile: np.ndarray) -> np.ndarray:
        h, w, c = tile.shape
        shape = self.shape_for(h, w)
        if shape is None:  # only reachable through a tiler bug; never pad to a wrong shape
            raise ValueError(f"tile {w}x{h} fits none of the package's shapes {self.shapes}")
        sh, sw = shape
        x = to_unit_float(tile)
        # Reflection continues the image's texture, as the PyTorch path pads to a size multiple.
        mode: Literal["reflect", "edge"] = "reflect" if h > 1 and w > 1 else "edge"
        x = np.pad(x, ((0, sh - h), (0, sw - w), (0, 0)), mode=mode).transpose(2, 0, 1)
        if c == self.channels:
            batches = [x]
        elif c == 1:
            batches = [np.repeat(x, self.channels, axis=0)]
        elif self.channels == 1:
            batches = [x[i : i + 1] for i in range(c)]  # a grayscale model runs each colour plane
        else:
            raise ValueError(f"cannot run a {c}-channel tile through a {self.channels}-channel package")
        outs = [np.asarray(self.predict(np.ascontiguousarray(b[None], np.float32)))[0] for b in batches]
        y = np.concatenate(outs, axis=0)[:, : h * self.scale, : w * self.scale].astype(np.float32)
        y = np.clip(y, 0.0, 1.0)
        if c == 1 and y.shape[0] != 1:
            y = y.mean(axis=0, keepdims=True)
        return np.ascontiguousarray(y.transpose(1, 2, 0))

    def warm_up(self) -> None:
        """One prediction per shape: Core ML compiles each shape for its device on first use."""
        for sh, sw in self.shapes:
            self.predict(np.zeros((1, self.channels, sh, sw), np.float32))


def package_shapes(spec: Any) -> list[tuple[int, int]]:
    """(H, W) input shapes a Core ML model spec accepts: its enumerated shapes, else its default shape.
    Raises ValueError for an input that is not a (1, C, H, W) multi-array."""
    inp = spec.description.input[0]
    if inp.type.WhichOneof("Type") != "multiArrayType":
        raise ValueError(f"input {inp.name!r} is not a multi-array (convert with scripts/convert_coreml.py)")
    array = inp.type.multiArrayType
    shapes = [tuple(s.shape) for s in array.enumeratedShapes.shapes] or [tuple(array.shape)]
    if any(len(s) != 4 or s[0] != 1 for s in shapes):
        raise ValueError(f"input {inp.name!r} has shapes {shapes}, not (1, C, H, W)")
    return [(int(s[2]), int(s[3])) for s in shapes]


def describe(spec: Any) -> tuple[ModelDescriptor, dict[str, str]]:
    """The model descriptor and /health metadata from a package's user metadata (written by
    scripts/convert_coreml.py). Raises ValueError when the scale cannot be known."""
    user = {str(k): str(v) for k, v in spec.description.metadata.userDefined.items()}
    meta = {k: v for k, v in user.items() if not k.startswith(_TOOL_KEYS) and k != "hyperparameters"}
    hp = json.loads(user.get("hyperparameters") or "{}")
    meta.update({k: str(v) for k, v in hp.items() if k not in meta})
    channels = int(spec.description.input[0].type.multiArrayType.shape[1] or 3)
    scale = int(meta.get("scale") or 0)
    if scale not in (1, 2, 3, 4):
        raise ValueError(
            f"package metadata has no usable 'scale' ({meta.get('scale')!r}); "
            "convert it with scripts/convert_coreml.py"
        )
    hyper = {
        k: v
        for k, v in hp.items()
        if k not in ("scale", "in_ch", "out_ch") and isinstance(v, (int, float, str))
    }
    # The converter writes the descriptor's activation count; packages from before it did, the
    # published RRDBNets' (three num_feat maps at the head's resolution).
    activations = int(user.get("activations_per_pixel") or 0) or (
        3 * (int(hp.get("num_feat", 0)) or DEFAULT_FEATURES) * scale * scale
    )
    desc = ModelDescriptor(
        family=meta.get("arch", "unknown"),
        scale=scale,
        in_ch=channels,
        out_ch=int(hp.get("out_ch", 0)) or channels,
        hyperparameters=hyper,
        size_multiple=int(hp.get("unshuffle", 0)) or UNSHUFFLE_BY_SCALE.get(scale, 1),
        activations_per_pixel=activations,
        source="coreml",
    )
    return desc, meta


def open_package(path: Path, compute_units: str) -> tuple[Predict, Any]:
    """Load a package for prediction (macOS only) with the given ComputeUnit name."""
    ct = import_coremltools()
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit[compute_units])
    spec = model.get_spec()
    in_name, out_name = spec.description.input[0].name, spec.description.output[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict({in_name: x})[out_name])

    return predict, spec


class CoreMLBackend:
    name: str = "coreml"
    suffixes: tuple[str, ...] = SUFFIXES

    def __init__(
        self,
        compute_units: str = "ALL",
        tile_pad: int = 16,
        platform: str | None = None,
        opener: Opener | None = None,
    ) -> None:
        """`platform` (default sys.platform) and `opener` (default `open_package`) let tests stand in
        for macOS and for Core ML's predictor."""
        self.compute_units = compute_units
        self.tile_pad = tile_pad
        self.opener: Opener = opener or open_package
        self.version = installed_version()
        self.reason: str | None = None
        self.fallback_reason: str | None = None
        if (platform or sys.platform) != "darwin":
            self.reason, self.fallback_reason = OFF_MACOS, BACKEND_UNAVAILABLE
        elif opener is None:
            try:
                self.version = str(import_coremltools().__version__)
            except Exception as exc:  # ImportError, or a broken install raising anything at import
                self.reason = f"coremltools is not importable: {one_line(exc)}"
                self.fallback_reason = LIBRARY_MISSING

    def status(self) -> BackendStatus:
        device = None if self.reason else f"coreml:{self.compute_units}"
        return BackendStatus(self.name, self.reason is None, self.version, self.reason, device)

    def load(self, entry: ModelEntry) -> None:
        """Load and warm up `entry` in place, or set its reason. Never raises."""
        if self.reason is not None:
            entry.reason, entry.fallback_reason = self.reason, self.fallback_reason
            self._describe_only(entry)
            return
        try:
            predict, spec = self.opener(entry.file, self.compute_units)
            desc, meta = describe(spec)
            runner = CoreMLRunner(
                predict, desc.scale, package_shapes(spec), self.tile_pad, desc.in_ch, desc.size_multiple
            )
        except Exception as exc:  # coremltools raises many kinds; one bad package never stops start-up
            entry.reason, entry.fallback_reason = one_line(exc), WEIGHTS_MISSING
            return
        entry.descriptor, entry.meta = desc, meta
        try:
            runner.warm_up()
        except Exception as exc:
            entry.reason, entry.fallback_reason = f"warm-up failed: {one_line(exc)}", MODEL_ERROR
            return
        entry.runner = runner

    def _describe_only(self, entry: ModelEntry) -> None:
        """Where Core ML cannot run, still read what the package is (scale, arch, source) for /health
        when coremltools is installed. Best effort: a package that cannot be read keeps just the reason."""
        if self.version is None:
            return
        try:
            spec = import_coremltools().utils.load_spec(str(entry.file))
            entry.descriptor, entry.meta = describe(spec)
        except Exception as exc:
            log.debug("could not read %s's metadata: %s", entry.file.name, one_line(exc))
