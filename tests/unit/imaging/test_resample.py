"""Pillow's LANCZOS in bands on every core (app/imaging/resample.py): Pillow's own pixels, in every
mode the service resizes, on a real photo, with the bands really used."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.imaging import resample
from app.imaging.pixels import resize_array
from app.imaging.threads import pool

MODES = ["L", "LA", "RGB", "RGBA", "I;16", "F"]
# (source, target): 2x, 1.5x, odd ratios, a height whose ratio leaves no aligned band edges (the
# vertical pass then runs whole), width only, height only.
ENLARGEMENTS = [
    ((160, 120), (320, 240)),
    ((256, 256), (384, 384)),
    ((101, 97), (303, 291)),
    ((257, 131), (514, 262)),
    ((200, 128), (400, 257)),
    ((200, 300), (600, 300)),
    ((300, 200), (300, 450)),
]


def picture(datasets: Path, mode: str, size: tuple[int, int]) -> Image.Image:
    """A crop of a Set14 photo in `mode`, with a varying alpha where the mode has one."""
    w, h = size
    rgb = np.asarray(Image.open(datasets / "Set14" / "baboon.png").convert("RGB"))[:h, :w]
    alpha = (np.add.outer(np.arange(h) * 3, np.arange(w) * 5) % 256).astype(np.uint8)
    if mode == "RGB":
        return Image.fromarray(rgb)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, alpha]))
    if mode == "L":
        return Image.fromarray(rgb[..., 1])
    if mode == "LA":
        return Image.fromarray(np.dstack([rgb[..., 1], alpha]), "LA")
    if mode == "I;16":
        return Image.fromarray(rgb[..., 0].astype(np.uint16) * 257 + rgb[..., 2])
    return Image.fromarray(rgb[..., 2].astype(np.float32) / 255, "F")


@pytest.fixture
def many_bands(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Seven bands for images this small, and a count of the band jobs submitted."""
    monkeypatch.setattr(resample, "MIN_BAND_PIXELS", 1 << 10)
    monkeypatch.setattr(resample, "os", types.SimpleNamespace(cpu_count=lambda: 7))
    submitted: list[int] = []

    class Counting:
        def submit(self, *args: object) -> object:
            submitted.append(1)
            return pool().submit(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(resample, "pool", Counting)
    return submitted


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("source", "size"), ENLARGEMENTS)
def test_bands_give_pillows_pixels(
    datasets: Path, many_bands: list[int], mode: str, source: tuple[int, int], size: tuple[int, int]
) -> None:
    img = picture(datasets, mode, source)
    expected = np.asarray(img.resize(size, Image.Resampling.LANCZOS))
    got = resample.lanczos(img, size)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert len(many_bands) >= 2  # the banded path ran, not Pillow's whole resize


def test_a_reduction_is_pillows_whole_resize(datasets: Path, many_bands: list[int]) -> None:
    img = picture(datasets, "RGB", (400, 300))
    got = resample.lanczos(img, (250, 190))
    np.testing.assert_array_equal(got, np.asarray(img.resize((250, 190), Image.Resampling.LANCZOS)))
    assert many_bands == []


def test_written_into_a_strided_view(datasets: Path, many_bands: list[int]) -> None:
    img = picture(datasets, "F", (120, 90))
    out = np.full((180, 240, 3), -1.0, np.float32)
    returned = resample.lanczos(img, (240, 180), out[..., 1])
    expected = np.asarray(img.resize((240, 180), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out[..., 1], expected)
    assert np.shares_memory(returned, out)
    assert (out[..., 0] == -1).all() and (out[..., 2] == -1).all()


def test_resize_array_plane_by_plane_in_bands(datasets: Path, many_bands: list[int]) -> None:
    arr = np.asarray(picture(datasets, "RGB", (150, 100)), dtype=np.float32) / 255
    got = resize_array(arr, (300, 200))
    for c in range(3):
        plane = Image.fromarray(np.ascontiguousarray(arr[..., c]), "F")
        np.testing.assert_array_equal(
            got[..., c], np.asarray(plane.resize((300, 200), Image.Resampling.LANCZOS))
        )
    assert len(many_bands) >= 6
