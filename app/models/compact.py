"""SRVGGNetCompact, the lightweight Real-ESRGAN (realesr-animevideov3, realesr-general-x4v3 and
-wdn-x4v3, the mobile variants), written to load their checkpoints unchanged.

A plain VGG-style body at the input's resolution: conv(in -> num_feat) and PReLU, then `num_conv` times
conv(num_feat -> num_feat) and PReLU, then conv(num_feat -> out * s^2), pixel shuffle by s, and the
nearest-upsampled input added. Parameter names match Real-ESRGAN's (`body.N.weight`), so its `.pth`
files load with `strict=True`. Any integer scale works; every layer is a 3x3 convolution, so tiles
blend seam-free and no size multiple is needed.

This module imports torch at import time: only the PyTorch backend and the scripts import it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.models.descriptor import ModelDescriptor, UnknownArchitecture

NAME = "SRVGGNetCompact"


class SRVGGNetCompact(nn.Module):
    """Input (N, C, H, W) in 0..1; output (N, C_out, H*upscale, W*upscale), about 0..1."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
    ) -> None:
        super().__init__()
        self.upscale = upscale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=float(self.upscale), mode="nearest")


def matches(sd: Mapping[str, Any]) -> bool:
    """Real-ESRGAN's Compact keys: `body.0.weight` is a 4-D convolution and `body.1.weight` 1-D."""
    first, act = sd.get("body.0.weight"), sd.get("body.1.weight")
    return first is not None and act is not None and len(first.shape) == 4 and len(act.shape) == 1


def normalize(sd: Mapping[str, Any]) -> dict[str, Any]:
    return dict(sd)


def describe(sd: Mapping[str, Any]) -> ModelDescriptor:
    """Read num_feat, num_conv, channels and scale from a Compact state dict. Raises UnknownArchitecture
    for PReLU-less variants (relu / leakyrelu: spandrel serves those) and inconsistent shapes."""
    indices = sorted({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.weight$", k))})
    if not indices or indices != list(range(len(indices))) or len(indices) % 2 == 0 or len(indices) < 3:
        raise UnknownArchitecture(
            "not an SRVGGNetCompact with PReLU activations (body.N.weight must run 0..2*num_conv+2)"
        )
    first = tuple(sd["body.0.weight"].shape)
    last = tuple(sd[f"body.{indices[-1]}.weight"].shape)
    num_feat, in_ch = int(first[0]), int(first[1])
    num_conv = (len(indices) - 3) // 2
    for i in indices[:-1]:
        shape = tuple(sd[f"body.{i}.weight"].shape)
        want = (num_feat,) if i % 2 else (num_feat, in_ch if i == 0 else num_feat, 3, 3)
        if shape != want:
            raise UnknownArchitecture(f"SRVGGNetCompact body.{i}.weight is {shape}, expected {want}")
    if last[1:] != (num_feat, 3, 3):
        raise UnknownArchitecture(f"SRVGGNetCompact last convolution is {last}")
    # The last convolution gives in_ch * scale^2 channels (the residual adds the input to them).
    scale = math.isqrt(int(last[0]) // in_ch)
    if in_ch * scale * scale != last[0] or scale < 1:
        raise UnknownArchitecture(
            f"SRVGGNetCompact last convolution gives {last[0]} channels for {in_ch} input channels: "
            "not an integer scale"
        )
    return descriptor(in_ch, in_ch, scale, num_feat, num_conv)


def descriptor(in_ch: int, out_ch: int, scale: int, num_feat: int, num_conv: int) -> ModelDescriptor:
    k = 9
    macs = k * (in_ch * num_feat + num_conv * num_feat * num_feat + num_feat * out_ch * scale * scale)
    return ModelDescriptor(
        family=NAME,
        scale=scale,
        in_ch=in_ch,
        out_ch=out_ch,
        hyperparameters={"num_feat": num_feat, "num_conv": num_conv, "act_type": "prelu"},
        macs_per_pixel=macs,
        # Two num_feat maps at the input's resolution, the shuffled output and its residual.
        activations_per_pixel=2 * num_feat + 3 * out_ch * scale * scale,
    )


def build(desc: ModelDescriptor) -> SRVGGNetCompact:
    return SRVGGNetCompact(desc.in_ch, desc.out_ch, desc.hp("num_feat"), desc.hp("num_conv"), desc.scale)
