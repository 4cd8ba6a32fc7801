import itertools
import threading

import numpy as np
import pytest
import torch

from app.errors import Cancelled, OutOfMemory
from app.tiling import _ramp, _spans, upscale_tiled
from scripts.quality import psnr
from tests.support.checkpoints import tiny_state_dict


def nearest(x: np.ndarray, s: int = 2) -> np.ndarray:
    return np.repeat(np.repeat(x.astype(np.float32), s, 0), s, 1)


def test_spans_cover_the_axis_in_equal_cells() -> None:
    spans = _spans(300, 128)
    assert spans[0][0] == 0 and spans[-1][1] == 300
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert max(e - s for s, e in spans) - min(e - s for s, e in spans) <= 1


def test_ramps_of_neighbours_sum_to_one() -> None:
    band = 12
    rising = _ramp(40, band, 0)[:band]
    falling = _ramp(40, 0, band)[-band:]
    np.testing.assert_allclose(rising + falling, 1.0, atol=1e-6)


@pytest.mark.parametrize(("tile", "pad"), [(16, 4), (20, 8), (7, 0), (0, 4)])
def test_upscale_tiled_pointwise_fn_is_exact(tile: int, pad: int) -> None:
    img = np.random.default_rng(1).random((45, 61, 3), dtype=np.float32)
    out = upscale_tiled(img, nearest, 2, tile, pad)
    np.testing.assert_allclose(out, nearest(img), atol=1e-5)


def test_upscale_tiled_model_matches_whole_image() -> None:
    from app.models.rrdbnet import RRDBNet

    net = RRDBNet(3, 3, 4, 8, 1, 4).eval()
    net.load_state_dict(tiny_state_dict(4, seed=5))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y = net(torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None])
        return y[0].permute(1, 2, 0).numpy()

    img = np.random.default_rng(2).random((50, 70, 3), dtype=np.float32)
    whole = run(img)
    tiled = upscale_tiled(img, run, 4, 24, 10)
    assert psnr(tiled, whole, peak=max(1e-6, float(whole.max() - whole.min()))) > 45


def test_upscale_tiled_oom_retries_with_smaller_tiles() -> None:
    failed: list[int] = []
    served: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:
        if max(x.shape[:2]) > 100:
            failed.append(max(x.shape[:2]))
            raise MemoryError("simulated")
        served.append(max(x.shape[:2]))
        return nearest(x)

    img = np.random.default_rng(3).random((200, 150, 1), dtype=np.float32)
    out = upscale_tiled(img, fn, 2, 256, 8)
    np.testing.assert_allclose(out, nearest(img), atol=1e-5)
    assert failed[0] == 200 and served and max(served) <= 100


def test_upscale_tiled_oom_below_min_tile_raises() -> None:
    def fn(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(OutOfMemory):
        upscale_tiled(np.zeros((300, 300, 3), np.float32), fn, 2, 256, 8)


def test_upscale_tiled_other_errors_propagate() -> None:
    def fn(x: np.ndarray) -> np.ndarray:
        raise ValueError("broken model")

    with pytest.raises(ValueError, match="broken model"):
        upscale_tiled(np.zeros((32, 32, 3), np.float32), fn, 2, 16, 4)


def test_upscale_tiled_stops_when_cancelled() -> None:
    flag = threading.Event()
    seen = []

    def fn(x: np.ndarray) -> np.ndarray:
        seen.append(1)
        flag.set()
        return nearest(x)

    with pytest.raises(Cancelled):
        upscale_tiled(np.zeros((64, 64, 3), np.float32), fn, 2, 16, 4, cancel=flag)
    assert len(seen) == 1


def test_upscale_tiled_feeds_one_window_shape() -> None:
    shapes: set[tuple[int, ...]] = set()

    def fn(x: np.ndarray) -> np.ndarray:
        shapes.add(x.shape)
        return nearest(x)

    img = np.random.default_rng(4).random((150, 233, 3), dtype=np.float32)
    out = upscale_tiled(img, fn, 2, 48, 8)
    np.testing.assert_allclose(out, nearest(img), atol=1e-5)
    assert shapes == {(54, 63, 3)}  # the largest cells (150 / 4 -> 38, 233 / 5 -> 47) plus 2 x 8 of context


def test_upscale_tiled_windows_start_on_the_model_grid() -> None:
    starts: list[tuple[int, int]] = []
    img = np.random.default_rng(5).random((101, 77, 3), dtype=np.float32)
    img[0, 0, 0] = 7.0  # a marker, to find each window's offset in the image

    def fn(x: np.ndarray) -> np.ndarray:
        assert x.shape[0] % 2 == 0 and x.shape[1] % 2 == 0
        return nearest(x)

    def locate(x: np.ndarray) -> np.ndarray:
        hits = np.argwhere(np.isin(img[..., 1], x[:1, :1, 1]))
        starts.extend(map(tuple, hits[:1]))
        return fn(x)

    out = upscale_tiled(img, locate, 2, 24, 6, multiple=2)
    np.testing.assert_allclose(out, nearest(img), atol=1e-5)
    assert starts and all(y % 2 == 0 and x % 2 == 0 for y, x in starts)
