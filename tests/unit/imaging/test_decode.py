"""Reading uploads: header-only limits, every mode, EXIF orientation, metadata and 16-bit depth."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import png
import pytest
import simplejpeg
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

from app.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from app.imaging.decode import MAX_JPEG_SCANS, Header, probe
from app.imaging.encode import output_format
from app.imaging.pngwrite import chunk
from scripts.crafted import scan_bomb
from tests.support.images import (
    LIMIT,
    SD_TEXT,
    SRGB,
    crafted_png,
    decode_bytes,
    decode_response,
    fake_icc,
    gradient_image,
    png_bytes,
    png_chunk_types,
    random16,
    save,
    with_orientation,
    write_png16,
)


# -- probe -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_probe_reads_format_and_size(fmt: str) -> None:
    header = probe(save(gradient_image(40, 30), fmt), LIMIT)
    assert header == Header(fmt, 40, 30)


def test_probe_refuses_huge_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pixels(self: ImageFile.ImageFile) -> None:
        raise AssertionError("probe decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    # Far beyond Pillow's own bomb limit, and just beyond ours: both are refused from the IHDR alone.
    for w, h in ((60000, 60000), (5000, 4000)):
        with pytest.raises(ImageTooLarge, match=r"too large|limit"):
            probe(crafted_png(w, h), LIMIT)
    # At the limit the header passes (its token IDAT would only fail later, when decoded).
    assert probe(crafted_png(4096, 4096), LIMIT) == Header("PNG", 4096, 4096)


def test_probe_refuses_huge_header_before_its_broken_pixels() -> None:
    # Decoding the token IDAT would be InvalidImage; the size is what the client must hear about.
    with pytest.raises(ImageTooLarge):
        decode_bytes(crafted_png(60000, 60000))
    with pytest.raises(InvalidImage):
        decode_bytes(crafted_png(64, 64))


@pytest.mark.parametrize(
    "data",
    [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"\xff\xd8\xff" + bytes(range(256)), b""],
    ids=["text", "png-signature-only", "jpeg-marker-only", "empty"],
)
def test_probe_refuses_unreadable_bytes(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        probe(data, LIMIT)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA"])
def test_probe_refuses_formats_outside_the_contract(fmt: str) -> None:
    data = save(gradient_image(16, 16), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow reads it; the service must not
    with pytest.raises(UnsupportedMediaType, match=fmt):
        probe(data, LIMIT)


def test_probe_takes_a_camera_mpo_for_a_jpeg() -> None:
    data = save(gradient_image(40, 30), "MPO", save_all=True, append_images=[gradient_image(40, 30)])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert probe(data, LIMIT) == Header("JPEG", 40, 30)
    assert decode_bytes(data).format == "JPEG"
    assert output_format(None, "JPEG") == "JPEG"


def test_probe_refuses_a_jpeg_of_more_scans_than_the_cap_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2,647 legal progressive scans in 200 KB: libjpeg-turbo decoded this 4096² image for 7.7 s."""
    bomb = scan_bomb(4096)
    assert bomb.count(b"\xff\xda") == 2647 and len(bomb) < 256 * 1024

    def no_pixels(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    monkeypatch.setattr(simplejpeg, "decode_jpeg", no_pixels)
    with pytest.raises(InvalidImage, match="2647 scans; at most 100"):
        probe(bomb, LIMIT)
    with pytest.raises(InvalidImage, match="109 scans"):
        probe(scan_bomb(64, bands=12, bits=2), LIMIT)


def test_progressive_jpegs_up_to_the_scan_cap_decode() -> None:
    at_cap = scan_bomb(64, bands=11, bits=2)  # 1 + 3 x 11 x 3 scans
    assert at_cap.count(b"\xff\xda") == MAX_JPEG_SCANS
    dec = decode_bytes(at_cap)
    assert dec.pixels.shape == (64, 64, 3) and np.all(dec.pixels == 128)  # every coefficient 0: mid-grey
    photo = save(gradient_image(64, 48), "JPEG", progressive=True, quality=90)
    assert photo.count(b"\xff\xda") > 1
    assert np.array_equal(decode_bytes(photo).pixels, np.asarray(Image.open(io.BytesIO(photo))))


@pytest.mark.parametrize(
    ("orientation", "size"), [(1, (40, 30)), (3, (40, 30)), (6, (30, 40)), (8, (30, 40))]
)
def test_probe_size_is_after_exif_orientation(orientation: int, size: tuple[int, int]) -> None:
    header = probe(with_orientation(gradient_image(40, 30), orientation), LIMIT)
    assert (header.width, header.height) == size


# -- decode ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "channels", "has_alpha"),
    [("RGB", 3, False), ("RGBA", 3, True), ("L", 1, False), ("LA", 1, True)],
)
def test_decode_keeps_channels_and_alpha(mode: str, channels: int, has_alpha: bool) -> None:
    src = gradient_image(40, 30, "RGBA")
    src.putalpha(Image.fromarray(np.arange(1200, dtype=np.uint8).reshape(30, 40)))
    src = src.convert(mode)
    dec = decode_bytes(png_bytes(src))
    assert dec.pixels.shape == (30, 40, channels) and dec.pixels.dtype == np.uint8
    assert (dec.bit_depth, dec.format, dec.gray, dec.size) == (8, "PNG", channels == 1, (40, 30))
    pil = dec.pil()
    assert pil is not None and pil.mode == mode
    ref = np.asarray(src).reshape(30, 40, -1)
    assert np.array_equal(dec.pixels, ref[..., :channels])
    if has_alpha:
        assert dec.alpha is not None and np.array_equal(dec.alpha, ref[..., -1])
    else:
        assert dec.alpha is None


