"""One bounded queue per device: a fixed number of model runs at a time (one on CPU, whose threads
all serve one run; two on CUDA, each on its own stream, so one request's copies, quantisation and
launch overhead overlap the other's compute), a fixed number waiting, the rest refused.

Work runs on the device's worker threads, off the event loop. A request that times out, or whose
client disconnects, sets its cancel flag: work still queued is dropped before it reaches the model, and
work already running stops at its next tile.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.errors import Cancelled, Overloaded, Timeout

T = TypeVar("T")


class DeviceQueue:
    def __init__(self, device: str, queue_size: int, workers: int = 1) -> None:
        self.device = device
        self.queue_size = queue_size
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"infer-{device}")
        self.in_flight = 0  # waiting + running, counted until the worker is really done with it
        self.running = 0
        self.submitted = 0  # jobs ever queued here
        self._cancels: set[threading.Event] = set()  # of the jobs in flight, for shutdown

    @property
    def waiting(self) -> int:
        return self.in_flight - self.running

    @property
    def cancelled(self) -> int:
        """Jobs in flight whose request gave up (client gone, timed out): dropped when they reach the
        device, or stopped at their next tile when already running."""
        return sum(c.is_set() for c in list(self._cancels))

    def _wrap(self, fn: Callable[[threading.Event], T], cancel: threading.Event) -> Callable[[], T]:
        def job() -> T:
            if cancel.is_set():  # its request already gave up while it waited
                raise Cancelled()
            self.running += 1
            try:
                return fn(cancel)
            finally:
                self.running -= 1

        return job

    async def run(
        self, fn: Callable[[threading.Event], T], timeout_s: float, cancel: threading.Event | None = None
    ) -> T:
        """Run `fn(cancel)` on the device thread. Raises Overloaded when the queue is full, Timeout
        when `timeout_s` passes first, and Cancelled when `cancel` is set before the work started."""
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if self.in_flight >= self.queue_size + self.workers:
            raise Overloaded(
                f"{self.device} queue is full ({self.queue_size} waiting)",
                retry_after_s=max(1, self.in_flight),
            )
        cancel = cancel or threading.Event()
        loop = asyncio.get_running_loop()
        self.in_flight += 1
        self.submitted += 1
        self._cancels.add(cancel)
        future = loop.run_in_executor(self.executor, self._wrap(fn, cancel))

        def done(f: asyncio.Future[T]) -> None:
            self.in_flight -= 1
            self._cancels.discard(cancel)
            if not f.cancelled():
                f.exception()  # retrieved here, so an abandoned job's error is never reported as lost

        future.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, timeout_s))
        except (TimeoutError, asyncio.TimeoutError):
            cancel.set()
            raise Timeout(f"no result within the request timeout ({timeout_s:.1f}s left)") from None
        except asyncio.CancelledError:
            cancel.set()  # the client went away: stop the work too
            raise

    def shutdown(self) -> None:
        """Drop the jobs still waiting and stop the running one at its next tile, so the worker thread
        (which the interpreter joins at exit) ends soon."""
        for cancel in list(self._cancels):
            cancel.set()
        self.executor.shutdown(wait=False, cancel_futures=True)


async def wait_idle(queues: Iterable[DeviceQueue], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Wait until no queue has work in flight, at most `timeout_s`. True when all went idle."""
    queues = list(queues)
    end = time.monotonic() + max(0.0, timeout_s)
    while any(q.in_flight for q in queues):
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(poll_s)
    return True


@contextlib.contextmanager
def switch_interval(ms: float) -> Iterator[None]:
    """Python's GIL switch interval set to `ms` while the service runs, then put back.

    A device thread gives the GIL up around every torch call (a CUDA launch, a copy, an event wait:
    a few dozen per request even with CUDA graphs) and so do the decode and encode threads around
    their C calls. Taking it back while another thread runs Python (the event loop parsing an upload,
    another request's glue) waits until that thread drops it: for as long as the interval, 5 ms by
    default, every time. In-process on a 2-core machine, rrdb-x2 128² beside a thread running Python
    all the time ran at 0.6-1.1 images/s with 5 ms and 4.1-4.7 with 1 ms (17 alone); the Python
    thread kept 68-75% of its pace instead of 95-98%. The service under 4 clients on that machine,
    whose cores the work already fills, moved within its rounds' spread (README, "The GIL")."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(ms / 1000)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
