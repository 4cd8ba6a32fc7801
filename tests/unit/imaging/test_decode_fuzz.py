"""Damaged uploads through probe + decode, bounded and reproducible: whatever the bytes, the answer is a
decoded image or an UpscalerError (a clear 4xx), never another exception, from Pillow's path or from
the C decoders (libpng, libjpeg-turbo) that most uploads now go through. PNG damage is given fresh
CRCs half the time, so it gets past the chunk checks into libpng's inflate and unfiltering."""

from __future__ import annotations

import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import UpscalerError
from app.imaging.decode import decode, probe
from tests.support.images import gradient_image, png_bytes, random16, save, write_png16

SEEDS = [
    png_bytes(gradient_image(37, 29)),
    png_bytes(gradient_image(37, 29).convert("RGBA")),
    png_bytes(gradient_image(20, 10).convert("L")),
    png_bytes(gradient_image(20, 10).convert("P")),
    write_png16(random16(9, 13, 3)),
    write_png16(random16(9, 13, 2)),
    save(gradient_image(40, 30), "JPEG", quality=90),
    save(gradient_image(40, 30).convert("L"), "JPEG"),
    save(gradient_image(40, 30), "JPEG", progressive=True),
]

edit = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 1 << 16), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(1, 1 << 16), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=40)),
)


def damaged(seed: bytes, edits: list[tuple], fix_crcs: bool) -> bytes:
    data = bytearray(seed)
    for kind, where, what in edits:
        where %= len(data)
        if kind == "set":
            data[where] = what
        elif kind == "cut" and where > 0:
            del data[where:]
        elif kind == "insert":
            data[where:where] = what
    if fix_crcs and data[:8] == seed[:8] == b"\x89PNG\r\n\x1a\n":
        pos = 8
        while pos + 12 <= len(data):
            (length,) = struct.unpack_from(">I", data, pos)
            if pos + 12 + length > len(data):
                break
            struct.pack_into(">I", data, pos + 8 + length, zlib.crc32(data[pos + 4 : pos + 8 + length]))
            pos += 12 + length
    return bytes(data)


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(SEEDS), st.lists(edit, min_size=1, max_size=4), st.booleans())
def test_damaged_uploads_decode_or_are_refused(seed: bytes, edits: list[tuple], fix_crcs: bool) -> None:
    data = damaged(seed, edits, fix_crcs)
    try:
        decoded = decode(probe(data, 1 << 20))
    except UpscalerError:
        return
    assert decoded.pixels.ndim == 3 and decoded.pixels.shape[2] in (1, 3)
    assert decoded.pixels.shape[:2] == (decoded.size[1], decoded.size[0])
    decoded.pil()
