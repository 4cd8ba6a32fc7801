"""The memory estimate is never below what a request really uses: every mode and bit depth through the
LANCZOS path, and the shipped models at x2, x3 (two passes) and x4, measured as the peak RSS of one
upscale in a process of its own (tests/support/memprobe.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT

CASES = [(mode, bits, 768, 2.0, "lanczos") for mode in ("L", "LA", "RGB", "RGBA") for bits in (8, 16)]
CASES += [
    ("RGB", 8, 256, 2.0, "rrdb-x2"),
    ("RGBA", 16, 256, 3.0, "rrdb-x2"),
    ("L", 8, 256, 4.0, "rrdb-x4"),
    ("LA", 16, 256, 4.0, "rrdb-x4"),
]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc for peak RSS")
@pytest.mark.parametrize(("mode", "bits", "size", "scale", "model"), CASES, ids=lambda v: str(v))
def test_memory_estimate_covers_the_measured_peak(
    mode: str, bits: int, size: int, scale: float, model: str
) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.memprobe",
            mode,
            str(bits),
            str(size),
            str(scale),
            model,
            "weights",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["upscaler"] == model
    assert result["peak"] <= result["estimate"], (
        f"{result['peak'] / 2**20:.0f} MiB used, {result['estimate'] / 2**20:.0f} estimated"
    )
