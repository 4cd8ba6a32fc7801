"""app/allocator.py: image-sized buffers freed and allocated again reuse memory instead of faulting in
fresh pages, counted by the kernel (getrusage's minor faults) in a child process of their own."""

from __future__ import annotations

import pytest

from app import allocator
from tests.support.child import run_python

GLIBC = allocator.why_not({}) is None

ROUNDS = """
import resource, sys, threading
from app.allocator import reuse_image_buffers
mode = sys.argv[1]
if mode != "default":
    assert reuse_image_buffers(one_heap=mode == "one heap", environ={})
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def rounds(size, out):  # on a worker thread, as the service's decode, encode and model threads run
    first = [bytearray(size), bytearray(size // 3)]
    del first
    before = faults()
    for _ in range(10):
        a, b = bytearray(size), bytearray(size // 3)  # bytearray writes every page it gets
        del a, b
    out.append(faults() - before)
out = []
for size in (6 << 20, 96 << 20):  # a 1536² RGB image; 32 features at 768² in float32 (72 MiB)
    worker = threading.Thread(target=rounds, args=(size, out))
    worker.start()
    worker.join()
print(*out)
"""
PAGES = {"image": 10 * (6 + 2) * 256, "activations": 10 * (96 + 32) * 256}  # 4 KiB pages allocated


def faults_in_child(mode: str) -> dict[str, int]:
    """Page faults of the rounds in a child with malloc set up as `mode` says, per kind of buffer."""
    return dict(zip(PAGES, map(int, run_python(ROUNDS, mode, timeout=60).split()), strict=True))


@pytest.mark.skipif(not GLIBC, reason="malloc's settings are glibc's (this C library is not)")
def test_reuse_image_buffers_stops_the_page_faults_of_each_request() -> None:
    default, own_heaps, one_heap = (faults_in_child(m) for m in ("default", "own heaps", "one heap"))
    for kind, pages in PAGES.items():
        assert default[kind] > pages // 100, f"glibc's defaults already reused the {kind} buffers"
        assert one_heap[kind] < pages // 1000
    assert own_heaps["image"] < PAGES["image"] // 1000
    # A thread's own heap cannot hold a block over 64 MiB: glibc maps it, and faults it in, each time.
    assert own_heaps["activations"] > PAGES["activations"] // 100


KEPT = """
from app.allocator import give_back, reuse_image_buffers
def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))
assert reuse_image_buffers(one_heap=True, environ={})
base = rss_mib()
blocks = [bytearray(40 << 20) for _ in range(5)]  # 200 MiB, every page written
small = bytearray(1 << 16)  # allocated after them: they are not at the top of the heap
del blocks
kept = rss_mib() - base
given_back = give_back()
print(kept, rss_mib() - base, given_back)
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's (this C library is not)")
def test_give_back_returns_what_the_heaps_kept() -> None:
    kept, after, given_back = run_python(KEPT, timeout=60).split()
    assert int(kept) >= 180, "freed blocks went back to the kernel at once: nothing to reuse"
    assert given_back == "True" and int(after) < 20


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"MALLOC_MMAP_MAX_": "65536"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
    ],
)
def test_reuse_image_buffers_leaves_an_operators_own_tuning(environ: dict[str, str]) -> None:
    assert allocator.why_not(environ) is not None
    assert allocator.reuse_image_buffers(one_heap=True, environ=environ) is False
