"""What every backend and model offers the service, whatever library runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from app.models.descriptor import ModelDescriptor

# Why a model cannot serve, as SPEC's X-Fallback-Reason values.
WEIGHTS_MISSING = "weights_missing"
LIBRARY_MISSING = "library_missing"
BACKEND_UNAVAILABLE = "backend_unavailable"
MODEL_ERROR = "model_error"
OUT_OF_MEMORY = "out_of_memory"
DISABLED_BY_REQUEST = "disabled_by_request"


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    version: str | None
    reason: str | None
    device: str | None = None
    precision: str | None = None


class Runner(Protocol):
    """A loaded model. `run(x)`: (h, w, C) uint8/uint16/float32 tile -> (h*s, w*s, C) float32 in ~0..1."""

    scale: int
    default_tile: int
    size_multiple: int  # input sides the model needs as multiples of this (1, or 2 / 4 for x2 / x1)

    def run(self, tile: np.ndarray) -> np.ndarray: ...


@dataclass
class ModelEntry:
    """One candidate file in the weights folder, loaded or not (then `reason` says why)."""

    name: str
    backend: str
    file: Path
    descriptor: ModelDescriptor | None = None
    runner: Runner | None = None
    reason: str | None = None
    fallback_reason: str | None = None  # the X-Fallback-Reason a request for it would get
    meta: dict[str, str] = field(default_factory=dict)
    duplicate_of: str | None = None  # the file that serves this name instead (one stem, several files)

    @property
    def available(self) -> bool:
        return self.runner is not None

    @property
    def scale(self) -> int | None:
        if self.runner is not None:
            return self.runner.scale
        return self.descriptor.scale if self.descriptor else None


class Backend(Protocol):
    name: str
    suffixes: tuple[str, ...]

    def status(self) -> BackendStatus: ...

    def load(self, entry: ModelEntry) -> None:
        """Load and warm up `entry` in place: set runner and descriptor, or reason + fallback_reason.
        Never raises."""
        ...


def one_line(exc: BaseException) -> str:
    """The exception as one line (multi-line messages such as load_state_dict's joined by '; ')."""
    text = "; ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
    return f"{type(exc).__name__}: {text[:400]}" if text else type(exc).__name__
