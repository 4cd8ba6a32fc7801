"""A process's resident memory from /proc (Linux), and a sampler of its peak, for the benchmarks, the
load test and the hostile trial."""

from __future__ import annotations

import threading


def rss_mb(pid: int | str = "self") -> float:
    """VmRSS of `pid` in MB (0.0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRSS:
    """Samples a process's RSS every `interval_s` while the `with` block runs; `.peak` in MB."""

    def __init__(self, pid: int | str = "self", interval_s: float = 0.005) -> None:
        self.pid, self.interval_s, self.peak, self._stop = pid, interval_s, 0.0, threading.Event()

    def __enter__(self) -> PeakRSS:
        self.peak = rss_mb(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
