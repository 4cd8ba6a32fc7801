"""The model families on a real accelerator (CUDA, else MPS): the same file served there matches the
fp32 CPU forward. Skipped, with the reason, on machines without one (CI has none)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from app.backends.base import ModelEntry
from app.backends.pytorch import PyTorchBackend
from app.engine import run_model
from scripts.quality import psnr_unit
from tests.support.checkpoints import compact_net, tiny_state_dict, write_checkpoint
from tests.support.images import textured

HAS_MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
DEVICE = "cuda" if torch.cuda.is_available() else "mps" if HAS_MPS else None

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE is None, reason="needs a CUDA or MPS device (none here)"),
]


def served(path: Path, device: str, precision: str) -> ModelEntry:
    entry = ModelEntry(path.stem, "pytorch", path)
    PyTorchBackend(device, precision).load(entry)
    assert entry.runner is not None, entry.reason
    return entry


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("family", ["RRDBNet", "SRVGGNetCompact"])
def test_accelerator_serves_each_family_like_the_cpu(tmp_path: Path, family: str, precision: str) -> None:
    if family == "RRDBNet":
        path = write_checkpoint(tiny_state_dict(2, seed=5, num_block=2), tmp_path / "r", "safetensors")
    else:
        path = tmp_path / "c.safetensors"
        save_file({k: v.contiguous() for k, v in compact_net(4, num_feat=16).state_dict().items()}, str(path))
    img = textured(96, 80)
    on_cpu = served(path, "cpu", "fp32")
    on_device = served(path, str(DEVICE), precision)
    assert on_device.runner is not None and getattr(on_device.runner, "device", None) == DEVICE
    scale = float(on_cpu.runner.scale)  # type: ignore[union-attr]
    expected = run_model(img, on_cpu.runner, scale, tile=48, pad=8)  # type: ignore[arg-type]
    got = run_model(img, on_device.runner, scale, tile=48, pad=8)
    assert np.isfinite(got).all()
    assert psnr_unit(got, expected) >= (50.0 if precision == "fp32" else 35.0)
