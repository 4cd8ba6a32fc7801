"""app.imaging: header-only limits, decoding every mode, EXIF orientation, metadata and bit depth kept
from input to output, and the same promises checked end to end through POST /upscale."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import png
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageCms, ImageFile, ImageOps, PngImagePlugin

from app import imaging
from app.errors import ImageTooLarge, InvalidImage, InvalidParameter, UnsupportedMediaType
from tests.conftest import decode_response, gradient_image, png_bytes

LIMIT = 16_777_216
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
JAPANESE = "桜の木の下で猫が眠る, masterpiece, best quality"
SD_TEXT = {
    "parameters": "a cat under a cherry tree\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42",
    "prompt": '{"3": {"class_type": "KSampler", "inputs": {"text": "' + JAPANESE + '"}}}',
    "workflow": '{"nodes": [' + ",".join(f'{{"id": {i}, "title": "ノード {i}"}}' for i in range(200)) + "]}",
}


# -- helpers ---------------------------------------------------------------------------------------
def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def crafted_png(w: int, h: int) -> bytes:
    """A valid-looking 8-bit RGB PNG whose IHDR claims w x h, with a token IDAT far too short for it."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_chunk_types(data: bytes) -> list[bytes]:
    return [kind for kind, _ in png.Reader(bytes=data).chunks()]


def save(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def write_png16(arr: np.ndarray, **params: object) -> bytes:
    """A 16-bit PNG written by pypng from a uint16 (H, W, C) array; C = 1..4 picks gray/alpha/colour."""
    h, w, c = arr.shape
    buf = io.BytesIO()
    writer = png.Writer(w, h, greyscale=c <= 2, alpha=c in (2, 4), bitdepth=16, **params)
    writer.write_array(buf, arr.reshape(-1))
    return buf.getvalue()


def read_png16(data: bytes) -> tuple[np.ndarray, dict]:
    w, h, rows, info = png.Reader(bytes=data).asDirect()
    return np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, info["planes"]), info


def fake_icc(space: bytes) -> bytes:
    """A profile-shaped blob: only the header's colour-space field (bytes 16..20) matters here."""
    blob = bytearray(132)
    blob[16:20] = space
    blob[36:40] = b"acsp"
    return bytes(blob)


