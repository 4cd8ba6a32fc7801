"""A process's resident memory and CPU time from /proc (Linux), and a sampler of its peak memory, for
the benchmarks, the load test and the hostile trial."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass


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


@dataclass(frozen=True)
class ProcStat:
    """What /proc/<pid>/stat counts for a process (or one of its threads) since it started."""

    minor_faults: int  # pages the kernel mapped in on first touch (zeroed or from the page cache)
    user_s: float
    system_s: float

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s

    def __sub__(self, before: ProcStat) -> ProcStat:
        """What was counted between two readings, `before` and this one."""
        return ProcStat(
            self.minor_faults - before.minor_faults,
            self.user_s - before.user_s,
            self.system_s - before.system_s,
        )


def proc_stat(pid: int, thread: int | None = None) -> ProcStat | None:
    """/proc's counters of process `pid`, or of its thread `thread` (its main thread is `pid` itself);
    None where /proc has no such file (the process gone, or not Linux)."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return ProcStat(int(fields[7]), int(fields[11]) / tick, int(fields[12]) / tick)  # minflt, utime, stime


def cpu_s(pid: int, thread: int | None = None) -> float | None:
    """User + system CPU seconds of `proc_stat(pid, thread)`, None where it is None."""
    stat = proc_stat(pid, thread)
    return None if stat is None else stat.cpu_s
