"""PNG pixels through libpng (imagecodecs), straight into a numpy array with the GIL released.

Pillow's PNG decoder gives the GIL back and takes it again for every block of input, so beside a busy
event loop or a model thread it is starved (a 2048² decode ran 5x slower beside a thread running
Python), and its RGB images still need a copy into numpy (Pillow keeps 4 bytes a pixel). libpng through
imagecodecs decodes in one call, GIL released, into the array the pipeline uses: about 1.3x Pillow's
speed for 8-bit photos, 6x pypng's for 16-bit colour (scripts/bench.py --models none prints both).

Only the critical chunks reach libpng: IHDR, IDAT and IEND, copied with their CRCs, so a corrupt chunk
is still an error. Ancillary chunks are never expanded in C with limits looser than Pillow's; the text
chunks, before and after the pixels, go through Pillow's own chunk parser (its MAX_TEXT_CHUNK and
MAX_TEXT_MEMORY). The fast path takes non-interlaced gray, RGB, gray + alpha and RGBA at 8 or 16 bits
without tRNS or animation; everything else stays on Pillow (and pypng for 16-bit tRNS).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from imagecodecs import PngError, png_decode  # loads its libpng module now, not on a request
from PIL import PngImagePlugin

from app.errors import InvalidImage
from app.imaging.pngwrite import SIGNATURE, chunk

_IHDR_END = 33  # signature (8) + length, type, 13 bytes of IHDR, CRC
_TEXT = {b"tEXt", b"zTXt", b"iTXt"}
_PILLOWS = {b"tRNS", b"acTL"}  # key-colour alpha and APNG: Pillow's (and pypng's) semantics
_IEND = chunk(b"IEND", b"")


def eligible(data: bytes) -> bool:
    """True for a PNG whose IHDR says: 8 or 16 bits, gray / RGB / gray + alpha / RGBA, not interlaced."""
    return (
        data[:8] == SIGNATURE
        and len(data) >= _IHDR_END
        and data[8:16] == b"\x00\x00\x00\x0dIHDR"
        and data[24] in (8, 16)
        and data[25] in (0, 2, 4, 6)
        and data[28] == 0
    )


def read(data: bytes) -> tuple[np.ndarray, dict[str, str]] | None:
    """(H, W, C) uint8 / uint16 samples (C = 1..4 as stored) and the text chunks, for an `eligible`
    PNG; None when it has a tRNS or acTL chunk (Pillow's path then). Raises InvalidImage."""
    view = memoryview(data)
    critical = [view[:_IHDR_END]]
    text = PngImagePlugin.PngStream(io.BytesIO(data))
    pos, end = _IHDR_END, len(data)
    try:
        while pos + 12 <= end:
            length, kind = struct.unpack_from(">I4s", data, pos)
            after = pos + 12 + length
            if after > end:
                raise InvalidImage("image data is broken: a PNG chunk runs past the end of the data")
            if kind == b"IDAT":
                critical.append(view[pos:after])
            elif kind == b"IEND":
                break
            elif kind in _PILLOWS:
                return None
            elif kind in _TEXT:
                assert text.fp is not None
                text.fp.seek(pos + 8)
                text.crc(kind, text.call(kind, pos + 8, length))
            pos = after
        pixels = png_decode(b"".join([*critical, _IEND]))
    except (PngError, ValueError, SyntaxError, EOFError, OSError, zlib.error) as exc:
        raise InvalidImage(f"image data is broken: {exc}") from None
    return (pixels[..., None] if pixels.ndim == 2 else pixels), {
        str(k): str(v) for k, v in text.im_text.items()
    }
