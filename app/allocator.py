"""glibc malloc, set once at start-up so that the buffers of one request are reused by the next.

Every request allocates buffers of a few MB to a few hundred MB (the upload, the decoded pixels, the
resized image, the filtered PNG rows and the deflate output; on CPU the model's activations, 128 MiB
for one 32-feature convolution at 1024²), frees them, and the next request allocates them again.
glibc serves a block above its mmap threshold with a fresh mapping and unmaps it at free(), and gives
back to the kernel the free memory at the top of a heap once it is more than its trim threshold.
Either way the next request's buffers are new pages, which the kernel faults in and zeroes one by
one. glibc raises both thresholds by itself, but only up to 32 MiB and 64 MiB, only as mapped blocks
are freed, and how far it gets depends on what the process happened to serve first.

So this stops mapping blocks of their own (M_MMAP_MAX 0: blocks come from the heaps) and lets a heap
keep up to 1 GiB free (M_TRIM_THRESHOLD) rather than giving it back. When the models run on the CPU it
also keeps one heap for all threads (M_ARENA_MAX 1): a worker thread's heap of its own cannot grow past
64 MiB, and glibc maps the larger blocks anyway, as the activations of the model's thread are. One
heap has a cost: the threads take turns at its lock, and with 4 clients at once LANCZOS served 3-7%
fewer images a second than under glibc's defaults, against 3-20% more for the shipped models. On CUDA
and MPS the activations are on the device and every thread keeps its own heap, so the host's share of
a request, with more threads beside it, does not pay that.

Memory still returns to the kernel past 1 GiB, and what is kept is never more than what the requests
in flight used at once, which the memory budget (app/memory.py) bounds: the process's peak is
unchanged; its size after the peak stays while it serves. Once no request has held memory for a few
seconds, `give_back` returns the free memory of the heaps to the kernel (malloc_trim(3)), so an idle
service is small again. The page faults, system CPU and time per request against glibc's defaults are in the
README ("Memory between requests"), from `scripts/bench.py`.

An operator's own MALLOC_ARENA_MAX / MALLOC_MMAP_MAX_ / MALLOC_MMAP_THRESHOLD_ /
MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_ or glibc.malloc tunables are left as they are. Nothing is done
on other C libraries (musl, macOS, Windows), whose allocators work differently. No maintained package
does this: it is mallopt(3) and malloc_trim(3) through ctypes.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
from collections.abc import Mapping

log = logging.getLogger("app.allocator")

M_TRIM_THRESHOLD = -1  # mallopt(3)'s parameter numbers, from <malloc.h>
M_MMAP_MAX = -4
M_ARENA_MAX = -8
KEEP_FREE = 1 << 30  # the free memory a heap keeps (mallopt takes an int: at most 2 GiB - 1)
OPERATOR_VARIABLES = (
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc, else None. Looked up once: platform.libc_ver reads
    the Python executable's file, and the budget's idle hook asks after every busy spell."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


def why_not(environ: Mapping[str, str]) -> str | None:
    """Why the thresholds are left alone here (None: they can be set)."""
    if glibc() is None:
        return "not glibc"
    if any(name in environ for name in OPERATOR_VARIABLES) or "glibc.malloc." in environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return "the environment sets malloc's own tuning"
    return None


def reuse_image_buffers(*, one_heap: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """Set malloc up as the module's docstring says (`one_heap`: the models run on the CPU); returns
    whether it was set. Call it before the worker threads start: a thread keeps the heap it first
    allocated from, and glibc fixes its heap count the first time it looks."""
    reason = why_not(environ)
    libc = glibc()
    if reason is None and libc is not None:
        # mallopt returns 1 on success. Either threshold also ends glibc's own adjustment of them.
        settings = [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_FREE)] + ([(M_ARENA_MAX, 1)] if one_heap else [])
        if all(libc.mallopt(param, value) == 1 for param, value in settings):
            log.debug("malloc: heaps keep up to %d MiB free; one heap: %s", KEEP_FREE >> 20, one_heap)
            return True
        reason = "mallopt refused"
    log.debug("malloc left as it is: %s", reason)
    return False


def give_back() -> bool:
    """Return the free memory of every heap to the kernel (malloc_trim(3)), for an idle service; glibc
    only. Returns whether any was returned."""
    libc = glibc()
    return libc is not None and bool(libc.malloc_trim(0))
