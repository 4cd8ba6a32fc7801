"""PNG and JPEG uploads decoded straight into numpy (libpng through imagecodecs, libjpeg-turbo through
simplejpeg): the same pixels, alpha, profile and text as Pillow (and pypng for 16-bit) give, and the
same refusals."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from app.errors import InvalidImage
from app.imaging import pngread
from app.imaging.decode import decode, probe
from tests.support.images import (
    LIMIT,
    SD_TEXT,
    SRGB,
    chunk,
    decode_bytes,
    gradient_image,
    png_bytes,
    random16,
    read_png16,
    save,
    write_png16,
)


def pillow_reference(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) samples and alpha as Pillow decodes them, oriented; pypng for 16-bit colour."""
    if data[:4] == b"\x89PNG" and data[24] == 16 and data[25] != 0:
        arr, _ = read_png16(data)
    else:
        arr = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
        arr = arr[..., None] if arr.ndim == 2 else arr
    if arr.shape[2] in (2, 4):
        return arr[..., :-1], arr[..., -1]
    return arr, None


def assert_same(data: bytes) -> None:
    dec = decode_bytes(data)
    assert dec.image is None, "decoded straight into numpy, not through Pillow"
    pixels, alpha = pillow_reference(data)
    assert dec.pixels.dtype == pixels.dtype and np.array_equal(dec.pixels, pixels)
    assert (dec.alpha is None) == (alpha is None)
    if alpha is not None:
        assert dec.alpha is not None and np.array_equal(dec.alpha, alpha)


def test_real_photos_decode_as_pillow_decodes_them(datasets: Path) -> None:
    pngs = sorted((datasets / "Set14").glob("*.png")) + sorted((datasets / "realworld").glob("*.png"))
    assert len(pngs) >= 16
    for path in pngs:
        assert_same(path.read_bytes())
    for path in sorted((datasets / "realworld").glob("*.jpg")):
        data = path.read_bytes()
        if Image.open(io.BytesIO(data)).mode in ("RGB", "L"):
            assert_same(data)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_8bit_modes_and_jpegs_match_pillow(mode: str) -> None:
    img = gradient_image(61, 37).convert(mode)
    assert_same(png_bytes(img))
    if mode in ("L", "RGB"):
        assert_same(save(img, "JPEG", quality=90))
        assert_same(save(img, "JPEG", quality=75, progressive=True, subsampling=2))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_matches_pypng(channels: int) -> None:
    arr = random16(23, 41, channels, seed=channels)
    dec = decode_bytes(write_png16(arr))
    color = arr[..., : 1 if channels <= 2 else 3]
    assert dec.bit_depth == 16 and np.array_equal(dec.pixels, color)
    assert (dec.alpha is None) == (channels in (1, 3))
    if channels in (2, 4):
        assert dec.alpha is not None and np.array_equal(dec.alpha, arr[..., -1])


def test_text_before_and_after_the_pixels_is_kept_as_pillow_reads_it() -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in SD_TEXT.items():
        info.add_text(key, value, zip=key == "workflow")
    data = png_bytes(gradient_image(), pnginfo=info, icc_profile=SRGB)
    iend = data.rindex(b"IEND") - 4
    late = chunk(b"iTXt", b"late\x00\x01\x00en\x00\x00" + zlib.compress("桜, spät".encode()))
    data = data[:iend] + late + chunk(b"tEXt", b"parameters\x00overridden") + data[iend:]
    dec = decode_bytes(data)
    assert dec.image is None and dec.icc_profile == SRGB
    expected = Image.open(io.BytesIO(data)).text  # type: ignore[attr-defined]
    assert dec.text == {k: str(v) for k, v in expected.items()}
    assert dec.text["late"] == "桜, spät" and dec.text["parameters"] == "overridden"


def test_a_text_bomb_after_the_pixels_is_refused_as_pillow_refuses_it() -> None:
    data = png_bytes(gradient_image(16, 12))
    iend = data.rindex(b"IEND") - 4
    bomb = chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(b"a" * (PngImagePlugin.MAX_TEXT_CHUNK + 1)))
    with pytest.raises(InvalidImage, match="too large"):
        decode_bytes(data[:iend] + bomb + data[iend:])


def test_broken_text_chunks_after_the_pixels_are_read_as_pillow_reads_them() -> None:
    data = png_bytes(gradient_image(16, 12))
    iend = data.rindex(b"IEND") - 4
    not_zlib = data[:iend] + chunk(b"zTXt", b"k\x00\x00not zlib at all") + data[iend:]
    assert decode_bytes(not_zlib).text == {"k": ""} == Image.open(io.BytesIO(not_zlib)).text  # type: ignore[attr-defined]
    bad_method = data[:iend] + chunk(b"zTXt", b"k\x00\x07" + zlib.compress(b"v")) + data[iend:]
    with pytest.raises(InvalidImage, match="compression method"):
        decode_bytes(bad_method)


def test_corrupt_pixel_data_is_invalid() -> None:
    data = bytearray(png_bytes(gradient_image(64, 48)))
    data[data.index(b"IDAT") + 20] ^= 0xFF  # its CRC no longer matches: the chunk reaches libpng as sent
    with pytest.raises(InvalidImage, match="broken"):
        decode_bytes(bytes(data))
    jpeg = save(gradient_image(64, 48), "JPEG")
    with pytest.raises(InvalidImage, match="broken"):
        decode_bytes(jpeg[: len(jpeg) // 2])


def test_a_chunk_running_past_the_end_is_invalid() -> None:
    data = png_bytes(gradient_image(64, 48))
    cut = data[: data.rindex(b"IEND") - 4] + chunk(b"tEXt", b"k\x00" + b"v" * 100)[:-50]
    with pytest.raises(InvalidImage, match="past the end"):
        decode_bytes(cut)


def test_what_libpng_is_not_given_stays_on_pillow() -> None:
    rgb = gradient_image(20, 10)
    palette = png_bytes(rgb.convert("P"))
    one_bit = png_bytes(rgb.convert("1"))
    interlaced = _interlaced(np.asarray(rgb))
    for data in (palette, one_bit, interlaced):
        assert not pngread.eligible(data)
        dec = decode(probe(data, LIMIT))
        assert dec.image is not None  # Pillow's path
    keyed = png_bytes(rgb, transparency=(0, 0, 0))
    assert pngread.eligible(keyed) and pngread.read(keyed) is None  # tRNS: Pillow's alpha semantics
    assert decode_bytes(keyed).alpha is not None
    assert np.array_equal(decode_bytes(interlaced).pixels, np.asarray(rgb))


def _interlaced(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    h, w, _ = arr.shape
    png.Writer(w, h, greyscale=False, interlace=True).write_array(buf, arr.reshape(-1))
    return buf.getvalue()


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_lanczos_gets_a_pillow_image_made_on_demand(bit_depth: int) -> None:
    gray = np.asarray(gradient_image(30, 20).convert("L"))
    if bit_depth == 8:
        data = png_bytes(Image.fromarray(gray))
    else:
        data = write_png16(gray[..., None].astype(np.uint16) * 257)
    dec = decode_bytes(data)
    img = dec.pil()
    assert img is not None and img.mode == ("L" if bit_depth == 8 else "I;16")
    assert np.array_equal(np.asarray(img), dec.pixels[..., 0])
    assert decode_bytes(write_png16(random16(4, 5, 3))).pil() is None  # 16-bit colour: Pillow cannot hold it
