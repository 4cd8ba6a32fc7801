"""RRDBNet, the ESRGAN / Real-ESRGAN generator, written to load their checkpoints unchanged.

The parameter names match xinntao's BasicSR (`conv_first`, `body.N.rdbK.convM`, `conv_body`,
`conv_up1/2`, `conv_hr`, `conv_last`), so Real-ESRGAN `.pth` files load with `strict=True` after
`checkpoint.normalize_state_dict`. Scale 2 and 1 models see their input pixel-unshuffled (by 2 and 4),
which is why their first convolution has 4x or 16x the colour channels, and why their input height and
width must be multiples of 2 and 4.

This module imports torch at import time: only the PyTorch backend and the scripts import it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Input channels of conv_first per unshuffle factor, relative to the image channels.
UNSHUFFLE_BY_SCALE = {4: 1, 2: 2, 1: 4}


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
