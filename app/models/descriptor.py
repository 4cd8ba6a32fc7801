"""What a loaded model is, as the rest of the service needs to know it (spandrel's descriptor idea).

The engine, the memory estimate, the Core ML converter, /health and the benchmark read this; none of
them names an architecture. No torch here: Core ML packages and /health use it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Tiling = Literal["supported", "discouraged", "internal"]
Hyperparameter = int | float | str | bool
# RRDBNet's x2 and x1 models see their input pixel-unshuffled by 2 and 4 (their input sides must be
# multiples of that); x4 models by 1. Core ML packages of older conversions say only their scale.
UNSHUFFLE_BY_SCALE = {4: 1, 2: 2, 1: 4}


class UnknownArchitecture(ValueError):
    """The state dict is not of a family this service (or its spandrel extra) can build."""


@dataclass(frozen=True)
class ModelDescriptor:
    """One model's facts. `family` is the architecture's name (`RRDBNet`, `SRVGGNetCompact`, `SwinIR`).

    size_minimum / size_multiple: input height and width must be at least / multiples of these (the
    runner pads up to them). `tiling`: "supported" (tiles blend seam-free), "discouraged" (tiles change
    the result: whole image by default) or "internal" (the model tiles itself). `macs_per_pixel`:
    multiply-adds of one forward per input pixel (0 when unknown). `activations_per_pixel`: values
    alive together at the peak of one forward, per input pixel (the memory estimate's figure).
    """

    family: str
    scale: int
    in_ch: int
    out_ch: int
    hyperparameters: Mapping[str, Hyperparameter] = field(default_factory=dict)
    size_minimum: int = 1
    size_multiple: int = 1
    supports_half: bool = True
    supports_bfloat16: bool = True
    tiling: Tiling = "supported"
    macs_per_pixel: int = 0
    activations_per_pixel: int = 0
    source: str = "native"  # "native" (written here), "spandrel", or "ncnn" (read from a .param/.bin)

    def hp(self, key: str, default: int = 0) -> int:
        """An integer hyper-parameter, `default` when the family has none by that name."""
        value = self.hyperparameters.get(key, default)
        return int(value) if isinstance(value, (int, float, bool)) else default

    @property
    def unshuffle(self) -> int:
        """The pixel-unshuffle factor applied to the input before the first convolution (1: none)."""
        return self.hp("unshuffle", 1)

    def health(self) -> dict[str, Hyperparameter]:
        """What /health shows under `hyperparameters`."""
        return {"scale": self.scale, "in_ch": self.in_ch, "out_ch": self.out_ch, **self.hyperparameters}
