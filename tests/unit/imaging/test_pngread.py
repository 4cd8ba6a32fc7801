"""PNG and JPEG uploads decoded straight into numpy (libpng through imagecodecs, libjpeg-turbo through
simplejpeg): the same pixels, alpha, profile and text as Pillow (and pypng for 16-bit) give, and the
same refusals."""

from __future__ import annotations

import io
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import png
import pytest
from imagecodecs import png_decode
from PIL import Image, ImageOps, PngImagePlugin

from app.errors import InvalidImage
from app.imaging import pngread
from app.imaging.decode import decode, probe
from app.imaging.pngwrite import chunk, write_png
from scripts.crafted import pixel_bomb, raw_png
from tests.support.images import (
    LIMIT,
    SD_TEXT,
    SRGB,
    decode_bytes,
    gradient_image,
    png_bytes,
    png_chunk_types,
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
    data[data.index(b"IDAT") + 20] ^= 0xFF  # inside the deflate stream: ISA-L refuses it
    with pytest.raises(InvalidImage, match="broken"):
        decode_bytes(bytes(data))
    jpeg = save(gradient_image(64, 48), "JPEG")
    with pytest.raises(InvalidImage, match="broken"):
        decode_bytes(jpeg[: len(jpeg) // 2])


def _scanlines(height: int, row: int, seed: int = 0) -> bytes:
    """`height` rows of `row` bytes after a filter byte, with every filter type (None..Paeth)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (height, 1 + row), np.uint8)
    rows[:, 0] = np.arange(height) % 5
    return rows.tobytes()


def test_real_photos_are_inflated_by_isal_and_unfiltered_as_libpng_does(datasets: Path) -> None:
    """The same pixels as libpng reading the upload itself: Pillow's adaptive filters, and the
    service's own PNGs (Up filters, several IDAT chunks joined by sync flushes)."""
    photo = np.asarray(Image.open(datasets / "Set14" / "lenna.png").convert("RGB"))
    big = np.ascontiguousarray(np.tile(photo, (3, 3, 1)))  # 1536², several deflate pieces per core
    uploads = [png_bytes(Image.fromarray(photo)), write_png(big, 1, None, {}), write_png(big, 6, None, {})]
    assert png_chunk_types(uploads[1]).count(b"IDAT") > 2
    for data in uploads:
        read = pngread.read(data)
        assert read is not None and np.array_equal(read[0], png_decode(data))


@pytest.mark.parametrize(
    ("width", "height", "color"),
    [(28, 771, 2), (255, 256, 0), (28, 1542, 2), (3, 1, 6)],  # 65535, 65536, 2 x 65535 and 13 bytes
)
def test_every_filter_reads_as_libpng_reads_it_across_stored_block_edges(
    width: int, height: int, color: int
) -> None:
    planes = {0: 1, 2: 3, 6: 4}[color]
    data = raw_png(width, height, zlib.compress(_scanlines(height, width * planes)), color=color)
    read = pngread.read(data)
    expected = png_decode(data)
    assert read is not None and np.array_equal(read[0].reshape(expected.shape), expected)


def _traced_peak(work: Callable[[], object]) -> int:
    """The peak of Python's allocations (bytes objects included) while `work` runs."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_pixel_data_past_the_image_is_ignored_without_inflating_it() -> None:
    """libpng inflated every byte of such a stream (5 s for 2 GiB of zeros); the inflate stops one
    byte past the image, so 64 MiB of zeros in a 16x12 upload never reach memory, and the image
    reads as Pillow reads it."""
    data = pixel_bomb(64)
    assert _traced_peak(lambda: decode_bytes(data)) < 4 << 20
    assert np.array_equal(decode_bytes(data).pixels, np.asarray(Image.open(io.BytesIO(data))))


def test_pypng_is_not_given_pixel_data_past_the_image() -> None:
    """A 16-bit PNG with a tRNS key goes to pypng, which inflated each IDAT chunk whole into memory
    (7.8 GB for a 1 MB upload): the stream is inflated first, within the header's size, and refused
    when it holds more, as pypng refuses it."""
    data = pixel_bomb(64, depth=16)

    def refused() -> None:
        with pytest.raises(InvalidImage, match="more pixel data"):
            decode_bytes(data)

    assert _traced_peak(refused) < 4 << 20


@pytest.mark.parametrize(("width", "height"), [(1, 1), (3, 5), (9, 17), (33, 7), (8, 8)])
def test_interlaced_16bit_pngs_read_through_pypng_at_every_pass_shape(width: int, height: int) -> None:
    """The size the stream is checked against counts Adam7's passes (some empty at these sizes)."""
    arr = random16(height, width, 3, seed=width)
    buf = io.BytesIO()
    png.Writer(width, height, greyscale=False, bitdepth=16, interlace=True).write_array(buf, arr.reshape(-1))
    dec = decode_bytes(buf.getvalue())
    assert dec.bit_depth == 16 and np.array_equal(dec.pixels, arr)


@pytest.mark.parametrize("damage", ["adler32", "no adler32", "short", "not zlib"])
def test_a_broken_pixel_stream_is_invalid(damage: str) -> None:
    rows = _scanlines(16, 48)
    stream = zlib.compress(rows)
    broken = {
        "adler32": stream[:-1] + bytes([stream[-1] ^ 1]),
        "no adler32": stream[:-4],
        "short": zlib.compress(rows[:-10]),
        "not zlib": b"\x78\x01" + bytes(range(7, 200)),
    }[damage]
    with pytest.raises(InvalidImage, match="broken"):
        decode_bytes(raw_png(16, 16, broken))
    intact = raw_png(16, 16, stream)
    assert np.array_equal(decode_bytes(intact).pixels, png_decode(intact))


def test_an_idat_crc_alone_is_not_checked_as_pillow_does_not_check_it() -> None:
    data = bytearray(png_bytes(gradient_image(64, 48)))
    at = data.index(b"IDAT")
    data[at + 4 + int.from_bytes(data[at - 4 : at], "big")] ^= 0xFF  # the CRC's first byte
    dec = decode_bytes(bytes(data))
    assert np.array_equal(dec.pixels, np.asarray(Image.open(io.BytesIO(bytes(data)))))


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
