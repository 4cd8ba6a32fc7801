"""Base64 for the JSON routes (/generate and A1111's /sdapi/v1/extra-*), through pybase64 (SIMD).

A hires-fix request carries its image in base64 and gets the output back the same way, and this
work runs on the event loop's thread that every request passes through. The standard library's
b64decode(validate=True) checks a str with a regular expression over all of it: a 768² -> 1536²
/generate request spent about 60 ms of that thread's CPU on this project's 2-core machine, and
11.5 ms with pybase64 (`scripts/bench.py --models none`), which keeps the same strictness (only the
alphabet and correct padding) and raises binascii.Error for bad input as binascii does.
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
