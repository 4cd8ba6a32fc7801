"""app/api/b64.py: the same bytes and the same strictness as the standard library's base64."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.api import b64
from app.errors import InvalidImage


@given(st.binary(max_size=4096))
def test_encode_and_decode_agree_with_the_standard_library(data: bytes) -> None:
    text = b64.encode(data)
    assert text == base64.b64encode(data).decode()
    assert b64.decode(text, 0) == data
    assert b64.decode("data:image/png;base64," + text, 0) == data


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
