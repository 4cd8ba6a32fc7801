"""What the running app holds: settings, backends, the model registry, the service (with its device
queues and memory budget), readiness and draining."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.backends.registry import Registry
from app.config import Settings
from app.errors import NotReady, ShuttingDown
from app.service import UpscaleService


@dataclass
class AppState:
    """What start-up built. `ready` turns true once every model was loaded (or refused); `draining`
    once shutdown began (new work is refused, work in flight finishes)."""

    settings: Settings
    registry: Registry
    service: UpscaleService
    backends: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    drain_started: float | None = None  # time.monotonic() when draining began

    def inference_device(self) -> str:
        """The device PyTorch models run on ("cpu" when torch is missing: LANCZOS-only service)."""
        device = getattr(self.backends.get("pytorch"), "device", None)
        return device if isinstance(device, str) else "cpu"

    def begin_drain(self) -> None:
        """Refuse new work from now on. Idempotent: the grace period counts from the first call."""
        if self.drain_started is None:
            self.drain_started = time.monotonic()
        self.draining = True

    def require_ready(self) -> None:
        """Raises ShuttingDown while draining, NotReady before start-up loading is done (both 503)."""
        if self.draining:
            raise ShuttingDown("the service is shutting down; retry on another instance")
        if not self.ready:
            raise NotReady("models are still loading; retry shortly")
