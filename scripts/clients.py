"""Concurrent HTTP clients, each in its own process, for throughput figures (`bench.py`'s
"8 clients" column), and where the server's host CPU went meanwhile.

Each client is a process as each of the pipelines beside a service would be: client threads in one
Python process share its GIL, and parsing a multi-megabyte PNG answer in httpx costs 15-25 ms of that
process's CPU per request on this project's 2-core machine, so eight threads can cap the figure below
what the service delivers. This module imports no torch, and the children start without the calling
script's `__main__` (see `_bare_main`), so they start in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import sys
import time
import types
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Any

from scripts.rss import cpu_s


@dataclass
class Throughput:
    """What `run_clients` measured over the timed span. The CPU figures are per image and None where
    /proc cannot be read: the server process's (every thread) and its main thread's, which runs the
    event loop that every request passes through."""

    images_per_s: float
    server_cpu_ms: float | None = None
    event_loop_ms: float | None = None
    # The client processes' own CPU per image (building the upload, parsing the answer): a request's
    # time includes it, so it bounds what 8 clients can see of a fast service.
    client_cpu_ms: float | None = None
    # The service's stages (its Server-Timing header), mean ms per timed request: where a request
    # waited under load (`queue`: for the device) and how long each step took beside the others.
    stages_ms: dict[str, float] = field(default_factory=dict)

    @property
    def event_loop_busy(self) -> float | None:
        """The event loop thread's share of the wall time (1.0: it is the bound)."""
        return None if self.event_loop_ms is None else self.event_loop_ms * self.images_per_s / 1000

    @property
    def busy_cores(self) -> float | None:
        return None if self.server_cpu_ms is None else self.server_cpu_ms * self.images_per_s / 1000

    def row(self, case: str) -> list[str]:
        """A table row under THROUGHPUT_HEAD."""

        def fmt(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        return [
            case,
            f"{self.images_per_s:.1f}",
            fmt(self.server_cpu_ms, ".1f"),
            fmt(self.busy_cores, ".1f"),
            fmt(self.event_loop_ms, ".2f"),
            fmt(self.event_loop_busy, ".0%"),
            fmt(self.client_cpu_ms, ".1f"),
            *(fmt(self.stages_ms.get(stage), ".1f") for stage in LOAD_STAGES),
        ]


LOAD_STAGES = ("decode", "queue", "model", "encode")

THROUGHPUT_HEAD = [
    "case",
    "images/s",
    "server CPU ms per image",
    "cores busy",
    "event loop ms per image",
    "event loop busy",
    "client CPU ms per image",
    *(f"{stage} ms" for stage in LOAD_STAGES),
]


def server_timing(header: str) -> dict[str, float]:
    """`a;dur=1.5, b;dur=2` -> {"a": 1.5, "b": 2.0}."""
    stages = {}
    for entry in header.split(","):
        stage, _, ms = entry.strip().partition(";dur=")
        if ms:
            stages[stage] = float(ms)
    return stages


def _client(
    url: str, image: bytes, fields: dict[str, str], count: int, ready: Any, go: Event, out: Any
) -> None:
    import httpx2 as httpx

    with httpx.Client(timeout=300) as client:

        def one() -> dict[str, float]:
            resp = client.post(url, files={"image": ("in.png", image, "image/png")}, data=fields)
            if resp.status_code != 200:
                raise RuntimeError(f"{resp.status_code}: {resp.text[:300]}")
            return server_timing(resp.headers.get("server-timing", ""))

        one()  # the connection and the process warm, untimed
        ready.put(True)
        go.wait()  # every client is ready: the clock starts
        t0, cpu0 = time.perf_counter(), time.process_time()
        totals: Counter[str] = Counter()
        for _ in range(count):
            totals.update(one())
        out.put((t0, time.perf_counter(), totals, (time.process_time() - cpu0) * 1000))


def _collect(box: Any, count: int, procs: Sequence[BaseProcess], deadline: float, what: str) -> list[Any]:
    """`count` items from `box`. Raises RuntimeError when a client process fails or time runs out."""
    items: list[Any] = []
    while len(items) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count - len(items)} of {count} clients were not {what} in time")
        if any(p.exitcode not in (None, 0) for p in procs):
            raise RuntimeError("a client failed (its traceback is above)")
        try:
            items.append(box.get(timeout=0.5))
        except queue.Empty:
            continue
    return items


@contextlib.contextmanager
def _bare_main() -> Iterator[None]:
    """Processes started meanwhile by `spawn` do not import the calling script again. A spawned child
    re-runs its parent's `__main__` module (all but its `if __name__ == "__main__":` block) before its
    target; for bench.py that is torch and the service, about 10 s for 8 children on this project's
    machine (0.3 s without), before every throughput run (not in its figures: their clock starts once
    every client is ready). The clients' code lives here, so they need nothing from it."""
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = saved


def run_clients(
    url: str,
    image: bytes,
    fields: dict[str, str],
    clients: int = 8,
    per_client: int = 4,
    server_pid: int | None = None,
    timeout_s: float = 600,
) -> Throughput:
    """`clients` processes each post the PNG `image` with the form `fields` (multipart, as bench.py's
    other HTTP rows) to `url` `per_client` times in a row after one untimed warm-up. Images per second
    over the span from the first timed start to the last end; with `server_pid`, the server's CPU over
    that span too. Raises RuntimeError when a client fails or does not finish in `timeout_s`."""
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(url, image, fields, per_client, ready, go, out), daemon=True)
        for _ in range(clients)
    ]
    with _bare_main():
        for p in procs:
            p.start()
    deadline = time.monotonic() + timeout_s

    def server_cpu() -> tuple[float | None, float | None]:
        """The server's CPU seconds: all its threads, and its main thread (the event loop's)."""
        return (cpu_s(server_pid), cpu_s(server_pid, server_pid)) if server_pid else (None, None)

    try:
        _collect(ready, clients, procs, deadline, "ready")
        cpu0 = server_cpu()
        go.set()
        spans = _collect(out, clients, procs, deadline, "done")
        cpu1 = server_cpu()
    except BaseException:
        for p in procs:  # the rest may wait for a start that will not come
            p.kill()
        raise
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    images = clients * per_client
    first = min(t0 for t0, _, _, _ in spans)
    last = max(t1 for _, t1, _, _ in spans)
    totals: Counter[str] = Counter()
    for _, _, sums, _ in spans:
        totals.update(sums)
    stages = {stage: ms / images for stage, ms in totals.items()}
    client_cpu = sum(cpu_ms for *_, cpu_ms in spans) / images

    def per_image_ms(before: float | None, after: float | None) -> float | None:
        return None if before is None or after is None else (after - before) * 1000 / images

    return Throughput(
        images / (last - first),
        per_image_ms(cpu0[0], cpu1[0]),
        per_image_ms(cpu0[1], cpu1[1]),
        client_cpu,
        stages,
    )
