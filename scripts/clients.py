"""Concurrent HTTP clients, each in its own process, for throughput figures (`bench.py`'s
"8 clients" column).

Each client is a process as each of the pipelines beside a service would be: client threads in one
Python process share its GIL, and parsing a multi-megabyte PNG answer in httpx costs 15-25 ms of that
process's CPU per request on this project's 2-core machine, so eight threads can cap the figure below
what the service delivers. This module imports no torch: `spawn` starts its children quickly.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing.synchronize import Barrier
from typing import Any


def _client(url: str, image: bytes, fields: dict[str, str], count: int, start: Barrier, out: Any) -> None:
    import httpx2 as httpx

    with httpx.Client(timeout=300) as client:

        def one() -> None:
            resp = client.post(url, files={"image": ("in.png", image, "image/png")}, data=fields)
            if resp.status_code != 200:
                raise RuntimeError(f"{resp.status_code}: {resp.text[:300]}")

        try:
            one()  # the connection and the process warm, untimed
        finally:
            start.wait()  # every client is ready: the clock starts (a failed one still lets the rest go)
        t0 = time.perf_counter()
        for _ in range(count):
            one()
        out.put((t0, time.perf_counter()))


def images_per_s(
    url: str,
    image: bytes,
    fields: dict[str, str],
    clients: int = 8,
    per_client: int = 4,
    timeout_s: float = 600,
) -> float:
    """Images per second that `clients` processes, each posting the PNG `image` with the form `fields`
    (multipart, as bench.py's other HTTP rows) to `url` `per_client` times in a row after one untimed
    warm-up, got together: all requests over the span from the first timed
    start to the last end. Raises RuntimeError when a client fails or does not finish in `timeout_s`."""
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(clients)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(url, image, fields, per_client, start, out), daemon=True)
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    spans = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(spans) < clients:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{clients - len(spans)} of {clients} clients did not finish in {timeout_s:.0f} s"
                )
            if any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError("a client failed (its traceback is above)")
            try:
                spans.append(out.get(timeout=0.5))
            except Exception:  # queue.Empty: look again
                continue
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    first = min(t0 for t0, _ in spans)
    last = max(t1 for _, t1 in spans)
    return clients * per_client / (last - first)
