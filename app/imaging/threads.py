"""The imaging worker threads (PNG filter blocks and deflate pieces, JPEG strips, LANCZOS bands): one pool
of a thread per core, made on first use and shared, so two users never hold two sets of idle threads;
and how work is cut into pieces for it."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="encode")
        return _pool


def edges(total: int, pieces: int, step: int = 1) -> list[int]:
    """Where `total` items (rows, bytes) are cut into about `pieces` equal pieces: ascending from 0 to
    `total`, the inner cuts on multiples of `step`, none repeated (so no piece is empty, unless
    `total` is 0: one empty piece)."""
    return [*sorted({total * i // pieces // step * step for i in range(pieces)}), total]