def test_decode_palette_without_transparency_is_rgb() -> None:
    src = gradient_image(40, 30).quantize(16)
    dec = decode_bytes(png_bytes(src))
    assert dec.alpha is None and dec.pixels.shape == (30, 40, 3)
    assert np.array_equal(dec.pixels, np.asarray(src.convert("RGB")))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_decode_palette_with_transparency_is_rgba(fmt: str) -> None:
    src = gradient_image(40, 30).quantize(16)
    index = np.asarray(src)
    clear = int(index[0, 0])
    dec = decode_bytes(save(src, fmt, transparency=clear))
    assert dec.alpha is not None and dec.pixels.shape == (30, 40, 3)
    assert np.array_equal(dec.alpha == 0, index == clear)
    assert np.all(dec.alpha[index != clear] == 255)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_decode_trns_key_colour_becomes_alpha(mode: str) -> None:
    src = gradient_image(40, 30, mode)
    key = np.asarray(src)[5, 7]
    key_param = int(key) if mode == "L" else tuple(int(v) for v in key)
    dec = decode_bytes(png_bytes(src, transparency=key_param))
    assert dec.alpha is not None and dec.gray == (mode == "L")
    hits = np.all(np.asarray(src).reshape(30, 40, -1) == np.asarray(key).reshape(1, 1, -1), axis=2)
    assert hits[5, 7] and np.array_equal(dec.alpha == 0, hits)


def test_decode_cmyk_jpeg_is_rgb_without_its_profile() -> None:
    cmyk = gradient_image(40, 30).convert("CMYK")
    data = save(cmyk, "JPEG", quality=95, icc_profile=fake_icc(b"CMYK"))
    dec = decode_bytes(data)
    assert dec.pixels.shape == (30, 40, 3) and dec.alpha is None and dec.icc_profile is None
    ref = np.asarray(decode_response(data).convert("RGB"))
    assert np.array_equal(dec.pixels, ref)


def test_decode_one_bit_is_gray() -> None:
    src = gradient_image(40, 30, "L").point(lambda v: 255 if v > 100 else 0).convert("1")
    dec = decode_bytes(png_bytes(src))
    assert dec.pixels.shape == (30, 40, 1) and dec.bit_depth == 8
    assert set(np.unique(dec.pixels)) == {0, 255}
    assert np.array_equal(dec.pixels[..., 0], np.asarray(src.convert("L")))


def test_decode_16bit_gray_png_stays_16bit() -> None:
    values = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 53).astype(np.uint16)
    data = png_bytes(Image.fromarray(values))
    assert data[24] == 16
    dec = decode_bytes(data)
    assert dec.bit_depth == 16 and dec.pixels.dtype == np.uint16 and dec.pixels.shape == (30, 40, 1)
    assert np.array_equal(dec.pixels[..., 0], values) and dec.alpha is None
    pil = dec.pil()
    assert pil is not None and pil.mode == "I;16"


def test_decode_16bit_gray_with_alpha_stays_gray_and_16bit() -> None:
    arr = random16(30, 40, 2)
    dec = decode_bytes(write_png16(arr))
    assert dec.bit_depth == 16 and dec.gray and dec.pil() is None
    assert np.array_equal(dec.pixels[..., 0], arr[..., 0])
    assert dec.alpha is not None and np.array_equal(dec.alpha, arr[..., 1])


def test_decode_16bit_gray_trns_key_becomes_alpha() -> None:
    arr = random16(30, 40, 1)
    key = int(arr[3, 4, 0])
    dec = decode_bytes(write_png16(arr, transparent=key))
    assert dec.bit_depth == 16 and dec.gray and dec.alpha is not None
    assert np.array_equal(dec.pixels, arr)
    assert np.array_equal(dec.alpha == 0, arr[..., 0] == key) and dec.alpha.max() == 65535


def test_decode_16bit_rgb_keeps_full_range_despite_sbit() -> None:
    # A 12-bit source stored in a 16-bit PNG with an sBIT chunk: samples are full-range 16-bit values.
    arr = np.full((6, 8, 3), 4095, np.uint16)
    arr[0, 0] = (0, 2048, 4095)
    buf = io.BytesIO()
    png.Writer(8, 6, greyscale=False, bitdepth=12).write_array(buf, arr.reshape(-1))
    assert b"sBIT" in png_chunk_types(buf.getvalue())
    dec = decode_bytes(buf.getvalue())
    assert dec.bit_depth == 16 and dec.pixels[1, 1].tolist() == [65535] * 3
    assert dec.pixels[0, 0].tolist() == [0, round(2048 * 65535 / 4095), 65535]


