"""app/allocator.py: image-sized buffers freed and allocated again reuse memory instead of faulting in
fresh pages, counted by the kernel (getrusage's minor faults) in a child process of their own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app import allocator
from tests.support.paths import ROOT

GLIBC = allocator.why_not({}) is None

ROUNDS = """
import resource, sys
from app.allocator import reuse_image_buffers
tuned = reuse_image_buffers({}) if sys.argv[1] == "tuned" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
total = 0
for size in (6 << 20, 96 << 20):  # a 1536² RGB image; 32 features at 768² in float32 (72 MiB)
    first = [bytearray(size), bytearray(size // 3)]
    del first
    before = faults()
    for _ in range(10):
        a, b = bytearray(size), bytearray(size // 3)  # bytearray writes every page it gets
        del a, b
    total += faults() - before
print(tuned, total)
"""


def faults_in_child(mode: str) -> tuple[bool, int]:
    done = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    tuned, total = done.stdout.split()
    return tuned == "True", int(total)


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's (this C library is not)")
def test_reuse_image_buffers_stops_the_page_faults_of_each_request() -> None:
    tuned, faults = faults_in_child("tuned")
    untuned, before = faults_in_child("default")
    assert tuned and not untuned
    pages = 10 * (6 + 2 + 96 + 32) * 256  # 4 KiB pages the rounds allocate in all
    assert before > pages // 100, "glibc's default thresholds already reused these buffers"
    assert faults < pages // 1000


KEPT = """
from app.allocator import give_back, reuse_image_buffers
def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))
assert reuse_image_buffers({})
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
    done = subprocess.run(
        [sys.executable, "-c", KEPT], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    kept, after, given_back = done.stdout.split()
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
    assert allocator.reuse_image_buffers(environ) is False
