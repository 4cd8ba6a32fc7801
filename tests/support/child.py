"""Test scripts in a Python process of their own, for what the test run itself cannot show: a
process-wide setting (malloc's), or what is imported first, the test run having imported everything."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import ROOT


def run_python(script: str, *args: str, timeout: float = 120) -> str:
    """What `script` printed, run by this Python with `args` from the repository's root. Fails the test,
    with the end of the script's stderr, when it does not exit 0."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
