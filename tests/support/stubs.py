"""Stand-in runners for fault injection: they behave like a loaded model without torch's cost."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.backends.base import ModelEntry
from app.imaging.pixels import to_unit_float


class StubRunner:
    """Nearest-neighbour 'model'. `error` is raised on every run; `gate` blocks each run until set."""

    def __init__(
        self,
        scale: int = 2,
        error: BaseException | None = None,
        delay_s: float = 0.0,
        gate: threading.Event | None = None,
    ) -> None:
        self.scale = scale
        self.default_tile = 0
        self.size_multiple = 1
        self.error = error
        self.delay_s = delay_s
        self.gate = gate
        self.calls = 0
        self.started = threading.Event()

    def run(self, tile: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        x = to_unit_float(tile)
        return np.repeat(np.repeat(x, self.scale, 0), self.scale, 1)


def add_stub(client: TestClient, name: str = "stub", **kwargs: Any) -> StubRunner:
    """Register a stub model on a running TestClient's app; returns the runner."""
    runner = StubRunner(**kwargs)
    entry = ModelEntry(name=name, backend="pytorch", file=Path(f"{name}.pth"), runner=runner)
    assert isinstance(client.app, FastAPI), "a TestClient of create_app's app"
    client.app.state.upscaler.registry.models.append(entry)
    return runner
