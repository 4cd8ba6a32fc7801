"""16-bit PNG through pypng: Pillow narrows 16-bit colour and gray + alpha PNGs to 8 bits.

pypng is pure Python, so this path is used only for the PNGs that need it (`needs_pypng`).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from app.errors import InvalidImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def needs_pypng(data: bytes, img: Image.Image) -> bool:
    """True for a 16-bit PNG that Pillow would narrow: colour (types 2, 6), gray + alpha (type 4),
    or gray with a tRNS key colour (alpha Pillow would not give)."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 26 or data[24] != 16:
        return False
    color_type = data[25]
    return color_type in (2, 4, 6) or (color_type == 0 and "transparency" in img.info)


def read(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) uint16 samples with C = 1 or 3, and (H, W) uint16 alpha or None.

    Raw samples (pypng's read(), not asDirect(), which would shift values down to an sBIT depth);
    a tRNS key colour becomes an alpha plane (0 where the pixel equals it, 65535 elsewhere).
    """
    import png  # pypng: pure Python, reads 16-bit PNGs that Pillow narrows to 8 bits

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


def write(buf: io.BytesIO, arr: np.ndarray, level: int, icc: bytes | None, text: dict[str, str]) -> None:
    """Write a uint16 (H, W, 2|3|4) array (gray + alpha, RGB, RGBA) as a 16-bit PNG with iCCP / iTXt."""
    import png

    h, w, planes = arr.shape
    writer = png.Writer(w, h, greyscale=planes <= 2, alpha=planes in (2, 4), bitdepth=16, compression=level)
    tmp = io.BytesIO()
    writer.write_array(tmp, np.ascontiguousarray(arr, dtype=np.uint16).reshape(-1))
    data = tmp.getvalue()
    # pypng writes no iCCP / iTXt: splice them in right after IHDR (8-byte signature + 25-byte IHDR).
    extra = b""
    if icc:
        extra += chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))
    for key, value in text.items():
        keyword = key.encode("latin-1", "replace")[:79]
        if not keyword:
            continue
        raw = value.encode("utf-8")
        # keyword NUL, compression flag + method, empty language tag NUL, empty translated keyword NUL
        if len(raw) > 1024:
            extra += chunk(b"iTXt", keyword + b"\x00\x01\x00\x00\x00" + zlib.compress(raw))
        else:
            extra += chunk(b"iTXt", keyword + b"\x00\x00\x00\x00\x00" + raw)
    buf.write(data[:33] + extra + data[33:])


def chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
