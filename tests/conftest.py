"""Shared fixtures: real images from ../shared/datasets, tiny random-weight RRDBNets in every checkpoint
layout, and apps built from a dict of settings (never from the process environment)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import load_settings
from app.main import create_app

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets() -> Path:
    """../shared/datasets, or skip: the real images live beside the repository, never inside it."""
    if not (DATASETS / "Set5").is_dir():
        pytest.skip(f"real images not found at {DATASETS} (../shared/datasets beside the repository)")
    return DATASETS


def png_bytes(img: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **params)
    return buf.getvalue()


def decode_response(content: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(content))
    img.load()
    return img


def gradient_image(w: int = 40, h: int = 30, mode: str = "RGB") -> Image.Image:
    """A small deterministic image with structure in every channel."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), (x * y) % 256], -1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def arch_tuple(desc: object) -> tuple:
    """(family, scale, in_ch, out_ch, num_feat, num_block, num_grow_ch) of an RRDBNet descriptor."""
    d = desc  # a ModelDescriptor
    hp = d.hyperparameters  # type: ignore[attr-defined]
    return (d.family, d.scale, d.in_ch, d.out_ch, hp["num_feat"], hp["num_block"], hp["num_grow_ch"])  # type: ignore[attr-defined]


def tiny_state_dict(
    scale: int, seed: int = 0, num_feat: int = 8, num_block: int = 1, num_grow_ch: int = 4, channels: int = 3
) -> dict:
    import torch

    from app.models.rrdbnet import RRDBNet

    torch.manual_seed(seed)
    net = RRDBNet(channels, channels, scale, num_feat, num_block, num_grow_ch)
    return {k: v.clone() for k, v in net.state_dict().items()}


def to_old_esrgan(sd: dict) -> dict:
    """BasicSR names -> the ESRGAN repository's names (RRDB_trunk, trunk_conv, upconv1/2, HRconv)."""
    import re

    out = {}
    for k, v in sd.items():
        k = re.sub(r"^body\.(\d+)\.rdb(\d)\.conv(\d)\.", r"RRDB_trunk.\1.RDB\2.conv\3.0.", k)
        for new, old in (
            ("conv_body.", "trunk_conv."),
            ("conv_up1.", "upconv1."),
            ("conv_up2.", "upconv2."),
            ("conv_hr.", "HRconv."),
        ):
            if k.startswith(new):
                k = old + k[len(new) :]
        out[k] = v
    return out


def to_model_n(sd: dict) -> dict:
    """BasicSR names -> the original ESRGAN `model.N` layout (x4 only)."""
    import re

    nb = len({k.split(".")[1] for k in sd if k.startswith("body.")})
    fixed = {
        "conv_first.": "model.0.",
        "conv_body.": f"model.1.sub.{nb}.",
        "conv_up1.": "model.3.",
        "conv_up2.": "model.6.",
        "conv_hr.": "model.8.",
        "conv_last.": "model.10.",
    }
    out = {}
    for k, v in sd.items():
        m = re.match(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$", k)
        if m:
            out[f"model.1.sub.{m.group(1)}.RDB{m.group(2)}.conv{m.group(3)}.0.{m.group(4)}"] = v
            continue
        prefix = next(p for p in fixed if k.startswith(p))
        out[fixed[prefix] + k[len(prefix) :]] = v
    return out


LAYOUTS = ("top", "params_ema", "params", "state_dict", "module", "old_names", "model_n", "safetensors")


def write_checkpoint(sd: dict, path: Path, layout: str) -> Path:
    """Write `sd` as a checkpoint in one of LAYOUTS; returns the file written (suffix per layout)."""
    import torch

    if layout == "safetensors":
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file(sd, str(path), metadata={"arch": "RRDBNet"})
        return path
    obj: dict = {
        "top": sd,
        "params_ema": {"params_ema": sd, "params": {k: v * 0 for k, v in sd.items()}},
        "params": {"params": sd},
        "state_dict": {"state_dict": sd, "epoch": 3},
        "module": {"module." + k: v for k, v in sd.items()},
        "old_names": to_old_esrgan(sd),
        "model_n": to_model_n(sd),
    }[layout]
    path = path.with_suffix(".pth")
    torch.save(obj, str(path))
    return path


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    """A weights folder with tiny x2 and x4 models."""
    d = tmp_path / "weights"
    d.mkdir()
    write_checkpoint(tiny_state_dict(2, seed=1), d / "tiny-x2", "safetensors")
    write_checkpoint(tiny_state_dict(4, seed=2), d / "tiny-x4", "params_ema")
    return d


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[ClientFactory]:
    """make_client(env) -> a started TestClient; env is a dict of UPSCALER_* settings."""
    clients: list[TestClient] = []

    def factory(env: dict[str, str] | None = None, **kwargs: object) -> TestClient:
        env = {"UPSCALER_WEIGHTS_DIR": str(tmp_path / "empty-weights"), **(env or {})}
        client = TestClient(create_app(load_settings(env), background_load=False), **kwargs)  # type: ignore[arg-type]
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory, weights_dir: Path) -> TestClient:
    """An app serving the tiny x2 and x4 models."""
    return make_client({"UPSCALER_WEIGHTS_DIR": str(weights_dir)})
