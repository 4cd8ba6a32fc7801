"""The device-resident tile pipeline (app/backends/torch_tiles.py and TorchRunner.upscale_image), run on
CPU tensors: the same pixels as the numpy tiler, no seams on a real photo, batched windows, the
out-of-memory halving with an injected error, and the integer hand-over (8 and 16 bits)."""

from __future__ import annotations

import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.backends.torch_runner import TorchRunner
from app.backends.torch_tiles import quantize_tensor, release_cached, upscale_tensor
from app.engine import model_passes, run_model
from app.errors import Cancelled, OutOfMemory
from app.imaging.pixels import quantize
from app.models import compact, rrdbnet
from app.tiling import plan_tiles, upscale_tiled
from scripts.quality import psnr
from tests.support.checkpoints import compact_net, tiny_state_dict
from tests.support.images import textured


def rrdb_runner(scale: int, tile: int = 0, channels: int = 3) -> TorchRunner:
    desc = rrdbnet.descriptor(channels, channels, scale, 8, 1, 4)
    net = rrdbnet.RRDBNet(channels, channels, scale, 8, 1, 4).eval()
    net.load_state_dict(tiny_state_dict(scale, seed=5, channels=channels))
    return TorchRunner(torch, net, desc, "cpu", "fp32", tile)


def compact_runner(tile: int = 0) -> TorchRunner:
    return TorchRunner(
        torch, compact_net(4, num_feat=16), compact.descriptor(3, 3, 4, 16, 3), "cpu", "fp32", tile
    )


def numpy_tiler(runner: TorchRunner, img: np.ndarray, tile: int, pad: int) -> np.ndarray:
    return upscale_tiled(img, runner.run, runner.scale, tile, pad, multiple=runner.size_multiple)


@pytest.mark.parametrize(("scale", "tile", "pad"), [(4, 24, 8), (2, 32, 10), (1, 40, 12), (2, 0, 8)])
def test_device_tiler_matches_the_numpy_tiler(scale: int, tile: int, pad: int) -> None:
    # x1 and x2 RRDBNets pixel-unshuffle (size multiples 4 and 2): odd sides exercise the grid padding.
    runner = rrdb_runner(scale)
    img = textured(77, 61)
    expected = numpy_tiler(runner, img, tile, pad)
    got = runner.upscale_image(img, 1, tile=tile, pad=pad)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_device_tiler_matches_for_gray_and_16_bit_inputs() -> None:
    runner = compact_runner()
    gray = textured(50, 45)[..., :1]
    np.testing.assert_allclose(
        runner.upscale_image(gray, 1, tile=24, pad=6), numpy_tiler(runner, gray, 24, 6), atol=1e-3
    )
    deep = (textured(50, 45).astype(np.uint16) * 257 + 100).astype(np.uint16)
    np.testing.assert_allclose(
        runner.upscale_image(deep, 1, tile=24, pad=6), numpy_tiler(runner, deep, 24, 6), atol=1e-3
    )


def test_device_tiler_is_seam_free_on_a_real_photo(datasets: Path) -> None:
    runner = compact_runner()
    img = np.asarray(Image.open(datasets / "Set14" / "baboon.png").convert("RGB"))[:160, :200]
    whole = runner.upscale_image(img, 1, tile=0, pad=16)
    tiled = runner.upscale_image(img, 1, tile=64, pad=16)
    assert len(plan_tiles(160, 200, 4, 64, 16).windows) == 12
    assert psnr(tiled, whole, peak=1.0) >= 45.0


def test_batched_windows_give_the_same_pixels() -> None:
    runner = rrdb_runner(4)
    seen: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return runner.forward(x)

    x = runner._to_device(textured(90, 70))
    with torch.inference_mode():
        one = upscale_tensor(torch, forward, x, 4, 32, 8)
        singles = list(seen)
        seen.clear()
        batched = upscale_tensor(torch, forward, x, 4, 32, 8, batch_for=lambda plan: 4)
    assert set(singles) == {1} and len(singles) == 9
    assert seen == [4, 4, 1]  # nine windows of one shape, four to a forward
    torch.testing.assert_close(batched, one, atol=1e-4, rtol=0)


def test_out_of_memory_splits_the_batch_then_halves_the_tile() -> None:
    runner = rrdb_runner(2)
    calls: list[tuple[int, int]] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append((x.shape[0], max(x.shape[2:])))
        if x.shape[0] > 1 or max(x.shape[2:]) > 100:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return runner.forward(x)

    img = textured(220, 150)
    x = runner._to_device(img)
    with torch.inference_mode():
        got = upscale_tensor(torch, forward, x, 2, 128, 8, multiple=2, batch_for=lambda plan: 2)
    expected = numpy_tiler(runner, img, 128, 8)
    np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), expected, atol=2e-3)
    assert calls[0][0] == 2  # a batch failed first
    assert any(b == 1 and side > 100 for b, side in calls)  # then one window alone, still too large
    assert max(side for b, side in calls if b == 1 and side <= 100) <= 100  # served by halved tiles


@pytest.mark.parametrize(("device", "released"), [("cuda", ["cuda"]), ("mps", ["mps"]), ("cpu", [])])
def test_out_of_memory_gives_the_cached_blocks_back_on_cuda_and_mps(device: str, released: list[str]) -> None:
    """The device's caching allocator is emptied after an out-of-memory error, before the retry (and by
    the runner's forward): torch's cuda / mps modules stand in here, recording the calls."""
    seen: list[str] = []
    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(empty_cache=lambda: seen.append("cuda")),
        mps=types.SimpleNamespace(empty_cache=lambda: seen.append("mps")),
    )
    release_cached(fake, device)
    assert seen == released


