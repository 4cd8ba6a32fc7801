"""Encode a Picture to PNG, JPEG or WebP, carrying the ICC profile and PNG text chunks."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from app.errors import InvalidParameter
from app.imaging.decode import FORMAT_ALIASES
from app.imaging.jpegwrite import write_jpeg
from app.imaging.pixels import Picture
from app.imaging.pngwrite import write_png

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

    PNG goes through app/imaging/pngwrite.py (every bit depth and colour type, deflate on every core);
    JPEG through app/imaging/jpegwrite.py (libjpeg-turbo, strips on every core) and WebP through
    Pillow, 16-bit pictures narrowed to 8 bits. JPEG has no alpha (dropped) and WebP no grayscale
    (stored as RGB): each format keeps what it can. The ICC profile is kept when it matches the written
    colour space. Raises InvalidParameter when the picture is larger than the format can hold (JPEG
    65500, WebP 16383 pixels a side).
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
    if fmt == "PNG":
        return write_png(pixels, png_level, _icc_for(icc_profile, gray), text)
    if picture.bit_depth == 16:
        pixels = _narrow(pixels)
    if fmt == "JPEG":  # no alpha in JPEG: the colour as it is, the alpha plane left out
        color = pixels[..., :1] if gray else pixels[..., :3]
        return write_jpeg(color, quality or 95, _icc_for(icc_profile, gray))
    img = Image.fromarray(pixels[..., 0] if planes == 1 else pixels, _PIL_MODES[planes])
    # WEBP
    if img.mode in ("L", "LA"):
        img = img.convert("RGBA" if img.mode == "LA" else "RGB")
    params: dict[str, object] = {"quality": quality or 95, "method": 4}
    icc = _icc_for(icc_profile, False)
    if icc:
        params["icc_profile"] = icc
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()
