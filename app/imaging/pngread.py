"""PNG pixels through libpng (imagecodecs), straight into a numpy array with the GIL released.

Pillow's PNG decoder gives the GIL back and takes it again for every block of input, so beside a busy
event loop or a model thread it is starved (a 2048² decode ran 5x slower beside a thread running
Python), and its RGB images still need a copy into numpy (Pillow keeps 4 bytes a pixel). libpng through
imagecodecs decodes in one call, GIL released, into the array the pipeline uses: about 1.3x Pillow's
speed for 8-bit photos, 6x pypng's for 16-bit colour (scripts/bench.py --models none prints both).

Only the critical chunks reach libpng: IHDR as sent, the IDAT data (inflated first, below) and IEND;
corrupt pixel data is still an error. Ancillary chunks are never expanded in C with limits looser than
Pillow's; the text chunks, before and after the pixels, go through Pillow's own chunk parser (its
MAX_TEXT_CHUNK and MAX_TEXT_MEMORY). The fast path takes non-interlaced gray, RGB, gray + alpha and
RGBA at 8 or 16 bits without tRNS or animation; everything else stays on Pillow (and pypng for 16-bit
tRNS).

The inflate, most of libpng's time, runs in ISA-L (the `isal` package, already the PNG writer's
deflate): about twice zlib's speed, in one call with the GIL released, and never past the size the
header gives. The scanlines then reach libpng as a PNG of stored (uncompressed) deflate blocks, built
in one copy, and libpng only undoes the row filters, for which no maintained package offers a
vectorised loop (Paeth and Average rows depend on the pixel to their left). A real photo resized to
768², 1024² and 2048² decoded in 1.50-1.52x libpng's speed alone and 0.96-1.43x beside a thread
running Python; a tiled texture, which inflates fast in either, in 0.90-0.98x (`scripts/bench.py
--models none`, the decode table). ISA-L checks the stream's adler32, the pixel data's checksum end
to end; libpng checks the IHDR's CRC and the filters. An IDAT chunk's own CRC is not checked, as
Pillow does not check it: that would give the GIL up once per chunk (Pillow writes 64 KiB chunks),
and beside a thread running Python each one waits up to the switch interval to take it back.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from typing import Literal, cast

import numpy as np
from imagecodecs import PngError, png_decode  # loads its libpng module now, not on a request
from isal import igzip_lib, isal_zlib
from PIL import PngImagePlugin

from app.errors import InvalidImage
from app.imaging.pngwrite import SIGNATURE, chunk

_IHDR_END = 33  # signature (8) + length, type, 13 bytes of IHDR, CRC
_TEXT = {b"tEXt", b"zTXt", b"iTXt"}
_PILLOWS = {b"tRNS", b"acTL"}  # key-colour alpha and APNG: Pillow's (and pypng's) semantics
_IEND = chunk(b"IEND", b"")
_PLANES = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7's passes: first column, first row, column step, row step.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_STORED = 65535  # bytes in a stored deflate block at most
_ZLIB_HEAD = b"\x78\x01"  # deflate, 32 KiB window, no dictionary (a multiple of 31 as zlib asks)
# isal's stubs declare its exception as an instance; at run time it is the class igzip_lib raises.
_ISAL_ERROR = cast(type[Exception], igzip_lib.IsalError)


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


def _chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, start, end) of each chunk after IHDR, up to IEND (excluded). Raises InvalidImage for a
    chunk that runs past the end of the data."""
    pos, end = _IHDR_END, len(data)
    while pos + 12 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        after = pos + 12 + length
        if after > end:
            raise InvalidImage("image data is broken: a PNG chunk runs past the end of the data")
        if kind == b"IEND":
            return
        yield kind, pos, after
        pos = after


def read(data: bytes) -> tuple[np.ndarray, dict[str, str]] | None:
    """(H, W, C) uint8 / uint16 samples (C = 1..4 as stored) and the text chunks, for an `eligible`
    PNG; None when it has a tRNS or acTL chunk (Pillow's path then). Raises InvalidImage."""
    view = memoryview(data)
    idat = []
    text = PngImagePlugin.PngStream(io.BytesIO(data))
    try:
        for kind, pos, after in _chunks(data):
            if kind == b"IDAT":
                idat.append(view[pos + 8 : after - 4])
            elif kind in _PILLOWS:
                return None
            elif kind in _TEXT:
                assert text.fp is not None
                text.fp.seek(pos + 8)
                text.crc(kind, text.call(kind, pos + 8, after - pos - 12))
        head = view[:_IHDR_END]
        stored = _stored_png(head, *inflate(b"".join(idat), scanlines_size(head)))
        pixels = png_decode(cast(bytes, stored))  # imagecodecs reads any buffer; its stubs say bytes
    except (PngError, ValueError, SyntaxError, EOFError, OSError, zlib.error) as exc:
        raise InvalidImage(f"image data is broken: {exc}") from None
    return (pixels[..., None] if pixels.ndim == 2 else pixels), {
        str(k): str(v) for k, v in text.im_text.items()
    }