def test_out_of_memory_below_the_smallest_tile_raises() -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(OutOfMemory):
        upscale_tensor(torch, forward, torch.zeros(1, 3, 300, 300), 2, 256, 8)


def test_cancel_stops_between_batches() -> None:
    flag = threading.Event()
    runs: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        runs.append(1)
        flag.set()
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    with pytest.raises(Cancelled):
        upscale_tensor(torch, forward, torch.zeros(1, 3, 64, 64), 2, 16, 4, cancel=flag)
    assert runs == [1]


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_quantised_on_the_device_like_on_the_host(bit_depth: int) -> None:
    runner = compact_runner()
    img = textured(40, 30)
    floats = runner.upscale_image(img, 1, tile=0, pad=8)
    ints = runner.upscale_image(img, 1, tile=0, pad=8, bit_depth=bit_depth)
    assert ints.dtype == (np.uint16 if bit_depth == 16 else np.uint8)
    assert np.abs(ints.astype(np.int64) - quantize(floats, bit_depth).astype(np.int64)).max() <= 1


def test_16_bit_values_survive_the_trip_to_the_device_and_back() -> None:
    runner = compact_runner()
    values = np.array([0, 1, 32767, 32768, 32769, 65534, 65535], np.uint16)
    arr = np.broadcast_to(values[None, :, None], (2, 7, 3)).copy()
    x = runner._to_device(arr)
    torch.testing.assert_close(x[0, 0, 0], torch.from_numpy(values.astype(np.float32) / 65535.0))
    back = runner._to_host(quantize_tensor(torch, x, 16))
    assert back.dtype == np.uint16 and np.array_equal(back, arr)
    nan = torch.tensor([[[[float("nan"), 2.0, -1.0]]]])
    assert runner._to_host(quantize_tensor(torch, nan, 8)).ravel().tolist() == [0, 255, 0]


def test_two_passes_stay_on_the_device() -> None:
    runner = rrdb_runner(2)
    img = textured(30, 26)
    once = runner.upscale_image(img, 1, tile=0, pad=8)
    twice = runner.upscale_image(img, 2, tile=0, pad=8)
    np.testing.assert_allclose(twice, runner.upscale_image(once, 1, tile=0, pad=8), atol=1e-5)
    np.testing.assert_allclose(run_model(img, runner, 4.0, tile=0), twice, atol=1e-6)


@pytest.mark.parametrize(
    ("size", "scale", "factor", "max_pixels", "passes"),
    [(100, 4, 4.0, 1 << 30, 1), (100, 2, 4.0, 1 << 30, 2), (100, 2, 3.0, 1 << 30, 2),
     (100, 2, 8.0, 159_999, 1), (100, 2, 8.0, 160_000, 2), (100, 1, 4.0, 1 << 30, 1),
     (100, 4, 2.0, 1 << 30, 1)],
)  # fmt: skip
def test_model_passes(size: int, scale: int, factor: float, max_pixels: int, passes: int) -> None:
    assert model_passes(size, size, scale, factor, max_pixels) == passes


@pytest.mark.slow
# torch's own compile machinery warns about its own deprecated API
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_runner_gives_the_eager_pixels(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from app.backends.base import ModelEntry
    from app.backends.pytorch import PyTorchBackend

    path = tmp_path / "c.safetensors"
    save_file({k: v.contiguous() for k, v in compact_net(4, num_feat=16).state_dict().items()}, str(path))
    eager, compiled = ModelEntry("c", "pytorch", path), ModelEntry("c", "pytorch", path)
    PyTorchBackend("cpu", "fp32").load(eager)
    PyTorchBackend("cpu", "fp32", compile=True).load(compiled)
    assert compiled.runner is not None
    assert compiled.meta["compiled"].startswith("torch.compile"), compiled.meta
    assert "compiled" not in eager.meta
    img = textured(77, 61)
    for tile in (0, 32):
        np.testing.assert_allclose(
            run_model(img, compiled.runner, 4.0, tile=tile, pad=8),
            run_model(img, eager.runner, 4.0, tile=tile, pad=8),  # type: ignore[arg-type]
            atol=1e-4,
        )


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_the_runner_resizes_on_its_device_as_the_host_would(bit_depth: int) -> None:
    """The runner's device branch (resize, quantise, hand over), forced on CPU tensors, against the
    CPU default (Pillow and numpy on the host): a model output off the target size, at both depths."""
    runner = rrdb_runner(2)
    img = textured(45, 38)
    if bit_depth == 16:
        img = img.astype(np.uint16) * 257
    host = run_model(img, runner, 1.5, tile=0, bit_depth=bit_depth, size=(67, 57))
    runner.resize_on_device = True
    device = run_model(img, runner, 1.5, tile=0, bit_depth=bit_depth, size=(67, 57))
    assert device.dtype == host.dtype and device.shape == host.shape == (57, 67, 3)
    assert np.abs(device.astype(np.int64) - host.astype(np.int64)).max() <= 1


def test_out_of_memory_in_the_device_resize_keeps_the_models_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model ran; only the LANCZOS after it found no memory: the host resizes the model's output
    (the answer is the model's, not a fallback)."""
    runner = rrdb_runner(2)
    img = textured(45, 38)
    host = run_model(img, runner, 1.5, tile=0, bit_depth=8, size=(67, 57))

    def no_memory(*args: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    monkeypatch.setattr("app.backends.torch_runner.resize_tensor", no_memory)
    runner.resize_on_device = True
    np.testing.assert_array_equal(run_model(img, runner, 1.5, tile=0, bit_depth=8, size=(67, 57)), host)
