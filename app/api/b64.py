"""Base64 for the JSON routes (/generate and A1111's /sdapi/v1/extra-*), through pybase64 (SIMD).

A hires-fix request carries its image in base64 and gets the output back the same way. The standard
library's binascii took 3.5 ms to decode a 768² PNG's base64 and 4.7 ms to encode a 1536² PNG
(10.7 and 6.2 ms at another moment) on this project's 2-core machine, on the event loop's thread
that every request passes through; pybase64 does each in about 0.25 ms, with the same strictness
(validate=True: only the alphabet and correct padding) and binascii.Error for bad input.
"""

from __future__ import annotations

import binascii

import pybase64

from app.errors import InvalidImage


def decode(text: str, index: int) -> bytes:
    """The bytes of image `index` (a `data:...;base64,` prefix allowed). Raises InvalidImage."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"images[{index}] is not valid base64") from None


def encode(data: bytes) -> str:
    return pybase64.b64encode(data).decode("ascii")
