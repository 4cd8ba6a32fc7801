"""Base64 for the JSON routes (/generate and A1111's /sdapi/v1/extra-*), through pybase64 (SIMD).

A hires-fix request carries its image in base64 and gets the output back the same way, and this
work runs on the event loop's thread that every request passes through. The standard library's
b64decode(validate=True) checks a str with a regular expression over all of it: a 768² -> 1536²
/generate request spent about 60 ms of that thread's CPU on this project's 2-core machine, and
11.5 ms with pybase64 (`scripts/bench.py --models none`), which keeps the same strictness (only the
alphabet and correct padding) and raises binascii.Error for bad input as binascii does.

Answers are written the same way: the base64 goes straight into the answer (`json_response`).
Base64's alphabet needs no JSON escaping, yet a JSON serialiser scans and copies every character of a
string: pydantic's took 2.5-2.9 ms for a 1536² PNG answer's (timed alone). The answer is sent as the
pieces it is made of, never joined into one body, which would copy the base64 once more on the event
loop's thread and hold it twice. Requests are parsed by pydantic's own JSON parser (see
routes/generate.py). With both, a 768² -> 1536² /generate request took 6.3-7.0 ms of the event loop's
CPU against 10.7-12.0 ms before, on this project's 2-core machine (two servers in turn; `scripts/bench.py
--models none` prints the route's figure).
"""

from __future__ import annotations

import binascii
import json

import pybase64
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from app.errors import InvalidImage


def decode(text: str, index: int) -> bytes:
    """The bytes of image `index` (a `data:...;base64,` prefix allowed). Raises InvalidImage."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"images[{index}] is not valid base64") from None


class PiecesResponse(Response):
    """A body sent as the pieces it is made of, one ASGI message each (Content-Length their sum)."""

    def __init__(self, pieces: list[bytes], media_type: str) -> None:
        self.pieces = pieces
        super().__init__(headers={"content-length": str(sum(map(len, pieces)))}, media_type=media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        for i, piece in enumerate(self.pieces, 1):
            await send({"type": "http.response.body", "body": piece, "more_body": i < len(self.pieces)})


def json_response(
    model: BaseModel, field: str, images: list[bytes], *, single: bool = False
) -> PiecesResponse:
    """`model` as a JSON answer whose `field` is the base64 of `images`: one string with `single`, else
    a list. The rest of `model` is pydantic's JSON (`field`'s own value in it is not used); `field`
    comes first, its base64 encoded straight into the answer's pieces."""
    if single and len(images) != 1:
        raise ValueError(f"one image expected for {field}, got {len(images)}")
    rest = model.model_dump_json(exclude={field}).encode()[1:]  # '}', or '"name": ...}'
    tail = rest if rest == b"}" else b"," + rest
    head = b"{" + json.dumps(field).encode() + b":"
    if not images:
        return PiecesResponse([head + b"[]" + tail], "application/json")
    pieces = [head + (b'"' if single else b'["')]
    for i, data in enumerate(images):
        pieces += [b'","', pybase64.b64encode(data)] if i else [pybase64.b64encode(data)]
    pieces.append((b'"' if single else b'"]') + tail)
    return PiecesResponse(pieces, "application/json")
