"""glibc malloc's two thresholds, set once at start-up so that image buffers reuse memory.

Every request allocates buffers of a few to a few tens of MB (the upload, the decoded pixels, the
resized image, the filtered PNG rows and the deflate output, the model's tensors on CPU), frees them,
and the next request allocates them again. glibc serves a block above its mmap threshold with a fresh
mapping and unmaps it at free(), and gives back to the kernel any free memory above its trim threshold
at the top of a heap. Either way the next request's buffers are new pages, which the kernel faults in
and zeroes one by one. glibc raises both thresholds by itself, up to 32 MiB and 64 MiB, but only as
mapped blocks are freed, and how far it gets depends on what the process happened to serve first. A
768² -> 1536² LANCZOS request, repeated, took 6,500 page faults, 19 ms of system time and 76 ms at the
client, against 43 faults, 1.7 ms and 54 ms with the thresholds below, on this project's 2-core machine
(`scripts/bench.py --models none` prints both, the two servers taking turns).

This sets the thresholds at the values glibc's own adjustment would end at, from the start: blocks up
to 32 MiB come from the heaps and are reused, and each heap keeps up to 64 MiB free rather than giving
it back. Larger blocks (a 2048² float32 image is 48 MiB) are still mapped per request. An operator's own
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ or glibc.malloc tunables are left as they are. Nothing
is done on other C libraries (musl, macOS, Windows), whose allocators work differently. There is no
maintained package for this: it is two mallopt(3) calls through ctypes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Mapping

log = logging.getLogger("app.allocator")

M_TRIM_THRESHOLD = -1  # mallopt(3)'s parameter numbers, from <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, the most mallopt accepts
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # where glibc's adjustment puts it beside that mmap threshold
OPERATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def why_not(environ: Mapping[str, str]) -> str | None:
    """Why the thresholds are left alone here (None: they can be set)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    if any(name in environ for name in OPERATOR_VARIABLES) or "glibc.malloc." in environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return "the environment sets malloc's own tuning"
    return None


def reuse_image_buffers(environ: Mapping[str, str] = os.environ) -> bool:
    """Set the thresholds (see the module's docstring); returns whether they were set."""
    reason = why_not(environ)
    if reason is None:
        libc = ctypes.CDLL(None, use_errno=True)
        # mallopt returns 1 on success; the mmap threshold first, as it also stops glibc's adjustment.
        if (
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        ):
            log.debug(
                "malloc: mmap threshold %d MiB, trim threshold %d MiB",
                MMAP_THRESHOLD >> 20,
                TRIM_THRESHOLD >> 20,
            )
            return True
        reason = "mallopt refused"
    log.debug("malloc thresholds left as they are: %s", reason)
    return False
