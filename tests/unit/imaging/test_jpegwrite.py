"""JPEG output in strips: the strips joined with restart markers decode to the same pixels as the
image encoded in one piece, keep the ICC profile, and match Pillow's quality on a real photo."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.imaging import jpegwrite
from app.imaging.jpegwrite import write_jpeg
from scripts.quality import psnr
from tests.support.images import SRGB, fake_icc


def photo(datasets: Path, size: tuple[int, int] = (700, 530)) -> np.ndarray:
    img = Image.open(datasets / "Set14" / "baboon.png").convert("RGB")
    return np.asarray(img.resize(size, Image.Resampling.LANCZOS))


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture
def many_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jpegwrite, "MIN_STRIP_PIXELS", 1 << 12)
    monkeypatch.setattr(jpegwrite.os, "cpu_count", lambda: 20)  # more strips than RST0..7: they wrap


@pytest.mark.parametrize("planes", [1, 3])
def test_strips_decode_to_the_one_piece_pixels(datasets: Path, many_strips: None, planes: int) -> None:
    pixels = photo(datasets)[..., :planes]  # 530 rows: the last strip is not a whole MCU row
    strips = write_jpeg(pixels, 92, None)
    one = jpegwrite._encode(pixels, 92)
    assert strips.count(b"\xff\xdd") == 1 and strips.count(b"\xff\xd0") >= 2  # DRI, RST0 reused
    assert np.array_equal(decoded(strips), decoded(one))
    assert Image.open(io.BytesIO(strips)).size == (700, 530)


def test_a_small_image_is_one_piece_without_restarts(datasets: Path) -> None:
    data = write_jpeg(photo(datasets, (120, 90)), 95, None)
    assert b"\xff\xdd" not in data and decoded(data).shape == (90, 120, 3)


def test_quality_as_pillows_on_a_real_photo(datasets: Path) -> None:
    pixels = photo(datasets, (1024, 1024))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    ours = psnr(decoded(write_jpeg(pixels, 95, None)), pixels)
    assert ours >= psnr(decoded(buf.getvalue()), pixels) - 0.2


@pytest.mark.parametrize("icc", [SRGB, fake_icc(b"RGB ") * 3000])  # the second needs several APP2s
def test_icc_profile_is_read_back(datasets: Path, many_strips: None, icc: bytes) -> None:
    out = Image.open(io.BytesIO(write_jpeg(photo(datasets), 90, icc)))
    assert out.info["icc_profile"] == icc


def test_gray_profile_on_gray_pixels(datasets: Path) -> None:
    gray = fake_icc(b"GRAY")
    out = Image.open(io.BytesIO(write_jpeg(photo(datasets)[..., :1], 90, gray)))
    assert out.mode == "L" and out.info["icc_profile"] == gray
