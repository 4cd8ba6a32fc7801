"""PyTorch backend: safe checkpoint loading and the model on its device (placement.py chooses which, in
what precision and with what tile), served by a TorchRunner (torch_runner.py).

torch is imported inside functions only, so the service starts (LANCZOS only) without it.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

import numpy as np

from app.backends.base import (
    BACKEND_UNAVAILABLE,
    LIBRARY_MISSING,
    WEIGHTS_MISSING,
    BackendStatus,
    ModelEntry,
    one_line,
)
from app.backends.placement import (
    DTYPES,
    cpu_has_native_bf16,
    default_tile,
    effective_precision,
    pick_device,
    pick_precision,
)
from app.backends.torch_runner import TorchRunner
from app.models.descriptor import UnknownArchitecture

log = logging.getLogger("app.backends.pytorch")

# In order of preference when one stem has several files: the safest format serves.
SUFFIXES = (".safetensors", ".pth", ".pt", ".param")


class PyTorchBackend:
    name: str = "pytorch"
    suffixes: tuple[str, ...] = SUFFIXES

    def __init__(
        self,
        device: str = "auto",
        precision: str = "auto",
        tile: int | None = None,
        threads: int = 0,
        compile: bool = False,
        cuda_graphs: bool = True,
    ) -> None:
        self.requested_device = device
        self.requested_precision = precision
        self.tile = tile
        self.compile = compile
        self.cuda_graphs = cuda_graphs
        self.threads = threads
        self.torch: Any = None
        self.version: str | None = None
        self.device: str | None = None
        self.precision: str | None = None
        self.reason: str | None = None
        self.fallback_reason: str | None = None
        self._setup()

    def _setup(self) -> None:
        try:
            torch = importlib.import_module("torch")
        except Exception as exc:  # ImportError, or a broken install raising anything at import
            self.reason = f"torch is not importable: {exc}"
            self.fallback_reason = LIBRARY_MISSING
            return
        self.torch, self.version = torch, str(torch.__version__).split("+")[0]
        try:
            self.device = pick_device(torch, self.requested_device)
        except RuntimeError as exc:
            self.reason, self.fallback_reason = str(exc), BACKEND_UNAVAILABLE
            return
        self.precision = pick_precision(self.device, self.requested_precision, cpu_has_native_bf16())
        if self.device == "cpu":
            torch.set_num_threads(self.threads or os.cpu_count() or 1)

    def status(self) -> BackendStatus:
        return BackendStatus(
            self.name, self.reason is None, self.version, self.reason, self.device, self.precision
        )

    def load(self, entry: ModelEntry) -> None:
        if self.reason is not None:
            entry.reason, entry.fallback_reason = self.reason, self.fallback_reason
            return
        torch = self.torch
        try:
            from app.models.architectures import load_file

            desc, net, entry.meta = load_file(entry.file)
            entry.descriptor = desc
        except UnknownArchitecture as exc:  # its message says what the keys look like
            entry.reason, entry.fallback_reason = str(exc), WEIGHTS_MISSING
            return
        except (ValueError, RuntimeError, OSError, EOFError, KeyError) as exc:
            entry.reason = one_line(exc)
            entry.fallback_reason = WEIGHTS_MISSING
            return
        assert self.device is not None and self.precision is not None
        precision = effective_precision(self.precision, desc)
        try:
            net = net.eval().requires_grad_(False).to(self.device)
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            if precision != "fp32" and self.device != "cpu":
                net = net.to(getattr(torch, DTYPES[precision]))
            free = torch.cuda.mem_get_info()[0] if self.device == "cuda" else None
            tile = self.tile if self.tile is not None else default_tile(self.device, desc, free)
            runner = TorchRunner(torch, net, desc, self.device, precision, tile, self.cuda_graphs)
            side = max(16, desc.size_minimum)
            runner.run(np.zeros((side, side, desc.in_ch), np.uint8))  # warm-up: one tiny real forward
        except Exception as exc:  # a model that cannot even run a 16x16 tile must not stop start-up
            entry.reason = f"warm-up failed: {one_line(exc)}"
            entry.fallback_reason = "model_error"
            return
        if self.compile:
            try:
                seconds = runner.compile()
                entry.meta["compiled"] = f"torch.compile, {seconds:.0f} s at start-up"
                log.info("compiled %s in %.1f s", entry.name, seconds)
            except Exception as exc:  # the eager net still serves
                runner.net, runner.graphs = net, None
                entry.meta["compiled"] = f"no: {one_line(exc)}"
                log.warning(
                    "torch.compile failed for %s, serving it uncompiled: %s", entry.name, one_line(exc)
                )
        if runner.graphs is not None:
            entry.meta["cuda_graphs"] = "on: each window shape captured on its second use"
            runner.graphs.on_broken = lambda why: entry.meta.update(cuda_graphs=f"off (runs eagerly): {why}")
        entry.runner = runner
