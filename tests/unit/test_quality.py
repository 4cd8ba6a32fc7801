"""The shipped models on real images: they beat LANCZOS, and bf16 stays within 40 dB of fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.backends.base import ModelEntry
from app.backends.pytorch import PyTorchBackend
from app.engine import run_model
from app.imaging.pixels import quantize
from scripts.quality import bicubic_lr, modcrop, psnr, psnr_y
from tests.support.paths import ROOT

SHIPPED = sorted((ROOT / "weights").glob("*.safetensors"))
IMAGES = ("bird.png", "butterfly.png")


def load(path: Path, precision: str) -> ModelEntry:
    entry = ModelEntry(path.stem, "pytorch", path)
    PyTorchBackend(device="cpu", precision=precision).load(entry)
    assert entry.available, entry.reason
    return entry


def upscale(entry: ModelEntry, lr: Image.Image) -> np.ndarray:
    assert entry.runner is not None
    return quantize(run_model(np.asarray(lr), entry.runner, entry.runner.scale), 8)


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.stem)
def test_shipped_model_beats_lanczos_on_set5(weights: Path, datasets: Path) -> None:
    entry = load(weights, "fp32")
    scale = entry.runner.scale  # type: ignore[union-attr]
    for name in IMAGES:
        hr = modcrop(Image.open(datasets / "Set5" / name).convert("RGB"), scale)
        lr = bicubic_lr(hr, scale)
        lanczos = np.asarray(lr.resize(hr.size, Image.Resampling.LANCZOS))
        model = psnr_y(upscale(entry, lr), np.asarray(hr), shave=scale)
        base = psnr_y(lanczos, np.asarray(hr), shave=scale)
        assert model > base, f"{weights.stem} on {name}: {model:.2f} dB vs LANCZOS {base:.2f} dB"


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.stem)
def test_bf16_output_stays_within_40db_of_fp32(weights: Path, datasets: Path) -> None:
    fp32, bf16 = load(weights, "fp32"), load(weights, "bf16")
    for name in IMAGES:
        lr = Image.open(datasets / "Set5" / name).convert("RGB")
        a, b = upscale(fp32, lr), upscale(bf16, lr)
        assert psnr(a, b) >= 40.0, f"{weights.stem} on {name}: bf16 vs fp32 {psnr(a, b):.2f} dB"


def test_shipped_weights_carry_metadata() -> None:
    assert {p.stem for p in SHIPPED} >= {"rrdb-x2", "rrdb-x4"}
    from safetensors import safe_open

    for path in SHIPPED:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        assert meta["arch"] == "RRDBNet" and meta["scale"] in ("2", "4")
        assert "T91" in meta["training_data"] and float(meta["val_set5_psnr_y"]) > 25
        assert path.stat().st_size <= 5 * 1024 * 1024


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.stem)
def test_tiled_output_matches_whole_image_on_a_real_image(weights: Path, datasets: Path) -> None:
    entry = load(weights, "fp32")
    runner = entry.runner
    assert runner is not None
    # Odd sides and an odd tile: x2 windows must still start on even pixels (pixel-unshuffle phase).
    lr = np.asarray(Image.open(datasets / "Set14" / "baboon.png").convert("RGB"))[:97, :129]
    whole = quantize(run_model(lr, runner, runner.scale, tile=0), 8)
    tiled = quantize(run_model(lr, runner, runner.scale, tile=41, pad=16), 8)
    assert psnr(whole, tiled) >= 45.0
