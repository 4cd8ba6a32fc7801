"""The encoders' worker threads (PNG deflate pieces, JPEG strips): one pool of a thread per core, made on
first use and shared, so two encoders never hold two sets of idle threads."""

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
