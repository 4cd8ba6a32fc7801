"""CUDA graphs of a model's forward: one per input shape, per thread, captured on the shape's second use.
On CUDA by default (UPSCALER_CUDA_GRAPHS=false runs every forward eagerly): see "What the graphs
changed" below.

A small net's eager forward is hundreds of kernel launches (rrdb-x2 at 1024²: 228), and PyTorch gives
the GIL back around each launch and must take it again after. A captured graph replays the whole
forward as one launch, so the GPU's work cannot wait on the GIL between kernels.

- A shape is captured the second time a thread runs it: the first run is eager and serves as the
  warm-up capture needs (cuDNN's algorithm choice, lazy initialisation), and a size seen once never
  costs a capture or the memory it keeps.
- Each graph keeps its activations in a private memory pool for as long as it lives: per thread at
  most `thread_bytes` of them (estimated from the model's descriptor), the least recently used dropped
  first, and none for a window larger than `graph_bytes` (a large window's launches are a negligible
  share of its forward). `clear()` drops this thread's graphs (after an out-of-memory error).
- Each thread keeps its own graphs: a graph's input and output buffers are fixed, so two requests on
  two streams cannot replay one graph at once. A graph replays on its thread's stream.
- Captures take turns (a lock) on torch's private capture stream, never on a stream the service
  copies on: a pinned host buffer records an event on every stream it was copied on when it is freed,
  from whichever thread frees it (the encode thread, for an output), and such an event on a stream
  under capture invalidates the capture. The thread-local capture mode lets the other device thread's
  eager work go on meanwhile.
- A net whose forward cannot be captured (a host synchronisation, a shape that depends on the data)
  runs eagerly from then on; the reason is logged once and kept in `broken`.

What the graphs changed on an H100 (rrdb-x2, 1024² -> 2048², torch 2.11):
- One request at a time, in-process: nothing (10.6 ms against 10.7 eager; x2plus 768²: 46.0 against
  47.1). The GPU is the bound there.
- Two threads beside a Python thread busy all the time: 6.8 images/s against 1.2 eager (beside one
  busy a third of the time, both about 104).
- In the service, 8 clients posting 1024² PNGs, two runs of three rounds, graphs and eager servers
  side by side: 44-84 images/s against 40-61 eager (the bare forward's limit: 102), more in every
  round. Under that load a request waited 6-11 ms for a device thread and held it 21-36 ms, against
  48-78 and 32-49 ms eager. One client: 43.8 ms a request with JPEG output against 47.0-51.8 ms.
- A first form captured on the device thread's own stream, and in the service a capture was
  invalidated (see the private capture stream above): the model ran eagerly from then on, as a net
  that cannot be captured does.

torch arrives as an argument: the service starts without it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.backends.base import one_line
from app.tiling import is_oom

log = logging.getLogger("app.backends.cuda_graphs")

SEEN_BEFORE_CAPTURE = 1  # eager runs of a shape (per thread) before it is captured
MAX_SHAPES_SEEN = 64  # shapes remembered per thread for that count


@dataclass
class _Graph:
    graph: Any
    static_in: Any
    static_out: Any
    nbytes: int

    def run(self, x: Any) -> Any:
        self.static_in.copy_(x)
        self.graph.replay()
        # The output buffer is the graph's own: the next replay rewrites it, and a caller may hold
        # several results at once (a batch split after an out-of-memory error), so it hands out a copy.
        return self.static_out.clone()


@dataclass
class _ThreadGraphs:
    graphs: OrderedDict[tuple[Any, ...], _Graph] = field(default_factory=OrderedDict)
    seen: OrderedDict[tuple[Any, ...], int] = field(default_factory=OrderedDict)

    @property
    def nbytes(self) -> int:
        return sum(graph.nbytes for graph in self.graphs.values())


class GraphCache:
    """`cache(x)` is `net(x)`, replayed from a CUDA graph for shapes this thread has run before.
    `bytes_of(x)` estimates the memory a graph for input `x` keeps (its activations)."""

    def __init__(
        self,
        torch: Any,
        net: Callable[[Any], Any],
        bytes_of: Callable[[Any], int],
        graph_bytes: int,
        thread_bytes: int,
    ) -> None:
        self.torch = torch
        self.net = net
        self.bytes_of = bytes_of
        self.graph_bytes = graph_bytes
        self.thread_bytes = thread_bytes
        self.broken: str | None = None
        self.on_broken: Callable[[str], None] | None = None  # told the reason, once (/health's meta)
        self.captured = 0  # graphs captured, over all threads
        self._local = threading.local()
        self._capture_lock = threading.Lock()

    def _state(self) -> _ThreadGraphs:
        state: _ThreadGraphs | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _ThreadGraphs()
        return state

    def __call__(self, x: Any) -> Any:
        if self.broken is not None:
            return self.net(x)
        key = (tuple(x.shape), tuple(x.stride()), x.dtype, str(x.device))
        state = self._state()
        graph = state.graphs.get(key)
        if graph is not None:
            state.graphs.move_to_end(key)
            return graph.run(x)
        if not self._count(state, key):
            return self.net(x)
        graph = self._capture(x, state, key)
        return self.net(x) if graph is None else graph.run(x)

    def _count(self, state: _ThreadGraphs, key: tuple[Any, ...]) -> bool:
        """Count one use of `key` in this thread; True when it is time to capture it."""
        seen = state.seen.pop(key, 0)
        if seen >= SEEN_BEFORE_CAPTURE:
            return True
        state.seen[key] = seen + 1
        while len(state.seen) > MAX_SHAPES_SEEN:
            state.seen.popitem(last=False)
        return False

    def _capture(self, x: Any, state: _ThreadGraphs, key: tuple[Any, ...]) -> _Graph | None:
        """A graph of net(x)'s shape, kept in this thread's cache; None where this one stays eager (too
        large, out of memory, or the net cannot be captured)."""
        torch = self.torch
        nbytes = self.bytes_of(x)
        if nbytes > self.graph_bytes:
            return None
        if state.nbytes + nbytes > self.thread_bytes:
            torch.cuda.current_stream().synchronize()  # their last replays are done before the pools go
            while state.graphs and state.nbytes + nbytes > self.thread_bytes:
                state.graphs.popitem(last=False)
        static_in = x.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with (
                self._capture_lock,
                torch.cuda.graph(graph, capture_error_mode="thread_local"),
            ):
                static_out = self.net(static_in)
        except Exception as exc:
            if is_oom(exc):  # this shape runs eagerly now; the next use may capture it
                self.clear()
                return None
            self.broken = one_line(exc)
            log.warning("CUDA graphs off for this model, it runs eagerly: %s", self.broken)
            if self.on_broken is not None:
                self.on_broken(self.broken)
            return None
        entry = state.graphs[key] = _Graph(graph, static_in, static_out, nbytes)
        self.captured += 1
        return entry

    def clear(self) -> None:
        """Drop this thread's graphs and their memory pools."""
        state = self._state()
        if state.graphs:
            self.torch.cuda.current_stream().synchronize()
        state.graphs.clear()

    def held(self) -> int:
        """This thread's graphs."""
        return len(self._state().graphs)
