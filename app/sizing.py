"""Output sizes: /upscale's scale or width / height, the hires fix's second-pass size (A1111's rules),
and A1111's extras resize modes. Pure arithmetic on the probed size; raises InvalidParameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.errors import InvalidParameter

MAX_SCALE = 8.0
LATENT_GRID = 8
DEFAULT_SCALE = 2.0  # when no size is asked for and no model says its own


@dataclass(frozen=True)
class Target:
    """The output size and how it relates to the input: `factor` is the larger per-axis ratio; `crop`
    (left, top, right, bottom) is cut from the (width, height) result after a cover-resize."""

    width: int
    height: int
    factor: float
    crop: tuple[int, int, int, int] | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        if self.crop is None:
            return self.width, self.height
        left, top, right, bottom = self.crop
        return right - left, bottom - top


@dataclass(frozen=True)
class ScaleTo:
    """/upscale: `scale`, or `width` / `height` (one given keeps the aspect ratio); none of them means
    the chosen model's native scale."""

    scale: float | None = None
    width: int | None = None
    height: int | None = None

    @property
    def wants_native(self) -> bool:
        return self.scale is None and self.width is None and self.height is None


@dataclass(frozen=True)
class HiresFix:
    """/generate: A1111's hr_scale, or hr_resize_x / hr_resize_y (non-zero wins; both: cover and crop)."""

    hr_scale: float = 2.0
    resize_x: int = 0
    resize_y: int = 0


@dataclass(frozen=True)
class CoverTo:
    """A1111 extras resize mode 1: scaled (aspect kept) until it covers `width` x `height`; `crop`
    cuts the overhang around the centre, else the covering size is returned whole (as A1111 does)."""

    width: int
    height: int
    crop: bool = True


Sizing = ScaleTo | HiresFix | CoverTo


def target_for(sizing: Sizing, w: int, h: int, native_scale: int | None = None) -> Target:
    """The Target of `sizing` for a `w` x `h` input. `native_scale`: the chosen model's scale, used when
    ScaleTo asks for no size. Raises InvalidParameter."""
    if isinstance(sizing, HiresFix):
        return hires_target(w, h, sizing)
    if isinstance(sizing, CoverTo):
        return cover_target(w, h, sizing)
    if sizing.wants_native:
        scale = float(native_scale) if native_scale and native_scale > 1 else DEFAULT_SCALE
        return target_size(w, h, scale, None, None)
    return target_size(w, h, sizing.scale, sizing.width, sizing.height)


def target_size(w: int, h: int, scale: float | None, width: int | None, height: int | None) -> Target:
    """Output size from a scale or from width / height (one of them keeps the aspect ratio).
    Raises InvalidParameter for a size or scale outside (1, 8x]."""
    if width is not None or height is not None:
        if scale is not None:
            raise InvalidParameter("give either scale or width/height, not both")
        if (width is not None and width < 1) or (height is not None and height < 1):
            raise InvalidParameter("width and height must be positive")
        tw = width if width is not None else max(1, round(w * height / h))  # type: ignore[operator]
        th = height if height is not None else max(1, round(h * width / w))  # type: ignore[operator]
    else:
        s = DEFAULT_SCALE if scale is None else scale
        if not 1.0 < s <= MAX_SCALE:
            raise InvalidParameter(f"scale must be greater than 1 and at most {MAX_SCALE:g}, not {s:g}")
        tw, th = max(1, round(w * s)), max(1, round(h * s))
    return _checked(tw, th, w, h)


def round_to_grid(v: float) -> int:
    """Nearest multiple of 8 (the SD latent grid; halves round up), at least 8."""
    return max(LATENT_GRID, math.floor(v / LATENT_GRID + 0.5) * LATENT_GRID)


def hires_target(w: int, h: int, req: HiresFix) -> Target:
    """Second-pass size as A1111 computes it: hr_scale, or hr_resize_x/y (one keeps the aspect; both
    upscale to cover and centre-crop). Sizes are rounded to the latent grid."""
    rx, ry = req.resize_x, req.resize_y
    if rx == 0 and ry == 0:
        if not 1.0 <= req.hr_scale <= MAX_SCALE:
            raise InvalidParameter(f"hr_scale must be 1..{MAX_SCALE:g}, not {req.hr_scale:g}")
        tw, th = round_to_grid(w * req.hr_scale), round_to_grid(h * req.hr_scale)
    elif ry == 0:
        tw, th = round_to_grid(rx), round_to_grid(rx * h / w)
    elif rx == 0:
        tw, th = round_to_grid(ry * w / h), round_to_grid(ry)
    else:
        return _cover(w, h, round_to_grid(rx), round_to_grid(ry), "second pass")
    return _checked(tw, th, w, h, "second pass")


def cover_target(w: int, h: int, req: CoverTo) -> Target:
    """Cover `req.width` x `req.height` keeping the aspect; centre-crop to it when `req.crop`."""
    if req.width < 1 or req.height < 1:
        raise InvalidParameter(f"target size must be positive, not {req.width}x{req.height}")
    covered = _cover(w, h, req.width, req.height, "output")
    return covered if req.crop else Target(covered.width, covered.height, covered.factor)


def _cover(w: int, h: int, fw: int, fh: int, what: str) -> Target:
    s = max(fw / w, fh / h)
    tw, th = max(fw, round(w * s)), max(fh, round(h * s))
    left, top = (tw - fw) // 2, (th - fh) // 2
    target = _checked(tw, th, w, h, what)
    return Target(target.width, target.height, target.factor, (left, top, left + fw, top + fh))


def _checked(tw: int, th: int, w: int, h: int, what: str = "") -> Target:
    factor = max(tw / w, th / h)
    if factor > MAX_SCALE:
        if what:
            raise InvalidParameter(f"{what} {tw}x{th} is more than {MAX_SCALE:g}x the {w}x{h} image")
        raise InvalidParameter(f"{tw}x{th} is more than {MAX_SCALE:g}x the {w}x{h} input")
    return Target(tw, th, factor)
