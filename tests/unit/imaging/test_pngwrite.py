"""The PNG writer: the pixels, bit depth, colour type and metadata that Pillow and pypng read back, the
zlib stream joined from pieces deflated in parallel, and Pillow's text-chunk conventions."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image

from app.imaging import pngwrite
from app.imaging.pngwrite import (
    SIGNATURE,
    adler32_combine,
    chunk,
    filtered_rows,
    idat_chunks,
    text_chunk,
    write_png,
)
from tests.support.images import SRGB, fake_icc, png_chunk_types, random16


def real_photo(datasets: Path) -> np.ndarray:
    return np.asarray(Image.open(datasets / "Set14" / "baboon.png").convert("RGB"))


@pytest.mark.parametrize("level", [0, 1, 2, 3, 6, 9])
def test_pixels_round_trip_at_every_level(datasets: Path, level: int) -> None:
    arr = real_photo(datasets)
    out = Image.open(io.BytesIO(write_png(arr, level, None, {})))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), arr)


@pytest.mark.parametrize(("planes", "mode"), [(1, "L"), (2, "LA"), (3, "RGB"), (4, "RGBA")])
def test_8_bit_colour_types(planes: int, mode: str) -> None:
    arr = np.random.default_rng(planes).integers(0, 256, (37, 53, planes), dtype=np.uint8)
    out = Image.open(io.BytesIO(write_png(arr, 1, None, {})))
    assert out.mode == mode
    assert np.array_equal(np.asarray(out).reshape(arr.shape), arr)


@pytest.mark.parametrize("planes", [1, 2, 3, 4])
def test_16_bit_samples_round_trip_through_pypng(planes: int) -> None:
    arr = random16(29, 41, planes)
    w, h, rows, info = png.Reader(bytes=write_png(arr, 1, None, {})).read()
    assert (w, h, info["bitdepth"], info["planes"]) == (41, 29, 16, planes)
    assert np.array_equal(np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(arr.shape), arr)


def test_metadata_is_read_back_by_pillow() -> None:
    text = {
        "parameters": "a cat, Steps: 20",
        "workflow": "x" * 5000,
        "comment": "ノード 196",
        "long": "ü" * 2000,
    }
    data = write_png(np.zeros((8, 8, 3), np.uint8), 1, SRGB, text)
    out = Image.open(io.BytesIO(data))
    out.load()
    assert out.info["icc_profile"] == SRGB and out.text == text  # type: ignore[attr-defined]
    kinds = png_chunk_types(data)
    # As Pillow writes them: tEXt, zTXt past 1024 characters, iTXt for what Latin-1 cannot hold.
    assert kinds[:2] == [b"IHDR", b"iCCP"] and kinds[-1] == b"IEND"
    assert kinds.count(b"tEXt") == 1 and kinds.count(b"zTXt") == 2 and kinds.count(b"iTXt") == 1
    assert max(i for i, k in enumerate(kinds) if k != b"IDAT" and k != b"IEND") < kinds.index(b"IDAT")


def test_gray_profile_on_gray_pixels() -> None:
    gray = fake_icc(b"GRAY")
    out = Image.open(io.BytesIO(write_png(np.zeros((4, 4, 1), np.uint16), 1, gray, {})))
    assert out.info["icc_profile"] == gray and out.mode == "I;16"


def test_a_key_png_cannot_hold_is_left_out() -> None:
    assert text_chunk("", "value") is None
    assert text_chunk("k" * 100, "v")[8:87] == b"k" * 79  # type: ignore[index]


def test_pieces_deflated_in_parallel_are_one_zlib_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pngwrite, "MIN_PIECE", 1000)
    monkeypatch.setattr(pngwrite.os, "cpu_count", lambda: 5)
    raw = np.random.default_rng(0).integers(0, 40, 123_457, dtype=np.uint8).tobytes()
    for level in (0, 1, 3, 6):
        chunks = idat_chunks(raw, level)
        assert len(chunks) == 5 + 2  # header, five pieces, adler32
        whole = SIGNATURE + b"".join(chunks) + chunk(b"IEND", b"")
        assert png_chunk_types(whole) == [b"IDAT"] * 7 + [b"IEND"]  # their CRCs checked too
        assert zlib.decompress(b"".join(_idat(whole))) == raw  # the header and the adler32 too


def test_the_scanlines_of_an_image_split_into_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    # The scanlines are a 2-D array: its bytes, not its rows, are what the pieces divide.
    monkeypatch.setattr(pngwrite.os, "cpu_count", lambda: 4)
    rows = filtered_rows(np.random.default_rng(2).integers(0, 9, (1024, 1024, 3), dtype=np.uint8))
    chunks = idat_chunks(rows.data, 1)
    assert rows.nbytes // pngwrite.MIN_PIECE == 3 and len(chunks) == 3 + 2  # header, 3 pieces, adler32
    assert (
        zlib.decompress(b"".join(_idat(SIGNATURE + b"".join(chunks) + chunk(b"IEND", b"")))) == rows.tobytes()
    )


def test_adler32_combine_as_zlib() -> None:
    data = np.random.default_rng(1).integers(0, 256, 200_003, dtype=np.uint8).tobytes()
    for cut in (0, 1, 65521, 100_000, 200_003):
        a, b = zlib.adler32(data[:cut]), zlib.adler32(data[cut:])
        assert adler32_combine(a, b, len(data) - cut) == zlib.adler32(data)


def test_up_filter_is_the_row_difference_modulo_256() -> None:
    arr = np.array([[[250, 7]], [[3, 9]]], np.uint8)  # 2 rows, 1 pixel, 2 planes
    assert filtered_rows(arr).tolist() == [[2, 250, 7], [2, 9, 2]]
    deep = np.array([[[0x0102]], [[0x0001]]], np.uint16)  # big-endian bytes 01 02 / 00 01
    assert filtered_rows(deep).tolist() == [[2, 1, 2], [2, 255, 255]]


def test_level_1_size_is_close_to_pillows(datasets: Path) -> None:
    # Level 1 photos: ISA-L with the Up filter lands within 15 % of Pillow's zlib level-1 size.
    arr = np.asarray(Image.fromarray(real_photo(datasets)).resize((1000, 1000), Image.Resampling.LANCZOS))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    assert len(write_png(arr, 1, None, {})) <= 1.15 * len(buf.getvalue())


@pytest.mark.parametrize("planes", [1, 3, 4])
def test_levels_4_to_9_choose_a_filter_per_row(
    datasets: Path, monkeypatch: pytest.MonkeyPatch, planes: int
) -> None:
    monkeypatch.setattr(pngwrite, "MIN_PIECE", 20_000)  # several row blocks, each with its row above
    smooth = Image.fromarray(real_photo(datasets)).resize((600, 500), Image.Resampling.BICUBIC)
    arr = (
        np.asarray(smooth.convert("RGBA"))[..., :planes]
        if planes != 1
        else np.asarray(smooth.convert("L"))[..., None]
    )
    data = write_png(arr, 6, None, {})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))).reshape(arr.shape), arr)
    raw = zlib.decompress(b"".join(p for p in _idat(data)))
    kinds = set(raw[i * (1 + arr.shape[1] * planes)] for i in range(arr.shape[0]))
    assert len(kinds) >= 2 and kinds <= {1, 2, 3, 4}
    assert len(data) < len(write_png(arr, 1, None, {}))


def test_16_bit_rows_filter_per_row_too() -> None:
    arr = random16(40, 30, 3) // 64 * 64  # fewer distinct values: something to compress
    rows = png.Reader(bytes=write_png(arr, 9, None, {})).read()[2]
    assert np.array_equal(np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(arr.shape), arr)


def _idat(data: bytes) -> list[bytes]:
    return [payload for kind, payload in png.Reader(bytes=data).chunks() if kind == b"IDAT"]