def check_pixel_data(data: bytes) -> None:
    """Raise InvalidImage unless the IDAT stream of the PNG `data` inflates to exactly its header's
    size: the check before pypng, which inflates each IDAT chunk whole, into memory, however much it
    holds (a 1 MB upload took 7.8 GB and 228 s)."""
    view = memoryview(data)
    stream = b"".join(view[pos + 8 : after - 4] for kind, pos, after in _chunks(data) if kind == b"IDAT")
    inflate(stream, scanlines_size(view[:_IHDR_END]), extra="refuse")


def scanlines_size(head: bytes | memoryview) -> int:
    """Bytes of the filtered scanlines (a filter byte before each row) of the PNG that `head`
    (signature and IHDR) starts: the seven passes of Adam7 when interlaced."""
    width, height, depth, color, interlace = struct.unpack_from(">IIBBxxB", head, 16)
    bits = depth * _PLANES.get(color, 1)  # colour type 3 (palette): one index per pixel
    if not interlace:
        return height * (1 + (width * bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        total += h * (1 + (w * bits + 7) // 8) if w > 0 and h > 0 else 0
    return total


def inflate(stream: bytes, size: int, extra: Literal["ignore", "refuse"] = "ignore") -> tuple[bytes, bytes]:
    """The zlib `stream` of a PNG's IDAT chunks, inflated by ISA-L to its `size` bytes of scanlines
    (`scanlines_size`), and their adler32 (4 bytes, big-endian), which ISA-L checked. Raises
    InvalidImage.

    The inflate stops one byte past `size`: the output, and the time, stay what the header (checked
    against the pixel limit) allows. More data than the image holds is ignored, as Pillow ignores it
    (libpng inflated all of it: 5 s for a 2 MB upload of 2 GB of zeros), or with `extra="refuse"`
    refused."""
    inflater = igzip_lib.IgzipDecompressor(igzip_lib.DECOMP_ZLIB)
    try:
        raw = inflater.decompress(stream, size + 1)  # the GIL released once
    except _ISAL_ERROR as exc:
        raise InvalidImage(f"image data is broken: {exc}") from None
    if len(raw) > size:
        if extra == "refuse":
            raise InvalidImage("image data is broken: more pixel data than the image holds")
        raw = raw[:size]
        return raw, struct.pack(">I", isal_zlib.adler32(raw))
    if len(raw) < size or not inflater.eof:
        raise InvalidImage("image data is broken: the pixel data ends early")
    end = len(stream) - len(inflater.unused_data)
    return raw, stream[end - 4 : end]


def _stored_png(head: memoryview, scanlines: bytes, adler: bytes) -> np.ndarray:
    """`head` (signature and IHDR), one IDAT holding `scanlines` as a zlib stream of stored deflate
    blocks, and IEND: a PNG whose inflate is a copy. Written in one buffer, the scanlines copied once,
    block by block with the GIL held: a call that gives the GIL up waits up to the switch interval to
    take it back beside a thread running Python; one block's copy takes microseconds."""
    n = len(scanlines)
    blocks = -(-n // _STORED)
    zlen = len(_ZLIB_HEAD) + n + 5 * blocks + 4
    out = np.empty(len(head) + 8 + zlen + 4 + len(_IEND), np.uint8)
    view = memoryview(out)  # type: ignore[arg-type]
    view[: len(head)] = head
    idat = len(head)
    struct.pack_into(">I4s2s", view, idat, zlen, b"IDAT", _ZLIB_HEAD)
    pos, src = idat + 10, memoryview(scanlines)
    for start in range(0, n, _STORED):
        piece = src[start : start + _STORED]
        struct.pack_into("<BHH", view, pos, start + _STORED >= n, len(piece), len(piece) ^ 0xFFFF)
        view[pos + 5 : pos + 5 + len(piece)] = piece
        pos += 5 + len(piece)
    view[pos : pos + 4] = adler
    struct.pack_into(">I", view, pos + 4, isal_zlib.crc32(view[idat + 4 : pos + 4]))
    view[pos + 8 :] = _IEND
    return out
