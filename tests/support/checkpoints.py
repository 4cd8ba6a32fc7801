"""Tiny random-weight nets in every checkpoint layout, a Compact net, the reference forward, and a
loader through the PyTorch backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from app.backends.base import ModelEntry
from app.backends.pytorch import PyTorchBackend
from app.models.compact import SRVGGNetCompact


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


def compact_net(
    scale: int = 4, num_feat: int = 8, num_conv: int = 3, channels: int = 3, seed: int = 0
) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    net = SRVGGNetCompact(channels, channels, num_feat, num_conv, scale).eval()
    with torch.no_grad():  # PReLU slopes of a trained net differ per channel; random ones too
        for layer in net.body:
            if isinstance(layer, torch.nn.PReLU):
                layer.weight.uniform_(0.0, 0.3)
    return net


def forward(net: torch.nn.Module, img: np.ndarray) -> np.ndarray:
    """fp32 reference forward of (H, W, C) float32 -> (H*s, W*s, C) clamped."""
    with torch.inference_mode():
        y = net(torch.from_numpy(img).permute(2, 0, 1)[None]).clamp(0, 1)
    return y[0].permute(1, 2, 0).numpy()


def load_entry(path: Path, **kwargs: object) -> ModelEntry:
    """`path` loaded by a CPU PyTorch backend (fp32 unless `precision` is given)."""
    entry = ModelEntry(name=path.stem, backend="pytorch", file=path)
    PyTorchBackend(device="cpu", **{"precision": "fp32", **kwargs}).load(entry)  # type: ignore[arg-type]
    return entry
