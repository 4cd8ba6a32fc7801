"""app/api/b64.py: the same bytes and the same strictness as the standard library's base64."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from app.api import b64
from app.errors import InvalidImage


def sent(resp: b64.PiecesResponse) -> bytes:
    """What the response sends over ASGI, checked against its Content-Length."""
    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    asyncio.run(resp({"type": "http"}, None, send))  # type: ignore[arg-type]
    start, *body = messages
    assert start["type"] == "http.response.start" and [m["more_body"] for m in body][-1] is False
    data = b"".join(m["body"] for m in body)
    assert dict(start["headers"])[b"content-length"] == str(len(data)).encode()
    return data


class Answer(BaseModel):
    images: list[str]
    info: dict[str, object]


class Single(BaseModel):
    image: str


@given(
    st.lists(st.binary(max_size=4096), max_size=3), st.dictionaries(st.text(max_size=8), st.text(max_size=8))
)
def test_answers_carry_the_standard_librarys_base64_and_decode_back(images: list[bytes], info: dict) -> None:
    resp = b64.json_response(Answer(images=["unused"], info=info), "images", images)
    assert resp.media_type == "application/json"
    body = json.loads(sent(resp))
    assert body == {"images": [base64.b64encode(data).decode() for data in images], "info": info}
    assert [b64.decode(text, 0) for text in body["images"]] == images


@given(st.binary(max_size=4096))
def test_a_single_image_is_one_string(data: bytes) -> None:
    resp = b64.json_response(Single(image=""), "image", [data], single=True)
    body = json.loads(sent(resp))
    assert body == {"image": base64.b64encode(data).decode()}
    assert b64.decode("data:image/png;base64," + body["image"], 0) == data
    with pytest.raises(ValueError, match="one image expected"):
        b64.json_response(Single(image=""), "image", [data, data], single=True)


@pytest.mark.parametrize(
    "text",
    ["abc", "YWJj\nZA==", "YWJjZA=", "YW!jZA==", "ÿWJjZA==", "YWJjZA==YWJj", "%%%not-base64%%%"],
    ids=["short", "newline", "bad padding", "off the alphabet", "not ascii", "data after padding", "junk"],
)
def test_what_the_standard_library_refuses_is_refused(text: str) -> None:
    with pytest.raises(ValueError):  # binascii.Error is a ValueError
        base64.b64decode(text, validate=True)
    with pytest.raises(InvalidImage, match=r"images\[3\] is not valid base64"):
        b64.decode(text, 3)
