"""GraphCache's bookkeeping on the CPU: a stand-in for torch.cuda whose "graph" replays the net's last
captured call on the graph's own input buffer, as CUDA replays recorded kernels. When a shape is
captured, which thread's graph serves, what is dropped for memory, and what runs eagerly instead.
The real capture runs in tests/unit/test_accelerator.py on a GPU."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from app.backends.cuda_graphs import GraphCache


class FakeGraph:
    def __init__(self) -> None:
        self.body: Callable[[], object] | None = None

    def replay(self) -> None:
        assert self.body is not None, "nothing was captured"
        self.body()


class FakeCuda:
    """torch.cuda as GraphCache uses it."""

    def __init__(self) -> None:
        self.capturing: FakeGraph | None = None
        self.stream = SimpleNamespace(synchronize=lambda: None)
        self.CUDAGraph = FakeGraph
        self.modes: list[str] = []

    def current_stream(self) -> Any:
        return self.stream

    @contextlib.contextmanager
    def graph(self, graph: FakeGraph, capture_error_mode: str) -> Iterator[None]:
        # No stream argument: torch's private capture stream, which no copy ever used.
        self.modes.append(capture_error_mode)
        self.capturing = graph
        try:
            yield
        finally:
            self.capturing = None


class Net:
    """y = 2x + 1; records its eager calls, and under capture the replay of the captured one."""

    def __init__(self, cuda: FakeCuda, fail: BaseException | None = None) -> None:
        self.cuda, self.fail = cuda, fail
        self.eager: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        graph = self.cuda.capturing
        if graph is None:
            self.eager.append(tuple(x.shape))
            return x * 2 + 1
        if self.fail is not None:
            raise self.fail
        out = torch.empty_like(x)
        graph.body = lambda: torch.mul(x, 2, out=out).add_(1)  # reads the graph's input buffer
        return out


def make(
    fail: BaseException | None = None, graph_bytes: int = 1 << 20, thread_bytes: int = 1 << 20
) -> tuple[GraphCache, Net, FakeCuda]:
    cuda = FakeCuda()
    net = Net(cuda, fail)
    cache = GraphCache(SimpleNamespace(cuda=cuda), net, lambda x: x.numel() * 4, graph_bytes, thread_bytes)
    return cache, net, cuda


def x_of(side: int, value: float) -> torch.Tensor:
    return torch.full((1, 3, side, side), value)


def test_a_shape_runs_eagerly_once_then_replays_its_graph_with_new_pixels() -> None:
    cache, net, cuda = make()
    results = [cache(x_of(8, v)) for v in (1.0, 2.0, 3.0, 4.0)]
    assert [float(r[0, 0, 0, 0]) for r in results] == [3.0, 5.0, 7.0, 9.0]
    assert net.eager == [(1, 3, 8, 8)]  # the first use; the rest replayed
    assert cache.captured == 1 and cache.held() == 1
    assert cuda.modes == ["thread_local"]  # the other thread's eager work may go on meanwhile


def test_replayed_results_are_the_callers_own() -> None:
    cache, _, _ = make()
    cache(x_of(8, 0.0))
    first = cache(x_of(8, 1.0))
    second = cache(x_of(8, 2.0))
    assert float(first.max()) == 3.0 and float(second.max()) == 5.0  # the second replay left the first


def test_each_shape_is_counted_on_its_own() -> None:
    cache, net, _ = make()
    for side in (8, 16, 8, 16, 8):
        cache(x_of(side, 1.0))
    assert net.eager == [(1, 3, 8, 8), (1, 3, 16, 16)]
    assert cache.captured == 2


def test_graphs_beyond_the_thread_budget_drop_the_least_recently_used() -> None:
    # 8x8, 9x8 and 10x8 graphs keep 768, 864 and 960 bytes: any two fit in 2000, not three.
    cache, net, _ = make(thread_bytes=2000)
    for value in (1.0, 1.0):
        for side in (8, 9):
            cache(torch.full((1, 3, side, 8), value))
    cache(x_of(8, 1.0))  # 8x8 used last: 9x8 is the older one
    for _ in range(2):
        cache(torch.full((1, 3, 10, 8), 1.0))  # a third shape: 9x8 goes
    assert cache.held() == 2 and cache.captured == 3
    net.eager.clear()
    cache(x_of(8, 5.0))
    assert net.eager == []  # 8x8 still replays
    cache(torch.full((1, 3, 9, 8), 5.0))
    assert net.eager == [(1, 3, 9, 8)]  # 9x8 was dropped: eager again (and counted afresh)


def test_a_window_larger_than_a_graph_may_be_stays_eager() -> None:
    cache, net, _ = make(graph_bytes=1000)
    for _ in range(3):
        assert float(cache(x_of(16, 1.0)).max()) == 3.0  # 3072 bytes of activations
    assert cache.captured == 0 and len(net.eager) == 3


def test_a_net_that_cannot_be_captured_runs_eagerly_from_then_on(caplog: pytest.LogCaptureFixture) -> None:
    cache, net, _ = make(fail=RuntimeError("operation not permitted when stream is capturing"))
    told: list[str] = []
    cache.on_broken = told.append
    results = [cache(x_of(8, v)) for v in (1.0, 2.0, 3.0)]
    assert [float(r.max()) for r in results] == [3.0, 5.0, 7.0]
    assert cache.broken is not None and "not permitted" in cache.broken
    assert told == [cache.broken]
    assert len(net.eager) == 3 and cache.captured == 0
    assert sum("CUDA graphs off" in r.getMessage() for r in caplog.records) == 1


def test_out_of_memory_while_capturing_drops_the_graphs_and_runs_eagerly() -> None:
    cache, net, _ = make()
    for _ in range(2):
        cache(x_of(8, 1.0))
    assert cache.held() == 1
    net.fail = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    results = [cache(x_of(16, 1.0)) for _ in range(2)]
    assert [float(r.max()) for r in results] == [3.0, 3.0]
    assert cache.broken is None and cache.held() == 0  # a later use may capture again
    net.fail = None
    for _ in range(2):  # counted afresh: one eager use, then the capture
        cache(x_of(16, 2.0))
    assert cache.held() == 1


def test_a_thread_never_replays_another_threads_graph() -> None:
    cache, net, _ = make()
    for _ in range(3):
        cache(x_of(8, 1.0))
    seen: list[float] = []

    def other() -> None:
        seen.append(float(cache(x_of(8, 7.0)).max()))
        seen.append(cache.held())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [15.0, 0]  # its first use of the shape: eager, nothing of its own yet
    assert net.eager == [(1, 3, 8, 8), (1, 3, 8, 8)] and cache.held() == 1


def test_the_setting_changes_nothing_off_cuda(tmp_path: Path) -> None:
    from app.backends.base import ModelEntry
    from app.backends.pytorch import PyTorchBackend
    from tests.support.checkpoints import tiny_state_dict, write_checkpoint

    path = write_checkpoint(tiny_state_dict(2, seed=1), tmp_path / "r", "safetensors")
    entry = ModelEntry(path.stem, "pytorch", path)
    PyTorchBackend("cpu", "fp32", cuda_graphs=True).load(entry)
    assert entry.runner is not None and entry.runner.graphs is None  # type: ignore[attr-defined]
    assert "cuda_graphs" not in entry.meta
