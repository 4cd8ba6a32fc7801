"""Load test on loopback: concurrent clients send a mix of requests; prints a table and exits 1 on any
5xx (other than 503 `overloaded`, which is the service's documented back-pressure) or lost request.

    python scripts/loadtest.py                               # starts `python -m app` on 127.0.0.1, weights/
    python scripts/loadtest.py --requests 120 --clients 4
    python scripts/loadtest.py --url http://127.0.0.1:8000 --pid 4242    # a running server (loopback only)

The mix: neural /upscale (crops of ../shared/datasets/Set5, 64..128 px, or generated pictures when the
datasets are absent), LANCZOS (`use_realesrgan=false`), /generate JSON, and bad requests (garbage image,
bad scale, wrong content type). A separate poller times GET /health throughout. The server's RSS is read
from /proc/<pid>/status: before the load, after a warm-up batch, at its peak and after the load; it is
"flat" when it grew by less than 30 MB or 10% between the warm-up and the end. Bounded: --requests in
total, no new request after --duration seconds, each request given at most --timeout seconds.
"""

from __future__ import annotations

import argparse
import base64
import io
import ipaddress
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx2 as httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.localserver import local_server  # noqa: E402

SET5 = ROOT.parent / "shared" / "datasets" / "Set5"
KINDS = ("neural", "lanczos", "generate", "bad")
MIX = (0.45, 0.2, 0.2, 0.15)  # share of each kind in KINDS
MB = 1024 * 1024


# -- the requests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request as httpx arguments; `kind` is one of KINDS."""

    kind: str
    path: str
    kwargs: dict


