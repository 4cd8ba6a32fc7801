"""Pillow's LANCZOS weights (app/imaging/lanczos.py) and their use on the model's device
(app/backends/torch_tiles.resize_tensor, run here on CPU tensors): Pillow's own float resize of real
photos, up and down, odd sizes and one-pixel edges, to float32 rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.backends.torch_tiles import quantize_tensor, resize_tensor
from app.imaging.lanczos import taps
from app.imaging.pixels import resize_array, resized
from tests.support.images import textured

SIZES = [((64, 48), (50, 37)), ((37, 53), (111, 159)), ((300, 200), (451, 299)), ((97, 131), (29, 40))]
EDGES = [((1, 9), (3, 7)), ((9, 1), (1, 1)), ((5, 5), (1, 1)), ((2, 3), (16, 2))]


def apply_taps(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The weights applied in float64 with numpy, horizontal then vertical."""
    out = arr.astype(np.float64)
    idx, w = taps(out.shape[1], size[0])
    out = (out[:, idx] * w[None, :, :, None]).sum(axis=2)
    idx, w = taps(out.shape[0], size[1])
    return (out[idx] * w[:, :, None, None]).sum(axis=1)


def photo(datasets: Path, shape: tuple[int, int]) -> np.ndarray:
    src = np.asarray(Image.open(datasets / "Set14" / "baboon.png").convert("RGB"), dtype=np.float32) / 255
    return np.ascontiguousarray(src[: shape[0], : shape[1]])


@pytest.mark.parametrize(("shape", "size"), SIZES + EDGES)
def test_taps_are_pillows_weights(shape: tuple[int, int], size: tuple[int, int]) -> None:
    arr = textured(shape[1], shape[0]).astype(np.float32) / 255
    for n_in, n_out in ((shape[1], size[0]), (shape[0], size[1])):
        idx, w = taps(n_in, n_out)
        assert idx.shape == w.shape and idx.min() >= 0 and idx.max() < n_in
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(apply_taps(arr, size), resize_array(arr, size), atol=2e-6)


@pytest.mark.parametrize(("shape", "size"), [*SIZES, ((512, 512), (768, 768)), ((600, 500), (450, 375))])
def test_resize_tensor_is_pillows_lanczos_on_a_real_photo(
    datasets: Path, shape: tuple[int, int], size: tuple[int, int]
) -> None:
    arr = photo(datasets, shape)
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    got = resize_tensor(torch, x, size)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, resize_array(arr, size), atol=2e-6)


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_resized_and_quantised_on_the_device_match_the_host(datasets: Path, bit_depth: int) -> None:
    """What a GPU request returns (resize and quantise on the device) against the CPU path (Pillow's
    resize, numpy's quantise): equal but where float32 rounding crosses a rounding boundary, one
    level off (rarer at 8 bits than at 16, where a level is 1/65535)."""
    arr = photo(datasets, (300, 240))
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    device = quantize_tensor(torch, resize_tensor(torch, x, (451, 359)), bit_depth)
    got = device[0].permute(1, 2, 0).numpy()
    got = got.view(np.uint16) ^ np.uint16(0x8000) if got.dtype == np.int16 else got
    host = resized(arr, (451, 359), bit_depth)
    assert got.dtype == host.dtype and got.shape == host.shape
    diff = np.abs(got.astype(np.int64) - host.astype(np.int64))
    assert diff.max() <= 1 and (diff > 0).mean() < (1e-3 if bit_depth == 8 else 1e-2)
