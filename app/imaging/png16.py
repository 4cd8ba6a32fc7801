"""Reading 16-bit PNGs through pypng: Pillow narrows 16-bit colour and gray + alpha PNGs to 8 bits.

pypng is pure Python, so this path is used only for the PNGs that need it (`needs_pypng`) and that
app/imaging/pngread.py does not read (a `tRNS` key colour, interlaced); writing is
app/imaging/pngwrite.py's, for every PNG.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

from app.errors import InvalidImage
from app.imaging import pngread
from app.imaging.pngwrite import SIGNATURE


def needs_pypng(data: bytes, img: Image.Image) -> bool:
    """True for a 16-bit PNG that Pillow would narrow: colour (types 2, 6), gray + alpha (type 4),
    or gray with a tRNS key colour (alpha Pillow would not give)."""
    if not data.startswith(SIGNATURE) or len(data) < 26 or data[24] != 16:
        return False
    color_type = data[25]
    return color_type in (2, 4, 6) or (color_type == 0 and "transparency" in img.info)


def read(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) uint16 samples with C = 1 or 3, and (H, W) uint16 alpha or None.

    Raw samples (pypng's read(), not asDirect(), which would shift values down to an sBIT depth);
    a tRNS key colour becomes an alpha plane (0 where the pixel equals it, 65535 elsewhere).
    """
    import png  # pypng: pure Python, reads 16-bit PNGs that Pillow narrows to 8 bits

    pngread.check_pixel_data(data)
    try:
        w, h, rows, info = png.Reader(bytes=data).read()
        planes = int(info["planes"])
        arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, planes)
    except (png.Error, zlib.error, ValueError, EOFError, struct.error) as exc:
        raise InvalidImage(f"broken 16-bit PNG: {exc}") from None
    if info.get("alpha"):
        return arr[..., :-1], arr[..., -1]
    key = info.get("transparent")
    if key is None:
        return arr, None
    hit = np.all(arr == np.asarray(key, dtype=np.uint16).reshape(1, 1, -1), axis=2)
    return arr, np.where(hit, 0, 65535).astype(np.uint16)