def random16(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (h, w, c), dtype=np.uint16)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def with_orientation(img: Image.Image, orientation: int) -> bytes:
    """A JPEG whose EXIF says how to turn the stored pixels for display."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(img, "JPEG", quality=95, exif=exif.tobytes())


def encode(picture: Image.Image | np.ndarray, fmt: str = "PNG", **kw: object) -> bytes:
    args: dict = {"quality": None, "png_level": 1, "icc_profile": None, "text": {}, **kw}
    return imaging.encode(picture, fmt, **args)


# -- probe -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_probe_reads_format_and_size(fmt: str) -> None:
    header = imaging.probe(save(gradient_image(40, 30), fmt), LIMIT)
    assert header == imaging.Header(fmt, 40, 30)


def test_probe_refuses_huge_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pixels(self: ImageFile.ImageFile) -> None:
        raise AssertionError("probe decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    # Far beyond Pillow's own bomb limit, and just beyond ours: both are refused from the IHDR alone.
    for w, h in ((60000, 60000), (5000, 4000)):
        with pytest.raises(ImageTooLarge, match=r"too large|limit"):
            imaging.probe(crafted_png(w, h), LIMIT)
    # At the limit the header passes (its token IDAT would only fail later, when decoded).
    assert imaging.probe(crafted_png(4096, 4096), LIMIT) == imaging.Header("PNG", 4096, 4096)


def test_probe_refuses_huge_header_before_its_broken_pixels() -> None:
    # Decoding the token IDAT would be InvalidImage; the size is what the client must hear about.
    with pytest.raises(ImageTooLarge):
        imaging.decode(crafted_png(60000, 60000), LIMIT)
    with pytest.raises(InvalidImage):
        imaging.decode(crafted_png(64, 64), LIMIT)


@pytest.mark.parametrize(
    "data",
    [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"\xff\xd8\xff" + bytes(range(256)), b""],
    ids=["text", "png-signature-only", "jpeg-marker-only", "empty"],
)
def test_probe_refuses_unreadable_bytes(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        imaging.probe(data, LIMIT)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA"])
def test_probe_refuses_formats_outside_the_contract(fmt: str) -> None:
    data = save(gradient_image(16, 16), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow reads it; the service must not
    with pytest.raises(UnsupportedMediaType, match=fmt):
        imaging.probe(data, LIMIT)


def test_probe_takes_a_camera_mpo_for_a_jpeg() -> None:
    data = save(gradient_image(40, 30), "MPO", save_all=True, append_images=[gradient_image(40, 30)])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert imaging.probe(data, LIMIT) == imaging.Header("JPEG", 40, 30)
    assert imaging.decode(data, LIMIT).format == "JPEG"
    assert imaging.output_format(None, "JPEG") == "JPEG"


@pytest.mark.parametrize(
    ("orientation", "size"), [(1, (40, 30)), (3, (40, 30)), (6, (30, 40)), (8, (30, 40))]
)
def test_probe_size_is_after_exif_orientation(orientation: int, size: tuple[int, int]) -> None:
    header = imaging.probe(with_orientation(gradient_image(40, 30), orientation), LIMIT)
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
    dec = imaging.decode(png_bytes(src), LIMIT)
    assert dec.pixels.shape == (30, 40, channels) and dec.pixels.dtype == np.uint8
    assert (dec.bit_depth, dec.format, dec.gray, dec.size) == (8, "PNG", channels == 1, (40, 30))
    assert dec.image is not None and dec.image.mode == mode
    ref = np.asarray(src).reshape(30, 40, -1)
    assert np.array_equal(dec.pixels, ref[..., :channels])
    if has_alpha:
        assert dec.alpha is not None and np.array_equal(dec.alpha, ref[..., -1])
    else:
        assert dec.alpha is None


def test_decode_palette_without_transparency_is_rgb() -> None:
    src = gradient_image(40, 30).quantize(16)
    dec = imaging.decode(png_bytes(src), LIMIT)
    assert dec.alpha is None and dec.pixels.shape == (30, 40, 3)
    assert np.array_equal(dec.pixels, np.asarray(src.convert("RGB")))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_decode_palette_with_transparency_is_rgba(fmt: str) -> None:
    src = gradient_image(40, 30).quantize(16)
    index = np.asarray(src)
    clear = int(index[0, 0])
    dec = imaging.decode(save(src, fmt, transparency=clear), LIMIT)
    assert dec.alpha is not None and dec.pixels.shape == (30, 40, 3)
    assert np.array_equal(dec.alpha == 0, index == clear)
    assert np.all(dec.alpha[index != clear] == 255)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_decode_trns_key_colour_becomes_alpha(mode: str) -> None:
    src = gradient_image(40, 30, mode)
    key = np.asarray(src)[5, 7]
    key_param = int(key) if mode == "L" else tuple(int(v) for v in key)
    dec = imaging.decode(png_bytes(src, transparency=key_param), LIMIT)
    assert dec.alpha is not None and dec.gray == (mode == "L")
    hits = np.all(np.asarray(src).reshape(30, 40, -1) == np.asarray(key).reshape(1, 1, -1), axis=2)
    assert hits[5, 7] and np.array_equal(dec.alpha == 0, hits)


def test_decode_cmyk_jpeg_is_rgb_without_its_profile() -> None:
    cmyk = gradient_image(40, 30).convert("CMYK")
    data = save(cmyk, "JPEG", quality=95, icc_profile=fake_icc(b"CMYK"))
    dec = imaging.decode(data, LIMIT)
    assert dec.pixels.shape == (30, 40, 3) and dec.alpha is None and dec.icc_profile is None
    ref = np.asarray(decode_response(data).convert("RGB"))
    assert np.array_equal(dec.pixels, ref)


def test_decode_one_bit_is_gray() -> None:
    src = gradient_image(40, 30, "L").point(lambda v: 255 if v > 100 else 0).convert("1")
    dec = imaging.decode(png_bytes(src), LIMIT)
    assert dec.pixels.shape == (30, 40, 1) and dec.bit_depth == 8
    assert set(np.unique(dec.pixels)) == {0, 255}
    assert np.array_equal(dec.pixels[..., 0], np.asarray(src.convert("L")))


def test_decode_16bit_gray_png_stays_16bit() -> None:
    values = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 53).astype(np.uint16)
    data = png_bytes(Image.fromarray(values))
    assert data[24] == 16
    dec = imaging.decode(data, LIMIT)
    assert dec.bit_depth == 16 and dec.pixels.dtype == np.uint16 and dec.pixels.shape == (30, 40, 1)
    assert np.array_equal(dec.pixels[..., 0], values) and dec.alpha is None
    assert dec.image is not None and dec.image.mode == "I;16"


def test_decode_16bit_gray_with_alpha_stays_gray_and_16bit() -> None:
    arr = random16(30, 40, 2)
    dec = imaging.decode(write_png16(arr), LIMIT)
    assert dec.bit_depth == 16 and dec.gray and dec.image is None
    assert np.array_equal(dec.pixels[..., 0], arr[..., 0])
    assert dec.alpha is not None and np.array_equal(dec.alpha, arr[..., 1])


def test_decode_16bit_gray_trns_key_becomes_alpha() -> None:
    arr = random16(30, 40, 1)
    key = int(arr[3, 4, 0])
    dec = imaging.decode(write_png16(arr, transparent=key), LIMIT)
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
    dec = imaging.decode(buf.getvalue(), LIMIT)
    assert dec.bit_depth == 16 and dec.pixels[1, 1].tolist() == [65535] * 3
    assert dec.pixels[0, 0].tolist() == [0, round(2048 * 65535 / 4095), 65535]


def test_decode_16bit_rgba_realworld_png(datasets: Path) -> None:
    data = (datasets / "realworld" / "tree_alpha_16bit.png").read_bytes()
    dec = imaging.decode(data, LIMIT)
    pil8 = np.asarray(decode_response(data))
    assert pil8.dtype == np.uint8 and pil8.shape[2] == 4
    assert dec.bit_depth == 16 and dec.image is None and dec.size == (342, 256)
    assert dec.pixels.dtype == np.uint16 and dec.pixels.shape == (256, 342, 3)
    assert dec.alpha is not None and dec.alpha.dtype == np.uint16
    assert np.abs((dec.pixels >> 8).astype(int) - pil8[..., :3]).max() <= 1
    assert np.abs((dec.alpha >> 8).astype(int) - pil8[..., 3]).max() <= 1
    assert (dec.pixels & 0xFF).any(), "the low byte carries real data"
    assert dec.icc_profile is not None and dec.icc_profile[16:20] == b"RGB "


def test_decode_realworld_modes(datasets: Path) -> None:
    real = datasets / "realworld"
    rgba = imaging.decode((real / "children-alpha.png").read_bytes(), LIMIT)
    assert rgba.pixels.shape[2] == 3 and rgba.alpha is not None and rgba.alpha.min() < 255
    gray = imaging.decode((real / "00017_gray.png").read_bytes(), LIMIT)
    assert gray.gray and gray.alpha is None and gray.bit_depth == 8
    jpeg = imaging.decode((real / "wolf_gray.jpg").read_bytes(), LIMIT)
    assert jpeg.gray and jpeg.format == "JPEG" and jpeg.icc_profile is not None
    assert jpeg.icc_profile[16:20] == b"GRAY"
    bridge = imaging.decode((datasets / "Set14" / "bridge.png").read_bytes(), LIMIT)
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
        imaging.decode(data, LIMIT)


def test_decode_corrupt_png16_crc_is_invalid() -> None:
    data = bytearray(write_png16(random16(8, 8, 3)))
    data[-20] ^= 0xFF  # inside the IDAT payload: its CRC no longer matches
    with pytest.raises(InvalidImage):
        imaging.decode(bytes(data), LIMIT)


def test_decode_keeps_png_icc_and_text() -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in SD_TEXT.items():
        info.add_text(key, value)
    dec = imaging.decode(png_bytes(gradient_image(), pnginfo=info, icc_profile=SRGB), LIMIT)
    assert dec.icc_profile == SRGB
    assert dec.text == SD_TEXT


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_decode_applies_exif_orientation(orientation: int) -> None:
    data = with_orientation(gradient_image(40, 30), orientation)
    dec = imaging.decode(data, LIMIT)
    expected = np.asarray(ImageOps.exif_transpose(decode_response(data)))
    assert dec.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(dec.pixels, expected)
    assert dec.image is not None and np.array_equal(np.asarray(dec.image), expected)


@pytest.mark.parametrize("orientation", [3, 5, 6, 7, 8])
def test_decode_applies_exif_orientation_to_16bit_png(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    tiff = exif.tobytes().removeprefix(b"Exif\x00\x00")
    src = write_png16(random16(6, 9, 4, seed=orientation))
    data = src[:33] + chunk(b"eXIf", tiff) + src[33:]  # pypng writes no eXIf: splice one in after IHDR
    dec = imaging.decode(data, LIMIT)
    expected8 = np.asarray(ImageOps.exif_transpose(decode_response(data)))  # Pillow: the high bytes, oriented
    assert dec.alpha is not None and dec.size == (expected8.shape[1], expected8.shape[0])
    assert np.array_equal((dec.pixels >> 8).astype(np.uint8), expected8[..., :3])
    assert np.array_equal((dec.alpha >> 8).astype(np.uint8), expected8[..., 3])
    header = imaging.probe(data, LIMIT)
    assert (header.width, header.height) == dec.size


def test_decode_drops_xmp_orientation_it_applied() -> None:
    xmp = '<x:xmpmeta><rdf:Description tiff:Orientation="6" xmp:Rating="3"/></x:xmpmeta>'
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    dec = imaging.decode(png_bytes(gradient_image(40, 30), pnginfo=info), LIMIT)
    assert dec.size == (30, 40)
    assert "tiff:Orientation" not in dec.text["XML:com.adobe.xmp"]
    assert 'xmp:Rating="3"' in dec.text["XML:com.adobe.xmp"]


# -- quantize / compose / to_unit_float ------------------------------------------------------------
@pytest.mark.parametrize(("bits", "peak", "dtype"), [(8, 255, np.uint8), (16, 65535, np.uint16)])
def test_quantize_clips_and_rounds(bits: int, peak: int, dtype: type) -> None:
    x = np.array([-3.0, -0.001, 0.0, 1.0, 1.001, 7.0], np.float32)
    q = imaging.quantize(x, bits)
    assert q.dtype == dtype and q.tolist() == [0, 0, 0, peak, peak, peak]
    k = np.arange(peak, dtype=np.float64)
    assert np.array_equal(imaging.quantize((k + 0.45) / peak, bits), k.astype(dtype))
    assert np.array_equal(imaging.quantize((k + 0.55) / peak, bits), (k + 1).astype(dtype))


@pytest.mark.parametrize(("dtype", "peak"), [(np.uint8, 255), (np.uint16, 65535)])
def test_quantize_inverts_to_unit_float_exactly(dtype: type, peak: int) -> None:
    every: np.ndarray = np.arange(peak + 1).astype(dtype)
    unit = imaging.to_unit_float(every)
    assert unit.dtype == np.float32 and unit.min() == 0.0 and unit.max() == 1.0
    assert np.array_equal(imaging.quantize(unit, 16 if peak > 255 else 8), every)


def test_quantize_survives_float16_and_nan() -> None:
    assert imaging.quantize(np.ones(3, np.float16), 16).tolist() == [65535] * 3
    assert imaging.quantize(np.array([np.nan, np.inf, -np.inf, 0.5]), 8).tolist() == [0, 255, 0, 128]


@pytest.mark.parametrize(
    ("channels", "alpha", "bits", "expected"),
    [
        (1, False, 8, "L"),
        (1, True, 8, "LA"),
        (3, False, 8, "RGB"),
        (3, True, 8, "RGBA"),
        (1, False, 16, "I;16"),
        (1, True, 16, (2,)),
        (3, False, 16, (3,)),
        (3, True, 16, (4,)),
    ],
)
def test_compose_builds_the_right_picture(channels: int, alpha: bool, bits: int, expected: object) -> None:
    rng = np.random.default_rng(1)
    color = rng.uniform(-0.2, 1.2, (5, 7, channels)).astype(np.float32)
    a = rng.uniform(-0.2, 1.2, (5, 7)).astype(np.float32) if alpha else None
    picture = imaging.compose(color, a, bits)
    peak = 65535 if bits == 16 else 255
    if isinstance(expected, str):
        assert isinstance(picture, Image.Image) and picture.mode == expected and picture.size == (7, 5)
        values = np.asarray(picture).reshape(5, 7, -1)
    else:
        assert isinstance(picture, np.ndarray) and picture.dtype == np.uint16
        assert picture.shape == (5, 7, *expected)  # type: ignore[misc]
        values = picture
    assert np.array_equal(values[..., :channels], np.round(np.clip(color, 0, 1) * peak))
    if a is not None:
        assert np.array_equal(values[..., -1], np.round(np.clip(a, 0, 1) * peak))


# -- resize_array ----------------------------------------------------------------------------------
def test_resize_array_size_and_dtype() -> None:
    rgb = np.random.default_rng(0).random((30, 40, 3), dtype=np.float32)
    out = imaging.resize_array(rgb, (100, 70))
    assert out.shape == (70, 100, 3) and out.dtype == np.float32
    plane = imaging.resize_array(rgb[..., 0], (100, 70))
    assert plane.shape == (70, 100) and plane.dtype == np.float32
    assert np.allclose(plane, out[..., 0])


def test_resize_array_keeps_a_constant_constant() -> None:
    flat = np.full((17, 23, 3), 0.3125, np.float32)
    for size in ((46, 34), (11, 9), (69, 17)):
        assert np.allclose(imaging.resize_array(flat, size), 0.3125, atol=1e-5)


def test_resize_array_matches_pillow_lanczos() -> None:
    src = gradient_image(40, 30, "L")
    ours = imaging.resize_array(imaging.to_unit_float(np.asarray(src)), (80, 60))
    theirs = np.asarray(src.resize((80, 60), Image.Resampling.LANCZOS)).astype(np.float32) / 255
    assert np.abs(ours.clip(0, 1) - theirs).max() <= 1.5 / 255


# -- output_format ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "expected"),
    [("PNG", "PNG"), ("JPEG", "JPEG"), ("WEBP", "WEBP"), ("BMP", "PNG"), ("TIFF", "PNG"), ("GIF", "PNG")],
)
def test_output_format_defaults_to_the_input(source: str, expected: str) -> None:
    assert imaging.output_format(None, source) == expected
    assert imaging.output_format("", source) == expected


@pytest.mark.parametrize(
    ("requested", "expected"), [("png", "PNG"), ("JPEG", "JPEG"), ("jpg", "JPEG"), ("WebP", "WEBP")]
)
def test_output_format_honours_the_request(requested: str, expected: str) -> None:
    assert imaging.output_format(requested, "GIF") == expected


@pytest.mark.parametrize("requested", ["gif", "bmp", "tiff", "exr", "png8"])
def test_output_format_refuses_unknown_names(requested: str) -> None:
    with pytest.raises(InvalidParameter, match=requested):
        imaging.output_format(requested, "PNG")


# -- encode ----------------------------------------------------------------------------------------
def test_encode_png_keeps_icc_and_text() -> None:
    out = decode_response(encode(gradient_image(), icc_profile=SRGB, text=SD_TEXT))
    assert out.format == "PNG" and out.info["icc_profile"] == SRGB
    assert out.text == SD_TEXT  # type: ignore[attr-defined]


def test_encode_png_16bit_gray_stays_i16() -> None:
    values = random16(30, 40, 1)[..., 0]
    picture = imaging.compose(imaging.to_unit_float(values)[..., None], None, 16)
    data = encode(picture)
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
    assert kinds.count(b"iCCP") == 1 and kinds.count(b"iTXt") == len(SD_TEXT)
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
    # The colour is what it was, alpha simply left out (no matte): as Pillow writes the alpha-less picture.
    ref = decode_response(save(src.convert(expected), "JPEG", quality=95))
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


# -- through POST /upscale -------------------------------------------------------------------------
def post(client: TestClient, data: bytes, name: str = "x.png", mime: str = "image/png") -> Any:
    resp = client.post("/upscale", files={"image": (name, data, mime)}, data={"scale": "2"})
    assert resp.status_code == 200, resp.text
    return resp


def crop(data: bytes, box: tuple[int, int, int, int]) -> Image.Image:
    return decode_response(data).crop(box)


def test_upscale_rgba_keeps_alpha(client: TestClient, datasets: Path) -> None:
    src = crop((datasets / "realworld" / "children-alpha.png").read_bytes(), (200, 60, 296, 124))
    alpha_in = src.getchannel("A")
    assert np.ptp(np.asarray(alpha_in)) > 100, "the crop must hold an alpha edge"
    resp = post(client, png_bytes(src))
    out = decode_response(resp.content)
    assert resp.headers["x-upscaler"] == "tiny-x2" and out.mode == "RGBA" and out.size == (192, 128)
    ref = np.asarray(alpha_in.resize((192, 128), Image.Resampling.LANCZOS))
    assert psnr(np.asarray(out.getchannel("A")), ref) > 30


def test_upscale_gray_stays_gray(client: TestClient, datasets: Path) -> None:
    png_gray = png_bytes(crop((datasets / "realworld" / "00017_gray.png").read_bytes(), (100, 100, 164, 164)))
    out = decode_response(post(client, png_gray).content)
    assert out.mode == "L" and out.size == (128, 128)
    jpeg = crop((datasets / "realworld" / "wolf_gray.jpg").read_bytes(), (60, 60, 124, 124))
    icc = decode_response((datasets / "realworld" / "wolf_gray.jpg").read_bytes()).info["icc_profile"]
    resp = post(client, save(jpeg, "JPEG", quality=95, icc_profile=icc), "x.jpg", "image/jpeg")
    out = decode_response(resp.content)
    assert resp.headers["content-type"] == "image/jpeg" and out.format == "JPEG"
    assert out.mode == "L" and out.info["icc_profile"] == icc


def test_upscale_16bit_rgba_png_stays_16bit(client: TestClient, datasets: Path) -> None:
    full, _ = read_png16((datasets / "realworld" / "tree_alpha_16bit.png").read_bytes())
    part = np.ascontiguousarray(full[100:148, 150:214])
    resp = post(client, write_png16(part))
    back, info = read_png16(resp.content)
    assert info["bitdepth"] == 16 and info["alpha"] and not info["greyscale"]
    assert back.shape == (96, 128, 4)
    ref = np.asarray(
        Image.fromarray((part[..., 3] >> 8).astype(np.uint8)).resize((128, 96), Image.Resampling.LANCZOS)
    )
    assert psnr((back[..., 3] >> 8).astype(np.uint8), ref) > 30


def test_upscale_png_keeps_text_and_icc(client: TestClient, datasets: Path) -> None:
    src = crop((datasets / "Set5" / "baby.png").read_bytes(), (200, 200, 264, 248))
    info = PngImagePlugin.PngInfo()
    for key, value in SD_TEXT.items():
        info.add_text(key, value)
    out = decode_response(post(client, png_bytes(src, pnginfo=info, icc_profile=SRGB)).content)
    assert out.format == "PNG" and out.size == (128, 96)
    assert out.text == SD_TEXT and out.info["icc_profile"] == SRGB  # type: ignore[attr-defined]


def test_upscale_jpeg_in_jpeg_out_with_orientation(client: TestClient, datasets: Path) -> None:
    src = crop((datasets / "realworld" / "0014.jpg").read_bytes(), (0, 0, 48, 32))
    resp = post(client, with_orientation(src, 6), "x.jpg", "image/jpeg")
    out = decode_response(resp.content)
    assert resp.headers["content-type"] == "image/jpeg" and out.format == "JPEG"
    assert resp.headers["x-input-size"] == "32x48" and out.size == (64, 96)
    assert out.getexif().get(0x0112, 1) == 1
