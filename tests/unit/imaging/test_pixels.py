"""Pixel maths: quantising, the output Picture, LANCZOS resizing of float arrays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.imaging.pixels import Picture, compose, quantize, resize_array, to_unit_float
from tests.support.images import gradient_image


# -- quantize / compose / to_unit_float ------------------------------------------------------------
@pytest.mark.parametrize(("bits", "peak", "dtype"), [(8, 255, np.uint8), (16, 65535, np.uint16)])
def test_quantize_clips_and_rounds(bits: int, peak: int, dtype: type) -> None:
    x = np.array([-3.0, -0.001, 0.0, 1.0, 1.001, 7.0], np.float32)
    q = quantize(x, bits)
    assert q.dtype == dtype and q.tolist() == [0, 0, 0, peak, peak, peak]
    k = np.arange(peak, dtype=np.float64)
    assert np.array_equal(quantize((k + 0.45) / peak, bits), k.astype(dtype))
    assert np.array_equal(quantize((k + 0.55) / peak, bits), (k + 1).astype(dtype))


@pytest.mark.parametrize(("dtype", "peak"), [(np.uint8, 255), (np.uint16, 65535)])
def test_quantize_inverts_to_unit_float_exactly(dtype: type, peak: int) -> None:
    every: np.ndarray = np.arange(peak + 1).astype(dtype)
    unit = to_unit_float(every)
    assert unit.dtype == np.float32 and unit.min() == 0.0 and unit.max() == 1.0
    assert np.array_equal(quantize(unit, 16 if peak > 255 else 8), every)


def test_quantize_survives_float16_and_nan() -> None:
    assert quantize(np.ones(3, np.float16), 16).tolist() == [65535] * 3
    assert quantize(np.array([np.nan, np.inf, -np.inf, 0.5]), 8).tolist() == [0, 255, 0, 128]


@pytest.mark.parametrize(
    ("channels", "alpha", "bits", "planes"),
    [(c, a, bits, c + a) for bits in (8, 16) for c in (1, 3) for a in (False, True)],
)
def test_compose_builds_the_right_picture(channels: int, alpha: bool, bits: int, planes: int) -> None:
    rng = np.random.default_rng(1)
    color = rng.uniform(-0.2, 1.2, (5, 7, channels)).astype(np.float32)
    a = rng.uniform(-0.2, 1.2, (5, 7)).astype(np.float32) if alpha else None
    picture = compose(color, a, bits)
    peak = 65535 if bits == 16 else 255
    values = picture.pixels
    assert isinstance(picture, Picture) and picture.bit_depth == bits and picture.size == (7, 5)
    assert values.dtype == (np.uint16 if bits == 16 else np.uint8) and values.shape == (5, 7, planes)
    assert np.array_equal(values[..., :channels], np.round(np.clip(color, 0, 1) * peak))
    if a is not None:
        assert np.array_equal(values[..., -1], np.round(np.clip(a, 0, 1) * peak))


def test_picture_crop_and_from_pil() -> None:
    pic = Picture.from_pil(gradient_image(40, 30, "LA"))
    assert pic.pixels.shape == (30, 40, 2) and pic.crop((5, 4, 25, 14)).size == (20, 10)
    assert Picture.from_pil(gradient_image(8, 6, "L")).pixels.shape == (6, 8, 1)
    assert pic.crop(None) is pic


# -- resize_array ----------------------------------------------------------------------------------
def test_resize_array_size_and_dtype() -> None:
    rgb = np.random.default_rng(0).random((30, 40, 3), dtype=np.float32)
    out = resize_array(rgb, (100, 70))
    assert out.shape == (70, 100, 3) and out.dtype == np.float32
    plane = resize_array(rgb[..., 0], (100, 70))
    assert plane.shape == (70, 100) and plane.dtype == np.float32
    assert np.allclose(plane, out[..., 0])


def test_resize_array_keeps_a_constant_constant() -> None:
    flat = np.full((17, 23, 3), 0.3125, np.float32)
    for size in ((46, 34), (11, 9), (69, 17)):
        assert np.allclose(resize_array(flat, size), 0.3125, atol=1e-5)


def test_resize_array_matches_pillow_lanczos() -> None:
    src = gradient_image(40, 30, "L")
    ours = resize_array(to_unit_float(np.asarray(src)), (80, 60))
    theirs = np.asarray(src.resize((80, 60), Image.Resampling.LANCZOS)).astype(np.float32) / 255
    assert np.abs(ours.clip(0, 1) - theirs).max() <= 1.5 / 255
