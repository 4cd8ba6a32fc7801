"""Writing outputs: the format chosen, metadata and bit depth kept where each format can hold them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidParameter
from app.imaging.encode import output_format
from app.imaging.pixels import compose, to_unit_float
from scripts.quality import psnr
from tests.support.images import (
    SD_TEXT,
    SRGB,
    decode_response,
    encode,
    fake_icc,
    gradient_image,
    png_chunk_types,
    random16,
    read_png16,
)


# -- output_format ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "expected"),
    [("PNG", "PNG"), ("JPEG", "JPEG"), ("WEBP", "WEBP"), ("BMP", "PNG"), ("TIFF", "PNG"), ("GIF", "PNG")],
)
def test_output_format_defaults_to_the_input(source: str, expected: str) -> None:
    assert output_format(None, source) == expected
    assert output_format("", source) == expected


@pytest.mark.parametrize(
    ("requested", "expected"), [("png", "PNG"), ("JPEG", "JPEG"), ("jpg", "JPEG"), ("WebP", "WEBP")]
)
def test_output_format_honours_the_request(requested: str, expected: str) -> None:
    assert output_format(requested, "GIF") == expected


@pytest.mark.parametrize("requested", ["gif", "bmp", "tiff", "exr", "png8"])
def test_output_format_refuses_unknown_names(requested: str) -> None:
    with pytest.raises(InvalidParameter, match=requested):
        output_format(requested, "PNG")


# -- encode ----------------------------------------------------------------------------------------
def test_encode_png_keeps_icc_and_text() -> None:
    out = decode_response(encode(gradient_image(), icc_profile=SRGB, text=SD_TEXT))
    assert out.format == "PNG" and out.info["icc_profile"] == SRGB
    assert out.text == SD_TEXT  # type: ignore[attr-defined]


def test_encode_png_16bit_gray_stays_i16() -> None:
    values = random16(30, 40, 1)[..., 0]
    picture = compose(to_unit_float(values)[..., None], None, 16)
    data = encode(picture.pixels)
    out = decode_response(data)
    assert data[24] == 16 and out.mode == "I;16" and np.array_equal(np.asarray(out), values)


@pytest.mark.parametrize("planes", [2, 3, 4])
def test_encode_png_16bit_array_round_trips(planes: int) -> None:
    arr = random16(30, 40, planes)
    icc = SRGB if planes >= 3 else fake_icc(b"GRAY")
    data = encode(arr, icc_profile=icc, text=SD_TEXT)
    back, info = read_png16(data)
    assert info["bitdepth"] == 16 and info["alpha"] == (planes in (2, 4))
    assert info["greyscale"] == (planes == 2)
    assert np.array_equal(back, arr)
    kinds = png_chunk_types(data)
    assert kinds.count(b"iCCP") == 1
    assert sum(kinds.count(k) for k in (b"tEXt", b"zTXt", b"iTXt")) == len(SD_TEXT)
    assert kinds.index(b"iCCP") < kinds.index(b"IDAT")
    out = decode_response(data)
    assert out.text == SD_TEXT and out.info["icc_profile"] == icc  # type: ignore[attr-defined]


def test_encode_drops_a_profile_for_the_wrong_colour_space() -> None:
    gray_icc = fake_icc(b"GRAY")
    assert "icc_profile" not in decode_response(encode(gradient_image(), icc_profile=gray_icc)).info
    assert "icc_profile" not in decode_response(encode(gradient_image(mode="L"), icc_profile=SRGB)).info
    assert (
        decode_response(encode(gradient_image(mode="L"), icc_profile=gray_icc)).info["icc_profile"]
        == gray_icc
    )
    # WebP has no grayscale: the gray picture becomes RGB, so its gray profile cannot stay.
    webp = decode_response(encode(gradient_image(mode="L"), "WEBP", icc_profile=gray_icc))
    assert webp.mode == "RGB" and "icc_profile" not in webp.info
    assert decode_response(encode(gradient_image(), "WEBP", icc_profile=SRGB)).info["icc_profile"] == SRGB
    assert decode_response(encode(gradient_image(), "JPEG", icc_profile=SRGB)).info["icc_profile"] == SRGB


@pytest.mark.parametrize(("mode", "expected"), [("RGBA", "RGB"), ("LA", "L"), ("RGB", "RGB"), ("L", "L")])
def test_encode_jpeg_drops_alpha(mode: str, expected: str) -> None:
    src = gradient_image(40, 30, mode)
    out = decode_response(encode(src, "JPEG", text=SD_TEXT))
    assert out.format == "JPEG" and out.mode == expected
    # The colour is what it was, alpha simply left out (no matte): as the alpha-less picture is written.
    ref = decode_response(encode(src.convert(expected), "JPEG"))
    assert np.array_equal(np.asarray(out), np.asarray(ref))


def test_encode_jpeg_narrows_16bit() -> None:
    flat = np.empty((16, 16, 4), np.uint16)
    flat[...] = (257 * 40, 257 * 128 + 200, 65535, 0)
    out = decode_response(encode(flat, "JPEG"))
    assert out.mode == "RGB"
    assert np.abs(np.asarray(out).astype(int) - [40, 129, 255]).max() <= 2
    gray = decode_response(encode(Image.fromarray(np.full((16, 16), 257 * 77, np.uint16)), "JPEG"))
    assert gray.mode == "L" and np.abs(np.asarray(gray).astype(int) - 77).max() <= 1


@pytest.mark.parametrize(
    ("mode", "expected"), [("L", "RGB"), ("LA", "RGBA"), ("RGB", "RGB"), ("RGBA", "RGBA")]
)
def test_encode_webp_modes(mode: str, expected: str) -> None:
    src = gradient_image(40, 30, "RGBA")
    src.putalpha(Image.fromarray((np.arange(1200) % 256).astype(np.uint8).reshape(30, 40)))
    src = src.convert(mode)
    out = decode_response(encode(src, "WEBP", quality=90))
    assert out.format == "WEBP" and out.mode == expected
    if expected == "RGBA":
        assert psnr(np.asarray(out)[..., 3], np.asarray(src)[..., -1]) > 35


def test_encode_webp_keeps_16bit_rgba_alpha() -> None:
    arr = random16(24, 32, 4)
    arr[..., 3] = 65535
    arr[:12, :, 3] = 0
    out = decode_response(encode(arr, "WEBP"))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3] > 127, arr[..., 3] > 32767)


def test_encode_quality_changes_jpeg_size() -> None:
    noisy = Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    sizes = [len(encode(noisy, "JPEG", quality=q)) for q in (10, 50, 95)]
    assert sizes[0] < sizes[1] < sizes[2]
    assert len(encode(noisy, "JPEG")) == sizes[2]  # the default is 95


@pytest.mark.parametrize(("fmt", "side"), [("WEBP", 16384), ("JPEG", 65501)])
def test_encode_refuses_sizes_the_format_cannot_hold(fmt: str, side: int) -> None:
    with pytest.raises(InvalidParameter, match="png"):
        encode(Image.new("L", (side, 1)), fmt)