def source_pictures(rng: random.Random, count: int = 12) -> list[bytes]:
    """PNG crops (64..128 px a side) of Set5, or generated pictures when the datasets are absent."""
    files = sorted(SET5.glob("*.png")) if SET5.is_dir() else []
    out = []
    for i in range(count):
        w, h = rng.randint(64, 128), rng.randint(64, 128)
        if files:
            img = Image.open(files[i % len(files)]).convert("RGB")
            left, top = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
            img = img.crop((left, top, left + w, top + h))
        else:
            y, x = np.mgrid[0:h, 0:w]
            noise = np.random.default_rng(i).integers(0, 40, (h, w, 3))
            rgb = np.stack([x * 255 // w, y * 255 // h, (x * y) % 256], -1) + noise
            img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def plan(n: int, seed: int) -> list[Call]:
    """`n` requests in a shuffled, reproducible order."""
    rng = random.Random(seed)
    pictures = source_pictures(rng)
    calls = []
    for kind in rng.choices(KINDS, MIX, k=n):
        png = rng.choice(pictures)
        if kind == "neural":
            scale = rng.choice(["2", "4", "3", "2.5"])
            if rng.random() < 0.7:
                kw = {"files": {"image": ("in.png", png, "image/png")}, "data": {"scale": scale}}
            else:
                kw = {"content": png, "params": {"scale": scale}, "headers": {"Content-Type": "image/png"}}
            calls.append(Call(kind, "/upscale", kw))
        elif kind == "lanczos":
            data = {"scale": rng.choice(["2", "4", "1.5"]), "use_realesrgan": "false"}
            calls.append(
                Call(kind, "/upscale", {"files": {"image": ("in.png", png, "image/png")}, "data": data})
            )
        elif kind == "generate":
            body = {"image": base64.b64encode(png).decode(), "hr_scale": rng.choice([1.5, 2.0]), "seed": 1}
            calls.append(Call(kind, "/generate", {"json": body}))
        else:
            calls.append(Call(kind, "/upscale", rng.choice(bad_requests(png))))
    return calls


def bad_requests(png: bytes) -> list[dict]:
    return [
        {"content": os.urandom(512), "headers": {"Content-Type": "image/png"}},  # 400 invalid_image
        {"files": {"image": ("in.png", png, "image/png")}, "data": {"scale": "0.5"}},  # 400 invalid_parameter
        {"files": {"image": ("in.png", png, "image/png")}, "data": {"scale": "lots"}},  # 422
        {"content": png, "headers": {"Content-Type": "text/plain"}},  # 415
    ]


# -- measuring -----------------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: int = 0
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests only
    lost: list[str] = field(default_factory=list)  # why each lost request was lost


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q / 100 * len(ordered))) - 1))]


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssWatch(threading.Thread):
    """Samples the server's RSS every `interval` seconds and keeps the peak."""

    def __init__(self, pid: int | None, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.stop = threading.Event()

    def now(self) -> int | None:
        value = rss_bytes(self.pid) if self.pid else None
        if value:
            self.peak = max(self.peak, value)
        return value

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.now()


class HealthPoller(threading.Thread):
    """Times GET /health on its own connection while the load runs."""

    def __init__(self, url: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.latencies: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.wait(self.interval):
                t0 = time.perf_counter()
                try:
                    ok = client.get("/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.latencies.append(time.perf_counter() - t0)
                else:
                    self.failures += 1


class Load:
    """Clients share one queue of calls; each client has its own connection. `sample()` (the server's
    RSS) is recorded in `rss_at` when the number of finished requests reaches a checkpoint."""

    def __init__(
        self,
        url: str,
        calls: list[Call],
        timeout: float,
        deadline: float,
        sample: Callable[[], int | None],
        checkpoints: set[int],
    ) -> None:
        self.url, self.calls, self.timeout, self.deadline = url, calls, timeout, deadline
        self.sample, self.checkpoints = sample, checkpoints
        self.tallies: dict[str, Tally] = defaultdict(Tally)
        self.rss_at: dict[int, int | None] = {}
        self.done = 0
        self.lock = threading.Lock()
        self.next = 0

    def take(self) -> Call | None:
        with self.lock:
            if self.next >= len(self.calls) or time.monotonic() >= self.deadline:
                return None
            self.next += 1
            call = self.calls[self.next - 1]
            self.tallies[call.kind].sent += 1
            return call

    def client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
            while (call := self.take()) is not None:
                t0 = time.perf_counter()
                try:
                    status = client.post(call.path, **call.kwargs).status_code
                except httpx.HTTPError as exc:  # connection refused or reset, timeout: sent, never answered
                    status, why = None, f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - t0
                with self.lock:
                    tally = self.tallies[call.kind]
                    if status is None:
                        tally.lost.append(why)
                    else:
                        tally.statuses.append(status)
                        tally.latencies.append(elapsed)
                    self.done += 1
                    if self.done in self.checkpoints:
                        self.rss_at[self.done] = self.sample()

    def run(self, clients: int) -> None:
        threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


# -- the server ----------------------------------------------------------------------------------------


def require_loopback(url: str) -> str:
    """The URL without a trailing slash; exits unless its host is a loopback address or `localhost`.
    Other names are refused unresolved: a DNS lookup would already leave the machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise SystemExit(f"loadtest: {url!r} is not an http(s) URL")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: only localhost, which /etc/hosts answers
        loopback = host.lower() == "localhost" and all(
            ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None)
        )
    if not loopback:
        raise SystemExit(f"loadtest: refusing {url}: only loopback servers (127.0.0.1, ::1, localhost)")
    return url.rstrip("/")


@contextmanager
def started_server(weights_dir: Path, startup_s: float = 180) -> Iterator[tuple[str, int]]:
    """`python -m app` on 127.0.0.1 and a free port; yields (url, pid) once /health/ready says 200."""
    with tempfile.NamedTemporaryFile(prefix="loadtest-server-", suffix=".log", delete=False) as tmp:
        log_path = Path(tmp.name)
    try:
        with local_server(weights_dir, log_path, startup_s=startup_s) as srv:
            yield srv.url, srv.proc.pid
    except RuntimeError as exc:
        raise SystemExit(f"loadtest: {exc}") from None
    finally:
        print(f"server log: {log_path}")


# -- the report ----------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.0f}"  # NaN: no sample


def report(load: Load, health: HealthPoller, rss: dict[str, int | None], warmup: int, wall_s: float) -> int:
    """Prints the tables; returns the exit status (1 on any 5xx but 503, or any lost request)."""
    head = f"{'kind':<10}{'sent':>6}{'done':>6}{'2xx':>6}{'4xx':>6}{'503':>6}{'5xx':>6}{'lost':>6}"
    print(f"\n{head}{'p50 ms':>9}{'p99 ms':>9}")
    everything = Tally()
    rows = [(kind, load.tallies[kind]) for kind in KINDS if kind in load.tallies]
    for _, t in rows:
        everything.sent += t.sent
        everything.statuses += t.statuses
        everything.latencies += t.latencies
        everything.lost += t.lost
    for kind, t in [*rows, ("all", everything)]:
        s = t.statuses
        counts = (
            t.sent,
            len(s),
            sum(200 <= c < 300 for c in s),
            sum(400 <= c < 500 for c in s),
            s.count(503),
            sum(c >= 500 and c != 503 for c in s),
            len(t.lost),
        )
        cells = "".join(f"{c:>6}" for c in counts)
        print(f"{kind:<10}{cells}{ms(percentile(t.latencies, 50)):>9}{ms(percentile(t.latencies, 99)):>9}")
    h = health.latencies
    print(
        f"\n/health during the load: {len(h)} answered, {health.failures} failed, "
        f"p50 {ms(percentile(h, 50))} ms, p99 {ms(percentile(h, 99))} ms, max {ms(percentile(h, 100))} ms"
    )
    unexpected = sum(400 <= c < 500 for k, t in rows if k != "bad" for c in t.statuses)
    unexpected += sum(200 <= c < 300 for c in load.tallies["bad"].statuses) if "bad" in load.tallies else 0
    print(f"unexpected answers (4xx to a good request, 2xx to a bad one): {unexpected}")
    warm, after = load.rss_at.get(warmup), rss["after"]
    if rss["before"] is None or after is None:
        print("server RSS: not measured (give --pid with --url)")
    elif warm is None:
        print(f"server RSS MB: before {rss['before'] / MB:.0f}, after {after / MB:.0f}; warm-up not reached")
    else:
        growth = after - warm
        flat = growth < max(30 * MB, 0.10 * warm)
        print(
            f"server RSS MB: before {rss['before'] / MB:.0f}, after warm-up ({warmup}) {warm / MB:.0f}, "
            f"peak {(rss['peak'] or 0) / MB:.0f}, after {after / MB:.0f}; "
            f"growth since warm-up {growth / MB:+.1f} MB: {'RSS flat' if flat else 'RSS GROWING'}"
        )
        trail = ", ".join(f"{n}: {v / MB:.0f}" for n, v in sorted(load.rss_at.items()) if v)
        print(f"server RSS MB after n requests: {trail}")
    not_sent = len(load.calls) - everything.sent
    print(f"wall {wall_s:.1f} s" + (f"; {not_sent} requests not sent (time cap)" if not_sent else ""))
    failed = sum(c >= 500 and c != 503 for c in everything.statuses) + len(everything.lost)
    for why in sorted(set(everything.lost))[:5]:
        print(f"lost: {why}")
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server on loopback (default: start one here)")
    p.add_argument("--pid", type=int, help="with --url: the server's process id, for its RSS")
    p.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=300, help="no new request after this many seconds")
    p.add_argument("--timeout", type=float, default=120, help="seconds one request may take")
    p.add_argument("--warmup", type=int, default=100, help="requests before the RSS baseline")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.requests < 1 or args.clients < 1:
        p.error("--requests and --clients must be at least 1")
    warmup = max(1, min(args.warmup, args.requests // 2))
    calls = plan(args.requests, args.seed)

    @contextmanager
    def server() -> Iterator[tuple[str, int | None]]:
        if args.url:
            url = require_loopback(args.url)
            try:
                ready = httpx.get(f"{url}/health/ready", timeout=10).status_code == 200
            except httpx.HTTPError as exc:
                raise SystemExit(f"loadtest: no server at {url}: {exc}") from None
            if not ready:
                raise SystemExit(f"loadtest: {url} is not ready (GET /health/ready is not 200)")
            yield url, args.pid
        else:
            with started_server(args.weights_dir) as (url, pid):
                yield url, pid

    with server() as (url, pid):
        origin = f"started here, pid {pid}" if not args.url else f"pid {pid or 'unknown'}"
        print(f"loadtest: {len(calls)} requests, {args.clients} clients, {url} ({origin})")
        watch, health = RssWatch(pid), HealthPoller(url)
        rss: dict[str, int | None] = {"before": watch.now()}
        checkpoints = {warmup} | {round(len(calls) * k / 10) for k in range(1, 11)}
        t0 = time.monotonic()
        load = Load(url, calls, args.timeout, t0 + args.duration, watch.now, checkpoints)
        watch.start()
        health.start()
        load.run(args.clients)
        wall = time.monotonic() - t0
        time.sleep(1.0)  # let the last responses' buffers go before the final reading
        rss["after"] = watch.now()
        rss["peak"] = watch.peak or None
        watch.stop.set()
        health.stop.set()
        health.join()
    return report(load, health, rss, warmup, wall)


if __name__ == "__main__":
    sys.exit(main())
