"""Encode a Picture to PNG, JPEG or WebP, carrying the ICC profile and PNG text chunks."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin

from app.errors import InvalidParameter
from app.imaging import png16
from app.imaging.decode import FORMAT_ALIASES
from app.imaging.pixels import Picture

OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# The largest side each encoder can write; PNG's limit is far beyond any allowed output.
_MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}
_PIL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def cap_metadata(
    text: dict[str, str], icc: bytes | None, limit_bytes: int
) -> tuple[dict[str, str], bytes | None, list[str]]:
    """The text chunks (in order, while their total stays within `limit_bytes`) and the ICC profile
    (when within `limit_bytes`) an output may carry, and the names of what is dropped: `text:<key>`
    for each chunk, `icc` for the profile."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    total = 0
    for key, value in text.items():
        size = len(key.encode("utf-8", "replace")) + len(value.encode("utf-8", "replace"))
        if total + size <= limit_bytes:
            kept[key] = value
            total += size
        else:
            dropped.append(f"text:{key}")
    if icc is not None and len(icc) > limit_bytes:
        dropped.append("icc")
        icc = None
    return kept, icc, dropped


def output_format(requested: str | None, source_format: str) -> str:
    """The Pillow format name to encode to. Raises InvalidParameter for an unknown `format`."""
    if requested:
        key = requested.strip().lower()
        if key not in OUTPUT_FORMATS:
            raise InvalidParameter(f"format must be png, jpeg or webp, not {requested[:200]!r}")
        return OUTPUT_FORMATS[key]
    source_format = FORMAT_ALIASES.get(source_format, source_format)
    return source_format if source_format in MEDIA_TYPES else "PNG"


def _narrow(arr: np.ndarray) -> np.ndarray:
    """uint16 -> uint8, rounded to nearest (v * 255 / 65535)."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _icc_for(icc: bytes | None, gray: bool) -> bytes | None:
    """The profile if it fits the output's colour space (ICC header bytes 16..20), else None: a GRAY
    profile on RGB pixels (or an RGB one on gray pixels) is invalid, and viewers reject or misrender it."""
    if not icc or len(icc) < 20:
        return None
    space = icc[16:20]
    return icc if space == (b"GRAY" if gray else b"RGB ") else None


def encode(
    picture: Picture,
    fmt: str,
    *,
    quality: int | None,
    png_level: int,
    icc_profile: bytes | None,
    text: dict[str, str],
) -> bytes:
    """Encode to PNG / JPEG / WEBP, carrying the ICC profile and (PNG) text chunks.

    16-bit pictures stay 16-bit in PNG (gray through Pillow's I;16, the rest through pypng); other
    formats narrow them to 8 bits. JPEG has no alpha (dropped) and WebP no grayscale (stored as RGB):
    each format keeps what it can. The ICC profile is kept when it matches the written colour space.
    Raises InvalidParameter when the picture is larger than the format can hold (JPEG 65500, WebP
    16383 pixels a side).
    """
    pixels = picture.pixels
    size = picture.size
    limit = _MAX_SIDE.get(fmt)
    if limit is not None and max(size) > limit:
        raise InvalidParameter(
            f"{fmt} cannot hold {size[0]}x{size[1]} (at most {limit} pixels a side); ask for format=png"
        )
    planes = pixels.shape[2]
    gray = planes <= 2
    buf = io.BytesIO()
    if picture.bit_depth == 16 and fmt == "PNG":
        if planes != 1:  # Pillow narrows 16-bit colour and gray + alpha: pypng writes them
            png16.write(buf, pixels, png_level, _icc_for(icc_profile, gray), text)
            return buf.getvalue()
        img = Image.fromarray(np.ascontiguousarray(pixels[..., 0]))  # I;16
    else:
        if picture.bit_depth == 16:
            pixels = _narrow(pixels)
        img = Image.fromarray(pixels[..., 0] if planes == 1 else pixels, _PIL_MODES[planes])
    params: dict[str, object] = {}
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value, zip=len(value) > 1024)
        params.update(pnginfo=info, compress_level=png_level)
    elif fmt == "JPEG":
        if img.mode in ("RGBA", "LA"):
            img = img.convert(img.mode[:-1])
        params.update(quality=quality or 95)
    else:  # WEBP
        if img.mode in ("L", "LA"):
            img = img.convert("RGBA" if img.mode == "LA" else "RGB")
        params.update(quality=quality or 95, method=4)
    icc = _icc_for(icc_profile, img.mode in ("L", "LA", "I;16"))
    if icc:
        params["icc_profile"] = icc
    img.save(buf, fmt, **params)
    return buf.getvalue()
