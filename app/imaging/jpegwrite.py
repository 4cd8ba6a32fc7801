"""JPEG output spread over the cores: horizontal strips encoded by libjpeg-turbo at once, joined with
restart markers into one baseline JPEG.

Why by hand: every maintained encoder (Pillow, simplejpeg, PyTurboJPEG) encodes one image on one core,
and Pillow holds the GIL while it does, so on a GPU host that encode is a large share of a request.
A baseline JPEG with a restart interval is a sequence of independent pieces: at each RSTn marker the
entropy coder starts afresh (DC predictions reset, the bits padded to a byte). So strips whose height
is a whole number of MCU rows (16 pixels covers 4:2:0 colour and gray), encoded with the same quality,
subsampling and standard Huffman tables, are exactly those pieces: the first strip's headers (with the
full height in SOF0 and a DRI marker naming one strip's MCU count) followed by every strip's
entropy-coded data, separated by RST0..RST7, decode to the same pixels as the whole image encoded at
once. The strips are encoded by simplejpeg (libjpeg-turbo, the GIL released, accurate integer DCT, 4:2:0
as Pillow's default); the ICC profile goes in as APP2 segments, as Pillow writes it.
"""

from __future__ import annotations

import itertools
import os
import struct

import numpy as np
import simplejpeg

from app.imaging.threads import pool

MCU = 16  # pixels: the MCU height of 4:2:0 colour (and a multiple of gray's 8)
MIN_STRIP_PIXELS = 1 << 18  # pixels per strip at least: smaller strips cost more than they save
SOF0, SOS = 0xC0, 0xDA
EOI = b"\xff\xd9"
ICC_CHUNK = 65519  # profile bytes per APP2 segment (65535 - 2 length - 12 "ICC_PROFILE\0" - 2 seq/count)


def _encode(pixels: np.ndarray, quality: int) -> bytes:
    gray = pixels.shape[2] == 1
    return bytes(
        simplejpeg.encode_jpeg(
            np.ascontiguousarray(pixels),
            quality=quality,
            colorspace="GRAY" if gray else "RGB",
            colorsubsampling="Gray" if gray else "420",
            fastdct=False,
        )
    )


def icc_segments(icc: bytes) -> bytes:
    """The profile as APP2 ICC_PROFILE segments (numbered from 1), as Pillow and libjpeg write it."""
    parts = [icc[i : i + ICC_CHUNK] for i in range(0, len(icc), ICC_CHUNK)]
    return b"".join(
        b"\xff\xe2" + struct.pack(">H", 2 + 14 + len(p)) + b"ICC_PROFILE\x00" + bytes((n, len(parts))) + p
        for n, p in enumerate(parts, 1)
    )


def _segments(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """The header segments of a baseline JPEG as (marker, start, end) and where the entropy-coded data
    of its scan begins (after the SOS segment)."""
    pos, found = 2, []  # after SOI
    while True:
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        found.append((marker, pos, end))
        if marker == SOS:
            return found, end
        pos = end


def write_jpeg(pixels: np.ndarray, quality: int, icc_profile: bytes | None) -> bytes:
    """(H, W, 1 | 3) uint8 pixels as a baseline JPEG at `quality`, with the ICC profile. Large images are
    encoded as strips on every core and joined with restart markers; small ones in one piece."""
    h, w, planes = pixels.shape
    mcu_w = MCU if planes == 3 else 8
    rows = -(-h // MCU)  # 16-pixel rows of MCUs
    mcus_per_row = -(-w // mcu_w)
    strips = min(os.cpu_count() or 1, w * h // MIN_STRIP_PIXELS, rows)
    per_strip = -(-rows // max(1, strips))
    # DRI holds 16 bits: a strip is at most 65535 MCUs (gray's 8-pixel MCUs: two per 16-pixel row).
    per_strip = min(per_strip, 65535 // (mcus_per_row * (MCU // (8 if planes == 1 else MCU))))
    if strips <= 1 or per_strip < 1 or per_strip >= rows:
        pieces = [_encode(pixels, quality)]
    else:
        bounds = [*range(0, h, per_strip * MCU), h]
        jobs = [pool().submit(_encode, pixels[a:b], quality) for a, b in itertools.pairwise(bounds)]
        pieces = [job.result() for job in jobs]
    interval = per_strip * (MCU // (8 if planes == 1 else MCU)) * mcus_per_row
    return _join(pieces, h, interval, icc_segments(icc_profile) if icc_profile else b"")


def _join(pieces: list[bytes], height: int, interval: int, app2: bytes) -> bytes:
    """The first piece's headers (the ICC segments after JFIF's APP0, SOF0 carrying the full `height`,
    a DRI of `interval` MCUs before the scan when there are several pieces) and every piece's
    entropy-coded data, RST0..RST7 between them, then EOI."""
    first = pieces[0]
    segments, scan = _segments(first)
    out = bytearray(first[:2])  # SOI
    after_jfif = segments[0][0] == 0xE0  # APP0 (JFIF) comes first where present; the profile after it
    if not after_jfif:
        out += app2
    for marker, start, end in segments:
        segment = bytearray(first[start:end])
        if marker == SOF0:
            segment[5:7] = struct.pack(">H", height)  # FF C0, length (2), precision (1), height (2)
        if marker == SOS and len(pieces) > 1:
            out += b"\xff\xdd\x00\x04" + struct.pack(">H", interval)
        out += segment
        if after_jfif and start == segments[0][1]:
            out += app2
    for i, piece in enumerate(pieces):
        body_start = scan if i == 0 else _segments(piece)[1]
        if not piece.endswith(EOI):
            raise ValueError("a strip's JPEG does not end with EOI")
        if i:
            out += bytes((0xFF, 0xD0 + (i - 1) % 8))
        out += piece[body_start:-2]
    out += EOI
    return bytes(out)
