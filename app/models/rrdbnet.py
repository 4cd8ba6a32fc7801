"""RRDBNet, the ESRGAN / Real-ESRGAN generator, written to load their checkpoints unchanged.

The parameter names match xinntao's BasicSR (`conv_first`, `body.N.rdbK.convM`, `conv_body`,
`conv_up1/2`, `conv_hr`, `conv_last`), so Real-ESRGAN `.pth` files load with `strict=True` after
`normalize`, which also maps the original ESRGAN names (`RRDB_trunk`, `model.N`). Scale 2 and 1 models
see their input pixel-unshuffled (by 2 and 4), which is why their first convolution has 4x or 16x the
colour channels, and why their input height and width must be multiples of 2 and 4.

This module imports torch at import time: only the PyTorch backend and the scripts import it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.models.descriptor import UNSHUFFLE_BY_SCALE, ModelDescriptor, UnknownArchitecture

NAME = "RRDBNet"


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing all earlier outputs; residual scaled by 0.2."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, residual scaled by 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * 0.2 + x


class RRDBNet(nn.Module):
    """The generator. Input (N, C, H, W) in 0..1; output (N, C_out, H*scale, W*scale), about 0..1.

    `num_in_ch` is the image's channel count (3 for RGB); scale 2 and 1 multiply it internally.
    Raises ValueError for a scale other than 1, 2 or 4.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale not in UNSHUFFLE_BY_SCALE:
            raise ValueError(f"RRDBNet supports scale 1, 2 or 4, not {scale}")
        self.scale = scale
        self.unshuffle = UNSHUFFLE_BY_SCALE[scale]
        first_in = num_in_ch * self.unshuffle**2
        self.conv_first = nn.Conv2d(first_in, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def macs_per_input_pixel(
    scale: int, num_feat: int, num_block: int, num_grow_ch: int, num_in_ch: int = 3, num_out_ch: int = 3
) -> int:
    """Multiply-adds of one forward per input pixel, counted from the layer shapes (convolutions only)."""
    k = 9
    u2 = UNSHUFFLE_BY_SCALE[scale] ** 2
    rdb = sum((num_feat + i * num_grow_ch) * num_grow_ch * k for i in range(4))
    rdb += (num_feat + 4 * num_grow_ch) * num_feat * k
    low = num_in_ch * u2 * num_feat * k + num_block * 3 * rdb + num_feat * num_feat * k
    # conv_up1 runs at 2x, conv_up2 / conv_hr / conv_last at 4x the trunk's resolution (per axis).
    high = 4 * num_feat * num_feat * k + 16 * (2 * num_feat * num_feat * k + num_feat * num_out_ch * k)
    return (low + high) // u2


# -- recognising a checkpoint -----------------------------------------------------------------------

_OLD_RENAMES = (
    (re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.0\."), r"body.\1.rdb\2.conv\3."),
    (re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\."), r"body.\1.rdb\2.conv\3."),
    (re.compile(r"^trunk_conv\."), "conv_body."),
    (re.compile(r"^upconv1\."), "conv_up1."),
    (re.compile(r"^upconv2\."), "conv_up2."),
    (re.compile(r"^HRconv\."), "conv_hr."),
)


def _from_model_n(sd: Mapping[str, Any]) -> dict[str, Any]:
    """The original ESRGAN layout (`model.0` ... `model.10`, body in `model.1.sub.N`), x4 only."""
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k))}
    n = len(blocks)
    out: dict[str, Any] = {}
    fixed = {
        "model.0.": "conv_first.",
        f"model.1.sub.{n}.": "conv_body.",
        "model.3.": "conv_up1.",
        "model.6.": "conv_up2.",
        "model.8.": "conv_hr.",
        "model.10.": "conv_last.",
    }
    for key, value in sd.items():
        m = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", key)
        if m:
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
            continue
        for old, new in fixed.items():
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise UnknownArchitecture(f"unexpected key {key!r} in an old ESRGAN checkpoint")
    return out


def normalize(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Any accepted RRDBNet key layout -> BasicSR names. Raises UnknownArchitecture."""
    if "model.0.weight" in sd and any(k.startswith("model.1.sub.") for k in sd):
        return _from_model_n(sd)
    renamed = {}
    for key, value in sd.items():
        for pattern, repl in _OLD_RENAMES:
            key = pattern.sub(repl, key)
        renamed[key] = value
    return renamed


def matches(sd: Mapping[str, Any]) -> bool:
    """Whether the keys are RRDBNet's in any accepted layout (the shapes are checked by `describe`)."""
    return any(
        k.startswith(("body.0.rdb1.", "RRDB_trunk.0.RDB1.")) or (k.startswith("model.1.sub.0.RDB1."))
        for k in sd
    )


def describe(sd: Mapping[str, Any]) -> ModelDescriptor:
    """Read RRDBNet's hyper-parameters from a normalised state dict. Raises UnknownArchitecture."""
    need = ("conv_first.weight", "conv_last.weight", "conv_body.weight", "conv_up1.weight", "conv_up2.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise UnknownArchitecture(f"not an RRDBNet state dict (missing {', '.join(missing)})")
    first, last = tuple(sd["conv_first.weight"].shape), tuple(sd["conv_last.weight"].shape)
    num_feat, first_in = int(first[0]), int(first[1])
    out_ch = int(last[0])
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.rdb1\.conv1\.weight$", k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise UnknownArchitecture("RRDB blocks are missing or not numbered 0..N-1")
    grow = int(sd["body.0.rdb1.conv1.weight"].shape[0])
    # conv_first sees the image pixel-unshuffled by 1, 2 or 4 for scale 4, 2 or 1.
    scale = {out_ch: 4, out_ch * 4: 2, out_ch * 16: 1}.get(first_in)
    if scale is None:
        raise UnknownArchitecture(
            f"conv_first takes {first_in} channels for {out_ch} output channels: "
            "not a scale 1, 2 or 4 RRDBNet"
        )
    return descriptor(first_in // UNSHUFFLE_BY_SCALE[scale] ** 2, out_ch, scale, num_feat, len(blocks), grow)


def descriptor(
    in_ch: int, out_ch: int, scale: int, num_feat: int, num_block: int, num_grow_ch: int
) -> ModelDescriptor:
    """The descriptor of an RRDBNet with these hyper-parameters."""
    unshuffle = UNSHUFFLE_BY_SCALE[scale]
    return ModelDescriptor(
        family=NAME,
        scale=scale,
        in_ch=in_ch,
        out_ch=out_ch,
        hyperparameters={
            "num_feat": num_feat,
            "num_block": num_block,
            "num_grow_ch": num_grow_ch,
            "unshuffle": unshuffle,
        },
        size_multiple=unshuffle,
        macs_per_pixel=macs_per_input_pixel(scale, num_feat, num_block, num_grow_ch, in_ch, out_ch),
        # The full-resolution head holds about three num_feat maps at 16x the trunk's pixels.
        activations_per_pixel=3 * num_feat * scale * scale,
    )


def build(desc: ModelDescriptor) -> RRDBNet:
    return RRDBNet(
        desc.in_ch,
        desc.out_ch,
        desc.scale,
        desc.hp("num_feat"),
        desc.hp("num_block"),
        desc.hp("num_grow_ch"),
    )
