"""The model families on a real accelerator (CUDA, else MPS): the same file served there matches the
fp32 CPU forward. Skipped, with the reason, on machines without one (CI has none)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from app.backends.base import ModelEntry
from app.backends.pytorch import PyTorchBackend
from app.engine import run_model
from scripts.quality import psnr_unit
from tests.support.checkpoints import compact_net, tiny_state_dict, write_checkpoint
from tests.support.images import textured

HAS_MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
DEVICE = "cuda" if torch.cuda.is_available() else "mps" if HAS_MPS else None

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE is None, reason="needs a CUDA or MPS device (none here)"),
]


def served(path: Path, device: str, precision: str, cuda_graphs: bool = False) -> ModelEntry:
    entry = ModelEntry(path.stem, "pytorch", path)
    PyTorchBackend(device, precision, cuda_graphs=cuda_graphs).load(entry)
    assert entry.runner is not None, entry.reason
    return entry


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("family", ["RRDBNet", "SRVGGNetCompact"])
def test_accelerator_serves_each_family_like_the_cpu(tmp_path: Path, family: str, precision: str) -> None:
    if family == "RRDBNet":
        path = write_checkpoint(tiny_state_dict(2, seed=5, num_block=2), tmp_path / "r", "safetensors")
    else:
        path = tmp_path / "c.safetensors"
        save_file({k: v.contiguous() for k, v in compact_net(4, num_feat=16).state_dict().items()}, str(path))
    img = textured(96, 80)
    on_cpu = served(path, "cpu", "fp32")
    on_device = served(path, str(DEVICE), precision)
    assert on_device.runner is not None and getattr(on_device.runner, "device", None) == DEVICE
    scale = float(on_cpu.runner.scale)  # type: ignore[union-attr]
    expected = run_model(img, on_cpu.runner, scale, tile=48, pad=8)  # type: ignore[arg-type]
    got = run_model(img, on_device.runner, scale, tile=48, pad=8)
    assert np.isfinite(got).all()
    assert psnr_unit(got, expected) >= (50.0 if precision == "fp32" else 35.0)


def test_device_pipeline_batches_tiles_and_matches_the_cpu(tmp_path: Path) -> None:
    path = write_checkpoint(tiny_state_dict(4, seed=3, num_block=2), tmp_path / "r", "safetensors")
    img = textured(200, 150)
    expected = run_model(img, served(path, "cpu", "fp32").runner, 4.0, tile=48, pad=8)  # type: ignore[arg-type]
    runner = served(path, str(DEVICE), "fp32").runner
    batches: list[int] = []
    forward = runner.forward  # type: ignore[union-attr]

    def spy(x: torch.Tensor) -> torch.Tensor:
        batches.append(x.shape[0])
        return forward(x)

    runner.forward = spy  # type: ignore[union-attr]
    got = run_model(img, runner, 4.0, tile=48, pad=8)  # type: ignore[arg-type]
    assert max(batches) > 1  # windows of one shape ran together
    np.testing.assert_allclose(got, expected, atol=1e-3)
    quantised = run_model(img, runner, 4.0, tile=48, pad=8, bit_depth=8)  # type: ignore[arg-type]
    assert quantised.dtype == np.uint8
    assert np.abs(quantised.astype(int) - np.round(expected * 255).astype(int)).max() <= 1


def test_16_bit_input_in_half_precision_stays_finite(tmp_path: Path) -> None:
    # 65535 does not fit fp16 (max 65504): samples become 0..1 in float32 before the cast.
    path = write_checkpoint(tiny_state_dict(2, seed=5), tmp_path / "r", "safetensors")
    deep = (textured(64, 48).astype(np.uint16) * 257).astype(np.uint16)
    deep[0, 0] = 65535
    expected = run_model(deep, served(path, "cpu", "fp32").runner, 2.0, tile=0)  # type: ignore[arg-type]
    got = run_model(deep, served(path, str(DEVICE), "fp16").runner, 2.0, tile=0, bit_depth=16)  # type: ignore[arg-type]
    assert got.dtype == np.uint16
    assert psnr_unit(got.astype(np.float32) / 65535.0, expected) >= 35.0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_input_reaches_the_device_as_on_the_cpu(tmp_path: Path, dtype: type) -> None:
    # On CUDA the samples are staged into pinned memory by numpy; a read-only array (a Pillow image's)
    # and a strided view must arrive exactly as the CPU's tensor from the same array.
    path = write_checkpoint(tiny_state_dict(2, seed=5), tmp_path / "r", "safetensors")
    base = textured(70, 50).astype(np.float32)
    if dtype == np.float32:
        pixels = base / 255
    else:
        pixels = (base * (257 if dtype == np.uint16 else 1)).astype(dtype)
        pixels[0, 0] = np.iinfo(dtype).max
    frozen = pixels.copy()
    frozen.flags.writeable = False
    cpu, device = served(path, "cpu", "fp32").runner, served(path, str(DEVICE), "fp32").runner
    for arr in (pixels, frozen, pixels[:, ::2]):
        expected = cpu._to_device(arr)  # type: ignore[union-attr]
        got = device._to_device(arr).cpu()  # type: ignore[union-attr]
        assert got.dtype == torch.float32 and got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_requests_on_two_streams_at_once_match_one_at_a_time(tmp_path: Path) -> None:
    import threading

    path = write_checkpoint(tiny_state_dict(2, seed=7, num_block=2), tmp_path / "r", "safetensors")
    runner = served(path, str(DEVICE), "fp16").runner
    images = [textured(160 + 16 * i, 120) for i in range(4)]
    alone = [run_model(img, runner, 2.0, tile=64, bit_depth=8) for img in images]  # type: ignore[arg-type]
    together: list[np.ndarray | None] = [None] * len(images)

    def work(i: int) -> None:
        for _ in range(3):
            together[i] = run_model(images[i], runner, 2.0, tile=64, bit_depth=8)  # type: ignore[arg-type]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together, strict=True):
        assert b is not None and np.array_equal(a, b)


def test_device_resizes_to_a_size_off_the_models_scale_like_the_cpu(tmp_path: Path) -> None:
    """A hires fix at 1.5x through an x2 model: the LANCZOS to the target size and the quantisation run
    on the device (Pillow's weights), where the CPU runs Pillow itself; the integers agree."""
    path = write_checkpoint(tiny_state_dict(2, seed=5, num_block=2), tmp_path / "r", "safetensors")
    img = textured(96, 80)
    kwargs = {"tile": 48, "pad": 8, "bit_depth": 8, "size": (144, 120)}
    expected = run_model(img, served(path, "cpu", "fp32").runner, 1.5, **kwargs)  # type: ignore[arg-type]
    got = run_model(img, served(path, str(DEVICE), "fp32").runner, 1.5, **kwargs)  # type: ignore[arg-type]
    assert got.dtype == expected.dtype == np.uint8 and got.shape == expected.shape == (120, 144, 3)
    assert psnr_unit(got / 255.0, expected / 255.0) >= 45.0


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need CUDA")
def test_cuda_graphs_replay_the_eager_forward(tmp_path: Path) -> None:
    path = write_checkpoint(tiny_state_dict(2, seed=7, num_block=2), tmp_path / "r", "safetensors")
    img, other = textured(96, 80), textured(96, 80)[::-1].copy()
    eager = served(path, "cuda", "fp16")
    graphed = served(path, "cuda", "fp16", cuda_graphs=True)
    graphs = graphed.runner.graphs  # type: ignore[union-attr]
    assert graphs is not None and eager.runner.graphs is None  # type: ignore[union-attr]
    for picture in (img, img, other, img):  # eager, captured, replayed with new pixels, replayed
        want = run_model(picture, eager.runner, 2.0, tile=48, pad=8)  # type: ignore[arg-type]
        got = run_model(picture, graphed.runner, 2.0, tile=48, pad=8)  # type: ignore[arg-type]
        np.testing.assert_allclose(got, want, atol=1e-3)
    assert graphs.captured >= 1 and graphs.held() >= 1 and graphs.broken is None
    assert graphed.meta["cuda_graphs"].startswith("on") and "cuda_graphs" not in eager.meta


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need CUDA")
def test_cuda_graphs_of_two_threads_do_not_mix(tmp_path: Path) -> None:
    # As in the service: two device threads, and the outputs (views of pinned host buffers) freed by
    # a third thread while the device threads capture and replay.
    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    path = write_checkpoint(tiny_state_dict(2, seed=8, num_block=2), tmp_path / "r", "safetensors")
    runner = served(path, "cuda", "fp32", cuda_graphs=True).runner
    pictures = [textured(128, 128), textured(128, 128)[:, ::-1].copy()]
    want = [run_model(p, served(path, "cpu", "fp32").runner, 2.0, tile=0) for p in pictures]  # type: ignore[arg-type]
    outputs: queue.Queue[tuple[int, np.ndarray] | None] = queue.Queue()
    worst: list[float] = []

    def check() -> None:
        while (item := outputs.get()) is not None:
            i, got = item
            worst.append(float(np.abs(got - want[i]).max()))
            del item, got  # the pinned buffer goes here, on this thread

    def serve(i: int) -> None:
        for _ in range(6):
            outputs.put((i, run_model(pictures[i], runner, 2.0, tile=0)))  # type: ignore[arg-type]

    checker = threading.Thread(target=check)
    checker.start()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(serve, [0, 1, 0, 1]))
    outputs.put(None)
    checker.join()
    assert len(worst) == 24 and max(worst) <= 1e-3
    graphs = runner.graphs  # type: ignore[union-attr]
    assert graphs is not None and graphs.broken is None and graphs.captured >= 2


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need CUDA")
def test_a_net_that_cannot_be_captured_runs_eagerly() -> None:
    from app.backends.cuda_graphs import GraphCache

    def net(x: torch.Tensor) -> torch.Tensor:
        return x * float(x.abs().max().item())  # a host sync: capture fails

    graphs = GraphCache(torch, net, lambda x: 0, graph_bytes=1 << 30, thread_bytes=1 << 30)
    x = torch.rand(1, 3, 8, 8, device="cuda")
    stream = torch.cuda.Stream()
    with torch.inference_mode(), torch.cuda.stream(stream):
        results = [graphs(x) for _ in range(3)]
    assert graphs.broken is not None and graphs.captured == 0
    for y in results:
        torch.testing.assert_close(y, net(x))