def test_decode_16bit_rgba_realworld_png(datasets: Path) -> None:
    data = (datasets / "realworld" / "tree_alpha_16bit.png").read_bytes()
    dec = decode_bytes(data)
    pil8 = np.asarray(decode_response(data))
    assert pil8.dtype == np.uint8 and pil8.shape[2] == 4
    assert dec.bit_depth == 16 and dec.pil() is None and dec.size == (342, 256)
    assert dec.pixels.dtype == np.uint16 and dec.pixels.shape == (256, 342, 3)
    assert dec.alpha is not None and dec.alpha.dtype == np.uint16
    assert np.abs((dec.pixels >> 8).astype(int) - pil8[..., :3]).max() <= 1
    assert np.abs((dec.alpha >> 8).astype(int) - pil8[..., 3]).max() <= 1
    assert (dec.pixels & 0xFF).any(), "the low byte carries real data"
    assert dec.icc_profile is not None and dec.icc_profile[16:20] == b"RGB "


def test_decode_realworld_modes(datasets: Path) -> None:
    real = datasets / "realworld"
    rgba = decode_bytes((real / "children-alpha.png").read_bytes())
    assert rgba.pixels.shape[2] == 3 and rgba.alpha is not None and rgba.alpha.min() < 255
    gray = decode_bytes((real / "00017_gray.png").read_bytes())
    assert gray.gray and gray.alpha is None and gray.bit_depth == 8
    jpeg = decode_bytes((real / "wolf_gray.jpg").read_bytes())
    assert jpeg.gray and jpeg.format == "JPEG" and jpeg.icc_profile is not None
    assert jpeg.icc_profile[16:20] == b"GRAY"
    bridge = decode_bytes((datasets / "Set14" / "bridge.png").read_bytes())
    assert bridge.gray


@pytest.mark.parametrize(
    "data",
    [
        png_bytes(gradient_image(64, 48))[:-200],
        png_bytes(gradient_image(64, 48))[:120],
        write_png16(random16(48, 64, 4))[:-300],
    ],
    ids=["png-tail-cut", "png-idat-cut", "png16-tail-cut"],
)
def test_decode_truncated_png_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_bytes(data)


def test_decode_corrupt_png16_pixel_data_is_invalid() -> None:
    data = bytearray(write_png16(random16(8, 8, 3)))
    data[-20] ^= 0xFF  # inside the IDAT payload: the deflate stream or its adler32 no longer holds
    with pytest.raises(InvalidImage):
        decode_bytes(bytes(data))


def test_decode_keeps_png_icc_and_text() -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in SD_TEXT.items():
        info.add_text(key, value)
    dec = decode_bytes(png_bytes(gradient_image(), pnginfo=info, icc_profile=SRGB))
    assert dec.icc_profile == SRGB
    assert dec.text == SD_TEXT


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_decode_applies_exif_orientation(orientation: int) -> None:
    data = with_orientation(gradient_image(40, 30), orientation)
    dec = decode_bytes(data)
    expected = np.asarray(ImageOps.exif_transpose(decode_response(data)))
    assert dec.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(dec.pixels, expected)
    assert dec.pil() is not None and np.array_equal(np.asarray(dec.pil()), expected)


@pytest.mark.parametrize("orientation", [3, 5, 6, 7, 8])
def test_decode_applies_exif_orientation_to_16bit_png(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    tiff = exif.tobytes().removeprefix(b"Exif\x00\x00")
    src = write_png16(random16(6, 9, 4, seed=orientation))
    data = src[:33] + chunk(b"eXIf", tiff) + src[33:]  # pypng writes no eXIf: splice one in after IHDR
    dec = decode_bytes(data)
    expected8 = np.asarray(ImageOps.exif_transpose(decode_response(data)))  # Pillow: the high bytes, oriented
    assert dec.alpha is not None and dec.size == (expected8.shape[1], expected8.shape[0])
    assert np.array_equal((dec.pixels >> 8).astype(np.uint8), expected8[..., :3])
    assert np.array_equal((dec.alpha >> 8).astype(np.uint8), expected8[..., 3])
    header = probe(data, LIMIT)
    assert (header.width, header.height) == dec.size


def test_decode_drops_xmp_orientation_it_applied() -> None:
    xmp = '<x:xmpmeta><rdf:Description tiff:Orientation="6" xmp:Rating="3"/></x:xmpmeta>'
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    dec = decode_bytes(png_bytes(gradient_image(40, 30), pnginfo=info))
    assert dec.size == (30, 40)
    assert "tiff:Orientation" not in dec.text["XML:com.adobe.xmp"]
    assert 'xmp:Rating="3"' in dec.text["XML:com.adobe.xmp"]
