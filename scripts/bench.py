"""Speed and memory of neural upscaling, side by side with the plain way, in one run.

    python scripts/bench.py                # x4plus- and x2plus-shaped nets + shipped models, 128..512 px
    python scripts/bench.py --large        # adds 1024 px (1024 -> 4096 for x4: the memory bound)
    python scripts/bench.py ~/RealESRGAN_x4plus.pth --models x4plus --sizes 256
    python scripts/bench.py --device cuda  # the GPU table (scripts/benchgpu.py): the cases of GPU_CASES
    python scripts/bench.py --gpu-cases rrdb-x2:64   # the GPU table's code, run on the CPU at a small size

Rows per model and input size:
  reference   plain eager fp32 NCHW whole-image forward (as Real-ESRGAN's inference script runs it)
  ref+io      the same plus PNG decode and encode (what that script does per image)
  engine      the service's engine in-process (app.engine.run_model: the device-resident tile pipeline)
  engine/np   the same model driven window by window by the numpy tiler (what Core ML packages get)
  http        the service over HTTP: a real `python -m app` on 127.0.0.1, decode and encode included
GFLOP/s comes from the analytic multiply-add count, and "of roof" sets it against the same run's dense
matmul speed in the row's precision (fp32 for the plain forward, the engine's for the rest): about the
most a convolution net can reach on this CPU, since oneDNN's convolutions are matmul-shaped work. Peak
RSS is sampled during each row (the server's process for http), and where each http row's time went
(the service's Server-Timing stages). Then the LANCZOS path over HTTP against in-process Pillow, /health
latency while the benchmark ran, the same requests (and the shipped models') against a server left
with glibc's default malloc settings (page faults and CPU per request: app/allocator.py), the GIL's
switch interval (Python's 5 ms against the service's: decode, encode and the engine in-process beside
a thread running Python, and the service from 4 clients), the LANCZOS of a model's output to a size
off its scale (host Pillow against the device resize), an upload's LANCZOS in bands on every core
against Pillow's on one, upload decode times against Pillow's and libpng's (alone and beside a busy
thread), and output encode times per format (these two under the service's malloc settings). With
--device cuda, the GPU table (scripts/benchgpu.py: the service, then CUDA graphs off and the 5 ms GIL
switch interval against the defaults), then the LANCZOS, decode and encode tables on the GPU host.
The benchmark's own process runs under the GIL switch interval the service sets, so the engine
in-process runs as in the service. Nothing here is asserted: it prints what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.backends.base import ModelEntry  # noqa: E402
from app.backends.placement import DTYPES  # noqa: E402
from app.backends.pytorch import PyTorchBackend  # noqa: E402
from app.config import load_settings  # noqa: E402
from app.engine import run_model  # noqa: E402
from app.models import compact, rrdbnet  # noqa: E402
from app.models.architectures import load_file  # noqa: E402
from app.models.descriptor import ModelDescriptor  # noqa: E402
from scripts.clients import THROUGHPUT_HEAD, Throughput, run_clients, server_timing  # noqa: E402
from scripts.localserver import local_server  # noqa: E402
from scripts.rss import PeakRSS, ProcStat, proc_stat  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
# Random-weight nets of the published shapes: RealESRGAN_x4plus / x2plus, realesr-animevideov3 and
# realesr-general-x4v3 (SRVGGNetCompact).
SHAPES = {
    "x4plus": rrdbnet.descriptor(3, 3, 4, 64, 23, 32),
    "x2plus": rrdbnet.descriptor(3, 3, 2, 64, 23, 32),
    "animevideov3": compact.descriptor(3, 3, 4, 64, 16),
    "general-x4v3": compact.descriptor(3, 3, 4, 64, 32),
}
FAMILIES = {"RRDBNet": rrdbnet, "SRVGGNetCompact": compact}
LANCZOS_PNG = {"model": "lanczos", "scale": "2", "format": "png"}  # /upscale's fields for LANCZOS x2
LANCZOS_GENERATE: dict[str, object] = {"hr_scale": 2, "hr_upscaler": "lanczos"}  # /generate's


def timed(fn: Callable[[], object], pid: int | str = "self") -> tuple[float, float]:
    with PeakRSS(pid) as mem:
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
    return seconds, mem.peak


def best_s(fn: Callable[[], object], runs: int = 3) -> float:
    """The fastest of `runs` timed calls, in seconds."""
    return min(timed(fn)[0] for _ in range(runs))


def matmul_roof(dtype: torch.dtype, n: int = 2048) -> float:
    """GFLOP/s of a dense n x n matmul in `dtype` on this CPU (all of torch's threads, best of 5)."""
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    a @ b
    best = best_s(lambda: a @ b, 5)
    return 2 * n**3 / best / 1e9


def test_image(size: int) -> Image.Image:
    """A real photo (Set14 baboon / Set5 butterfly) cropped or tiled to size x size."""
    for path in (DATASETS / "Set14" / "baboon.png", DATASETS / "Set5" / "butterfly.png"):
        if path.exists():
            src = np.asarray(Image.open(path).convert("RGB"))
            reps = (-(-size // src.shape[0]), -(-size // src.shape[1]), 1)
            return Image.fromarray(np.tile(src, reps)[:size, :size])
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def png(img: Image.Image, level: int = 6) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def reference_forward(net: torch.nn.Module, img: np.ndarray) -> np.ndarray:
    """As inference_realesrgan.py on CPU: fp32, NCHW, whole image, no_grad."""
    x = torch.from_numpy(np.transpose(img.astype(np.float32) / 255.0, (2, 0, 1))).unsqueeze(0)
    with torch.no_grad():
        out = net(x).squeeze().float().clamp_(0, 1).numpy()
    return (np.transpose(out, (1, 2, 0)) * 255.0).round().astype(np.uint8)


class WindowsOnly:
    """A runner seen through the Runner protocol alone (no upscale_image): the numpy tiler drives it."""

    def __init__(self, runner: Any) -> None:
        self.scale, self.default_tile, self.size_multiple = (
            runner.scale,
            runner.default_tile,
            runner.size_multiple,
        )
        self.run = runner.run


class Server:
    """`python -m app` on 127.0.0.1 with the given weights folder (scripts/localserver.py)."""

    def __init__(self, weights: Path, env: dict[str, str], name: str = "server") -> None:
        import httpx2 as httpx

        self._ctx = local_server(weights, weights / f"{name}.log", env=env, startup_s=300)
        srv = self._ctx.__enter__()
        self.url, self.proc = srv.url, srv.proc
        self.http = httpx.Client(timeout=600)

    def post(self, data: bytes, **fields: str) -> Any:
        resp = self.http.post(
            f"{self.url}/upscale", files={"image": ("in.png", data, "image/png")}, data=fields
        )
        if resp.status_code != 200:
            raise SystemExit(f"server answered {resp.status_code}: {resp.text[:300]}")
        return resp

    def upscale(self, data: bytes, **fields: str) -> bytes:
        return bytes(self.post(data, **fields).content)

    def generate(self, data: bytes, **fields: object) -> Any:
        """POST /generate, the hires fix's JSON route: `data` as base64, the answer's images too."""
        import base64

        body = {"image": base64.b64encode(data).decode(), **fields}
        resp = self.http.post(f"{self.url}/generate", json=body)
        if resp.status_code != 200:
            raise SystemExit(f"server answered {resp.status_code}: {resp.text[:300]}")
        return resp

    def breakdown(self, data: bytes, repeat: int, **fields: str) -> dict[str, float]:
        """Medians (ms) over `repeat` requests after a warm-up (see `stages_ms`)."""
        self.upscale(data, **fields)
        seen: dict[str, list[float]] = {}
        for _ in range(repeat):
            t0 = time.perf_counter()
            resp = self.post(data, **fields)
            for stage, ms in stages_ms(resp, time.perf_counter() - t0).items():
                seen.setdefault(stage, []).append(ms)
        return {stage: float(np.median(values)) for stage, values in seen.items()}

    def close(self) -> None:
        self.http.close()
        self._ctx.__exit__(None, None, None)


STAGES = ["client", "outside", "budget", "decode", "queue", "model", "encode"]


def stages_ms(resp: Any, client_s: float) -> dict[str, float]:
    """One answer's time in ms: the client's whole request (`client`), what lies outside the service's
    processing time (`outside`: transfer, HTTP parsing and the response, on both ends), and the
    service's stages from its Server-Timing header."""
    client_ms = client_s * 1000
    stages = {"client": client_ms, "outside": client_ms - float(resp.headers["x-processing-ms"])}
    return stages | server_timing(resp.headers["server-timing"])


def breakdown_row(label: str, ms: dict[str, float]) -> list[str]:
    return [label] + [f"{ms[k]:.1f}" if k in ms else "-" for k in STAGES]


def breakdown_table(title: str, rows: list[list[str]]) -> None:
    table(
        title + " (ms, medians): `outside` is the client's time less the service's processing time",
        ["request", *STAGES],
        rows,
    )


class HealthProbe:
    """Polls /health on its own connection while the benchmark runs; latencies in ms."""

    def __init__(self, url: str) -> None:
        import httpx2 as httpx

        self.url, self._stop = url, threading.Event()
        self.ms: list[float] = []
        self._client = httpx.Client(timeout=30)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            t0 = time.perf_counter()
            self._client.get(f"{self.url}/health")
            self.ms.append((time.perf_counter() - t0) * 1000)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.ms


def table(title: str, head: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |", flush=True)


def bench_model(
    name: str,
    desc: ModelDescriptor,
    net: torch.nn.Module,
    sizes: list[int],
    server: Server | None,
    backend: PyTorchBackend,
    weights_file: Path,
    roofs: dict[str, float],
    reference: bool = True,
) -> None:
    """`roofs`: matmul GFLOP/s by precision name (matmul_roof), for the "of roof" column."""
    scale, macs = desc.scale, desc.macs_per_pixel
    entry = ModelEntry(name, "pytorch", weights_file)
    backend.load(entry)
    assert entry.runner is not None and backend.precision is not None, entry.reason
    runner, precision = entry.runner, backend.precision
    reference_forward(net, np.zeros((32, 32, 3), np.uint8))  # warm-up, like the service's
    rows: list[list[str]] = []
    stage_rows: list[list[str]] = []
    for size in sizes:
        img = test_image(size)
        arr = np.asarray(img)
        data = png(img)
        gflop = 2 * macs * size * size / 1e9
        measured: list[tuple[str, float, float]] = []
        if reference:
            measured.append(("reference", *timed(functools.partial(reference_forward, net, arr))))

        def ref_io(data: bytes = data) -> bytes:
            return png(
                Image.fromarray(
                    reference_forward(net, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                )
            )

        if reference:
            measured.append(("ref+io", *timed(ref_io)))
        measured.append(("engine", *timed(functools.partial(run_model, arr, runner, scale, bit_depth=8))))
        by_window = functools.partial(run_model, arr, WindowsOnly(runner), scale, bit_depth=8)
        measured.append(("engine/np", *timed(by_window)))
        if server is not None:
            answers: list[Any] = []

            def post(data: bytes = data, answers: list[Any] = answers, server: Server = server) -> None:
                answers.append(server.post(data, model=name, scale=str(scale)))

            http = timed(post, pid=server.proc.pid)
            measured.append(("http", *http))
            stage_rows.append(breakdown_row(f"{size}²→{size * scale}² PNG", stages_ms(answers[0], http[0])))
        t_ref = measured[0][1] if reference else None
        t_io = measured[1][1] if reference else None
        for row, secs, mem in measured:
            roof = roofs["fp32" if row.startswith("ref") else precision]
            rows.append(
                [
                    f"{size}²→{size * scale}²",
                    row,
                    f"{secs:.3f}",
                    f"{gflop / secs:.0f}",
                    f"{gflop / secs / roof:.0%}",
                    f"{mem:.0f}",
                    f"{t_ref / secs:.2f}x" if t_ref else "-",
                    f"{t_io / secs:.2f}x" if t_io else "-",
                ]
            )
    status = backend.status()
    table(
        f"{name}: {desc.family} x{scale}, "
        + ", ".join(f"{k} {v}" for k, v in desc.hyperparameters.items())
        + f" ({macs / 1e6:.2f} M MAC per input px); "
        f"engine {status.device} {status.precision}, tile {runner.default_tile}",
        ["input", "row", "seconds", "GFLOP/s", "of roof", "peak RSS MB", "vs reference", "vs ref+io"],
        rows,
    )
    if stage_rows:
        breakdown_table(f"{name}: where the http rows' time went", stage_rows)


def bench_lanczos(server: Server, level: int) -> None:
    img = test_image(1024)
    data = png(img, level)
    rows = []

    def local() -> bytes:
        src = Image.open(io.BytesIO(data))
        return png(src.resize((2048, 2048), Image.Resampling.LANCZOS), level)

    local()
    server.upscale(data, model="lanczos", scale="2")
    t_local = best_s(local)
    t_http = best_s(lambda: server.upscale(data, model="lanczos", scale="2"))
    rows.append(["in-process Pillow decode + resize + encode", f"{t_local:.3f}", "1.00x"])
    rows.append(["service over HTTP (model=lanczos)", f"{t_http:.3f}", f"{t_http / t_local:.2f}x"])
    table(
        f"LANCZOS 1024²→2048² PNG (compress level {level}), best of 3", ["path", "seconds", "vs Pillow"], rows
    )
    breakdown_table(
        "LANCZOS over HTTP: where the time went",
        [breakdown_row("1024²→2048² PNG", server.breakdown(data, 5, model="lanczos", scale="2"))],
    )
    load = run_clients(
        f"{server.url}/upscale", data, LANCZOS_PNG, clients=4, per_client=4, server_pid=server.proc.pid
    )
    table(
        "LANCZOS 1024²→2048² PNG, 4 clients (each its own process): the server's host CPU per image",
        THROUGHPUT_HEAD,
        [load.row("1024²→2048² PNG")],
    )


def posting(data: bytes, fields: dict[str, str]) -> Callable[[Server], object]:
    """A request to /upscale, for any server."""
    return lambda srv: srv.post(data, **fields)


def in_a_row(
    send: Callable[[], object], runs: int, pid: int
) -> tuple[float, ProcStat | None, ProcStat | None]:
    """`send()` once (a warm-up), then `runs` times in a row: the wall seconds, and what server process
    `pid` and its main thread (the event loop) counted meanwhile (None where /proc cannot be read)."""
    send()
    process, loop, t0 = proc_stat(pid), proc_stat(pid, pid), time.perf_counter()
    for _ in range(runs):
        send()
    wall = time.perf_counter() - t0
    return wall, grown(process, proc_stat(pid)), grown(loop, proc_stat(pid, pid))


def grown(start: ProcStat | None, end: ProcStat | None) -> ProcStat | None:
    return None if start is None or end is None else end - start


def bench_routes(server: Server, size: int = 768, runs: int = 20) -> None:
    """The hires fix's JSON route (/generate: base64 in and out) beside /upscale (multipart in, the
    PNG out) for the same 768² -> 1536² LANCZOS request: the client's time and the server's event loop
    CPU per request, over `runs` requests in a row from one client."""
    data = png(test_image(size), 1)
    routes: list[tuple[str, Callable[[], object]]] = [
        ("/upscale (multipart, PNG answer)", functools.partial(server.post, data, **LANCZOS_PNG)),
        ("/generate (base64 JSON both ways)", functools.partial(server.generate, data, **LANCZOS_GENERATE)),
    ]
    rows = []
    for name, send in routes:
        wall, _, loop = in_a_row(send, runs, server.proc.pid)
        loop_ms = "-" if loop is None else f"{loop.cpu_s * 1000 / runs:.1f}"
        rows.append([name, f"{wall * 1000 / runs:.1f}", loop_ms])
    table(
        f"LANCZOS {size}²→{size * 2}² by route, means of {runs} in a row",
        ["route", "client ms", "event loop ms per request"],
        rows,
    )


# A malloc tunable at its default value: app/allocator.py then leaves glibc's malloc as it is.
GLIBC_DEFAULTS = {"GLIBC_TUNABLES": "glibc.malloc.perturb=0"}


def bench_allocator(server: Server, work: Path, models: list[tuple[str, int]]) -> None:
    """Requests through the service beside the same service with glibc's default malloc settings
    (app/allocator.py): LANCZOS, then each (model, input side) of `models` (on CPU the shipped ones at
    256²: the others take seconds a request). First in a row from one client, with the server's page
    faults and CPU per request; then (/upscale) from 4 clients at once. The two servers take turns,
    as a machine's speed wanders."""
    other = Server(work, GLIBC_DEFAULTS, name="server-glibc-defaults")
    servers = {"glibc's defaults": other, "the service's": server}
    hires, large = (png(test_image(size), 1) for size in (768, 1024))
    lanczos = [
        ("LANCZOS 768²→1536² PNG /upscale", hires, LANCZOS_PNG),
        ("LANCZOS 1024²→2048² PNG /upscale", large, LANCZOS_PNG),
    ]
    neural = [
        (f"{name} {size}² PNG /upscale", png(test_image(size), 1), {"model": name, "format": "png"})
        for name, size in models
    ]
    generate: tuple[str, Callable[[Server], object]] = (
        "LANCZOS 768²→1536² PNG /generate",
        lambda srv: srv.generate(hires, **LANCZOS_GENERATE),
    )
    sends = [(label, posting(data, fields)) for label, data, fields in lanczos]
    sends += [generate] + [(label, posting(data, fields)) for label, data, fields in neural]
    try:
        one_client(servers, sends, rounds=3, runs=6)
        at_once(servers, lanczos + neural, rounds=2, clients=4)
    finally:
        other.close()


def bench_gil_imaging() -> None:
    """The service's decode of a 1024² PNG upload and PNG encode (level 1) of a 2048² answer, alone and
    beside a thread running Python, under Python's 5 ms GIL switch interval and the service's (medians
    of 9): each of their C calls gives the GIL up and waits to take it back."""
    from app.imaging.decode import decode, probe
    from app.imaging.encode import encode
    from app.imaging.pixels import Picture
    from app.scheduler import switch_interval
    from scripts.benchgpu import median_s

    upload = png(test_image(1024))
    picture = Picture(np.asarray(test_image(512).resize((2048, 2048), Image.Resampling.BICUBIC)))
    steps = {
        "decode 1024² PNG": lambda: decode(probe(upload, 1 << 26)),
        "encode 2048² PNG": lambda: encode(picture, "PNG", quality=1, png_level=1, icc_profile=None, text={}),
    }
    rows = []
    for label, step in steps.items():
        for ms in (5.0, load_settings({}).switch_interval_ms):
            with switch_interval(ms):
                alone = median_s(step, "cpu", 9) * 1000
                with BusyThread():
                    busy = median_s(step, "cpu", 9) * 1000
            rows.append([label, f"{ms:g} ms", f"{alone:.1f}", f"{busy:.1f}"])
    table(
        "Decode and encode beside a thread running Python (ms, medians of 9)",
        ["step", "GIL switch interval", "alone", "beside Python 100% busy"],
        rows,
    )


def bench_gil(server: Server, work: Path, models: list[tuple[str, Path, int]]) -> None:
    """The GIL's switch interval: the engine in-process beside a thread running Python, under Python's
    5 ms and the service's (scripts/benchgpu.py), then the service from 4 clients at once beside the
    same service with UPSCALER_SWITCH_INTERVAL_MS=5: LANCZOS and each (model, weights, input side) of
    `models`, the servers in turn."""
    from scripts import benchgpu

    bench_gil_imaging()
    benchgpu.bench_gil_in_process(models, "cpu")
    other = Server(work, {"UPSCALER_SWITCH_INTERVAL_MS": "5"}, name="server-gil5")
    posts = [("LANCZOS 1024²→2048² PNG /upscale", png(test_image(1024), 1), LANCZOS_PNG)]
    posts += [
        (f"{name} {size}² PNG /upscale", png(test_image(size), 1), {"model": name, "format": "png"})
        for name, _, size in models
    ]
    try:
        at_once({"5 ms": other, "the service's": server}, posts, 3, 4, "The GIL's switch interval", "GIL")
    finally:
        other.close()


def one_client(
    servers: dict[str, Server], sends: list[tuple[str, Callable[[Server], object]]], rounds: int, runs: int
) -> None:
    """`rounds` x `runs` requests of each `send(server)` from one client, the servers in turn."""
    rows = []
    for label, send in sends:
        sums = {name: np.zeros(4) for name in servers}  # wall s, faults, system s, user s
        for _ in range(rounds):
            for name, srv in servers.items():
                wall, grown, _ = in_a_row(functools.partial(send, srv), runs, srv.proc.pid)
                if grown is None:
                    return  # no /proc here
                sums[name] += [wall, grown.minor_faults, grown.system_s, grown.user_s]
        for name, total in sums.items():
            wall_ms, faults, system_ms, user_ms = total / (rounds * runs) * [1000, 1, 1000, 1000]
            figures = [f"{wall_ms:.1f}", f"{faults:.0f}", f"{system_ms:.1f}", f"{user_ms:.1f}"]
            rows.append([label, name, *figures])
    table(
        f"Memory between requests: means of {rounds} x {runs} requests in a row, the two servers in turn",
        ["request", "malloc", "client ms", "page faults", "server system ms", "server user ms"],
        rows,
    )


def at_once(
    servers: dict[str, Server],
    posts: list[tuple[str, bytes, dict[str, str]]],
    rounds: int,
    clients: int,
    title: str = "Memory between requests",
    kind: str = "malloc",
    per_client: int = 4,
) -> None:
    """Each /upscale case from `clients` clients at once (each its own process), `rounds` turns per
    server; the best turn of each server, labelled `kind: name`."""
    rows = []
    for label, data, fields in posts:
        seen: dict[str, list[Throughput]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, srv in servers.items():
                url, pid = f"{srv.url}/upscale", srv.proc.pid
                seen[name].append(
                    run_clients(url, data, fields, clients=clients, per_client=per_client, server_pid=pid)
                )
        for name, runs in seen.items():
            rows.append(max(runs, key=lambda t: t.images_per_s).row(f"{label}, {kind}: {name}"))
    table(f"{title}: {clients} clients at once, the best of {rounds}", THROUGHPUT_HEAD, rows)


def bench_encode(size: int) -> None:
    """Pillow's encoders beside the service's (app/imaging/encode.py) on one real-photo output; the
    service's PNG is checked to decode to the same pixels."""
    from app.imaging.encode import encode
    from app.imaging.pixels import Picture

    img = test_image(size // 4).resize((size, size), Image.Resampling.BICUBIC)
    picture = Picture(np.asarray(img))
    rows = []
    cases = [("PNG", lv, {"compress_level": lv}) for lv in (0, 1, 3, 6, 9)]
    cases += [("JPEG", 95, {"quality": 95}), ("WEBP", 95, {"quality": 95, "method": 4})]
    for fmt, level, params in cases:

        def pillow(fmt: str = fmt, params: dict = params) -> bytes:
            buf = io.BytesIO()
            img.save(buf, fmt, **params)
            return buf.getvalue()

        def service(fmt: str = fmt, level: int = level) -> bytes:
            return encode(picture, fmt, quality=level, png_level=level, icc_profile=None, text={})

        pil_s = best_s(pillow)
        our_s = best_s(service)
        theirs, ours = pillow(), service()
        if fmt == "PNG":
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(ours))), picture.pixels)
        label = f"{fmt} " + ", ".join(f"{k}={v}" for k, v in params.items())
        rows.append(
            [
                label,
                f"{pil_s:.3f}",
                f"{len(theirs) / 1e6:.1f}",
                f"{our_s:.3f}",
                f"{len(ours) / 1e6:.1f}",
                f"{pil_s / our_s:.1f}x",
            ]
        )
    table(
        f"Encoding a {size}² RGB output, best of 3 ({os.cpu_count()} cores)",
        ["format", "Pillow s", "Pillow MB", "service s", "service MB", "speed-up"],
        rows,
    )


def bench_resize(device: str) -> None:
    """A model's float32 output off the target size (a hires fix at 1.5x through an x2 model): to the
    host and Pillow's LANCZOS there, against app's resize_tensor + quantise on `device` (what a GPU
    runner does; on CPU the runner keeps Pillow)."""
    from app.backends.torch_tiles import quantize_tensor, resize_tensor
    from app.imaging.pixels import resized
    from scripts import benchgpu

    rows = []
    for side, out in ((2048, 1536), (1536, 1152)):
        src = np.asarray(test_image(side // 4).resize((side, side), Image.Resampling.BICUBIC))
        x = torch.from_numpy(np.ascontiguousarray(src.transpose(2, 0, 1)))[None].float().div(255).to(device)

        def host(x: torch.Tensor = x, out: int = out) -> np.ndarray:
            arr = x[0].permute(1, 2, 0).contiguous().cpu().numpy()
            return resized(arr, (out, out), 8)

        def on_device(x: torch.Tensor = x, out: int = out) -> np.ndarray:
            y = quantize_tensor(torch, resize_tensor(torch, x, (out, out)), 8)
            return y[0].permute(1, 2, 0).contiguous().cpu().numpy()

        times = {
            "host": benchgpu.median_s(host, device, 5),
            "device": benchgpu.median_s(on_device, device, 5),
        }
        diff = np.abs(host().astype(int) - on_device().astype(int)).max()
        rows.append(
            [
                f"{side}² -> {out}² RGB",
                f"{times['host'] * 1000:.1f}",
                f"{times['device'] * 1000:.1f}",
                f"{times['host'] / times['device']:.1f}x",
                str(diff),
            ]
        )
    table(
        f"LANCZOS of a model's output to a size off its scale, ms, median of 5 (device: {device})",
        ["case", "to the host + Pillow", "resize_tensor on the device", "speed-up", "max level diff"],
        rows,
    )


def bench_bands() -> None:
    """Pillow's LANCZOS of an upload on one core against app/imaging/resample.py's bands on every core
    (both into numpy, as the service needs them), and whether the pixels are the same."""
    from app.imaging.resample import lanczos

    rows = []
    for mode, side, out in (("RGB", 1024, 2048), ("RGBA", 1024, 2048), ("RGB", 768, 1152), ("L", 1024, 4096)):
        img = test_image(side).convert(mode)
        if mode == "RGBA":
            img.putalpha(Image.fromarray(np.asarray(img)[..., 1]))

        def whole(img: Image.Image = img, out: int = out) -> np.ndarray:
            return np.asarray(img.resize((out, out), Image.Resampling.LANCZOS))

        def bands(img: Image.Image = img, out: int = out) -> np.ndarray:
            return lanczos(img, (out, out))

        t_whole = best_s(whole, 5)
        t_bands = best_s(bands, 5)
        same = "yes" if np.array_equal(whole(), bands()) else "NO"
        rows.append(
            [
                f"{mode} {side}² -> {out}²",
                f"{t_whole * 1000:.1f}",
                f"{t_bands * 1000:.1f}",
                f"{t_whole / t_bands:.1f}x",
                same,
            ]
        )
    table(
        f"LANCZOS of an upload, ms, best of 5 ({os.cpu_count()} cores)",
        ["case", "Pillow, one core", "in bands, every core", "speed-up", "same pixels"],
        rows,
    )


class BusyThread:
    """A thread running Python, as the event loop and the model threads do in the service: all the
    time, or `share` of it in 1 ms bursts. A decoder that gives the GIL back and takes it again for
    every block waits on it each time."""

    def __init__(self, share: float = 1.0) -> None:
        self.share = share
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        while not self._stop.is_set():
            end = time.perf_counter() + 0.001
            while time.perf_counter() < end:
                pass
            if self.share < 1.0:
                time.sleep(0.001 * (1.0 - self.share) / self.share)

    def __enter__(self) -> BusyThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench_decode(device: str) -> None:
    """Pillow's decode (pypng for 16-bit colour) into numpy, the service's before app/imaging/pngread.py;
    libpng reading the whole file, and the PNG reader, which inflates with ISA-L and gives libpng the
    scanlines stored; the service's probe + decode. Alone, and beside a thread running Python. From
    here to the end of the run malloc is set as the service sets it (app/allocator.py)."""
    import png as pypng
    from imagecodecs import png_decode

    from app.allocator import reuse_image_buffers
    from app.imaging import pngread
    from app.imaging.decode import decode, probe
    from app.imaging.png16 import read as pypng_read

    def pillow_array(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im)

    malloc = reuse_image_buffers(one_heap=device == "cpu")
    print(f"malloc set as the service sets it: {malloc}")
    big = np.asarray(test_image(1024)).astype(np.uint16) * 257
    buf = io.BytesIO()
    pypng.Writer(1024, 1024, greyscale=False, bitdepth=16).write_array(buf, big.reshape(-1))
    jpeg = io.BytesIO()
    test_image(2048).save(jpeg, "JPEG", quality=90)

    photo = Image.open(DATASETS / "Set14" / "lenna.png").convert("RGB")

    def resized(side: int) -> Image.Image:
        """The photo resized as a whole (LANCZOS): smooth, as generated pictures are."""
        return photo.resize((side, side), Image.Resampling.LANCZOS)

    cases = [
        ("PNG RGB 768², a photo resized (the hires-fix input)", png(resized(768)), pillow_array),
        ("PNG RGB 1024², a photo resized", png(resized(1024)), pillow_array),
        ("PNG RGB 2048², a photo resized", png(resized(2048)), pillow_array),
        ("PNG RGB 2048², a photo tiled", png(test_image(2048)), pillow_array),
        ("PNG 16-bit RGB 1024², tiled (pypng before)", buf.getvalue(), lambda d: pypng_read(d)[0]),
        ("JPEG q90 2048²", jpeg.getvalue(), pillow_array),
    ]
    rows = []
    for label, data, before in cases:

        def ours(data: bytes = data) -> np.ndarray:
            return decode(probe(data, 1 << 26)).pixels

        assert np.array_equal(ours().reshape(-1), np.asarray(before(data))[..., :3].reshape(-1))
        is_png = data[:4] == b"\x89PNG"
        if is_png:
            assert np.array_equal(png_decode(data), pngread.read(data)[0])  # type: ignore[index]
        for busy in (False, True):
            with BusyThread() if busy else contextlib.nullcontext():
                t_before = best_s(functools.partial(before, data), 5)
                t_libpng = best_s(functools.partial(png_decode, data), 5) if is_png else None
                t_reader = best_s(functools.partial(pngread.read, data), 5) if is_png else None
                t_ours = best_s(ours, 5)
            ms = [f"{t * 1000:.1f}" if t is not None else "-" for t in (t_before, t_libpng, t_reader, t_ours)]
            vs_libpng = f"{t_libpng / t_reader:.2f}x" if t_libpng and t_reader else "-"
            rows.append([label, "Python 100%" if busy else "-", *ms, f"{t_before / t_ours:.2f}x", vs_libpng])
    table(
        "Decoding an upload into numpy (ms, best of 5)",
        [
            "input",
            "beside",
            "before",
            "libpng, whole file",
            "PNG reader",
            "service: probe + decode",
            "service vs before",
            "reader vs libpng",
        ],
        rows,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", type=Path, help="more checkpoints to benchmark")
    p.add_argument(
        "--models",
        default="x4plus,x2plus,animevideov3,shipped",
        help=f"{', '.join(SHAPES)}, shipped (comma list)",
    )
    p.add_argument("--sizes", default="128,256,512")
    p.add_argument("--large", action="store_true", help="add 1024 px inputs")
    p.add_argument("--no-http", action="store_true", help="skip the HTTP rows")
    p.add_argument(
        "--no-reference", action="store_true", help="skip the plain forward (it needs ~10 GB at 1024 px, x4)"
    )
    p.add_argument("--precision", default="auto")
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "mps"], help="cuda / mps: the GPU table"
    )
    p.add_argument(
        "--compile", default="", help="GPU table: models (comma list) also timed under torch.compile"
    )
    p.add_argument("--repeat", type=int, default=7, help="GPU table: timed runs per median")
    p.add_argument(
        "--gpu-cases",
        default="",
        help="GPU table: its cases as model:side,... (default: GPU_CASES); with --device cpu, a quick "
        "check of the GPU table's code",
    )
    args = p.parse_args()
    # The engine in-process runs under the GIL switch interval the service sets (app/scheduler.py).
    sys.setswitchinterval(load_settings({}).switch_interval_ms / 1000)
    if args.device != "cpu" or args.gpu_cases:
        return main_gpu(args)
    sizes = [int(s) for s in args.sizes.split(",")] + ([1024] if args.large else [])
    kinds = args.models.split(",")

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="upscaler-bench-"))
    from safetensors.torch import save_file

    models: list[tuple[str, ModelDescriptor, torch.nn.Module, Path]] = []
    for kind in kinds:
        if kind in SHAPES:
            desc = SHAPES[kind]
            net = FAMILIES[desc.family].build(desc).eval()
            path = work / f"{kind}-random.safetensors"
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
            models.append((path.stem, desc, net, path))
    extra = list(args.checkpoints)
    shipped = sorted((ROOT / "weights").glob("*.safetensors")) if "shipped" in kinds else []
    extra = shipped + extra
    for path in extra:
        desc, net, _ = load_file(path)
        dst = work / f"{path.stem}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(dst))
        models.append((path.stem, desc, net, dst))

    backend = PyTorchBackend(device="auto", precision=args.precision)
    if backend.precision is None:
        raise SystemExit(f"PyTorch backend unavailable: {backend.status().reason}")
    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}; engine precision {backend.precision}"
    )
    roofs = {p: matmul_roof(getattr(torch, DTYPES[p])) for p in {"fp32", backend.precision}}
    print(
        "the roof: dense 2048² matmul, "
        + ", ".join(f"{p} {gflops:.0f} GFLOP/s" for p, gflops in sorted(roofs.items()))
    )
    server = None if args.no_http else Server(work, {"UPSCALER_PRECISION": args.precision})
    probe = HealthProbe(server.url) if server else None
    try:
        for name, desc, net, path in models:
            bench_model(name, desc, net, sizes, server, backend, path, roofs, reference=not args.no_reference)
        if server is not None:
            bench_lanczos(server, level=1)
            bench_routes(server)
            bench_allocator(server, work, [(path.stem, 256) for path in shipped])
            bench_gil(server, work, [(path.stem, path, 256) for path in shipped])
    finally:
        health = probe.stop() if probe else []
        if server is not None:
            server.close()
    if health:
        ms = np.asarray(health)
        table(
            "/health while the benchmark ran",
            ["requests", "p50 ms", "p99 ms", "max ms"],
            [
                [
                    str(len(ms)),
                    f"{np.percentile(ms, 50):.1f}",
                    f"{np.percentile(ms, 99):.1f}",
                    f"{ms.max():.1f}",
                ]
            ],
        )
    bench_resize("cpu")
    bench_bands()
    bench_decode("cpu")
    bench_encode(2048)


# (model, input side): the hires-fix case, the x4plus shape small and large, the shipped models.
GPU_CASES = [("x2plus", 768), ("x4plus", 512), ("x4plus", 1024), ("rrdb-x2", 1024), ("rrdb-x4", 1024)]
# (model, input side, factor) off the model's scale: only the stage split is printed for these.
HIRES_OFF_SCALE = [("x2plus", 1024, 1.5)]


def main_gpu(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from scripts import benchgpu

    device = args.device
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="upscaler-bench-"))
    nets: dict[str, tuple[ModelDescriptor, torch.nn.Module, Path]] = {}
    cases = GPU_CASES
    if args.gpu_cases:
        cases = [(kind, int(side)) for kind, side in (c.split(":") for c in args.gpu_cases.split(","))]
    for kind in dict(cases):
        if kind in SHAPES:
            desc = SHAPES[kind]
            net = FAMILIES[desc.family].build(desc).eval()
        else:
            desc, net, _ = load_file(ROOT / "weights" / f"{kind}.safetensors")
        path = work / f"{kind}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
        nets[kind] = (desc, net, path)
    name = torch.cuda.get_device_name() if device == "cuda" else device
    print(f"torch {torch.__version__}, {name}, {os.cpu_count()} host cores", flush=True)
    env = {"UPSCALER_DEVICE": device, "UPSCALER_MAX_OUTPUT_PIXELS": str(1 << 26)}
    server = Server(work, env)
    probe = HealthProbe(server.url)
    rows, stage_rows, load_rows = [], [], []
    try:
        for kind, size in cases:
            desc, net, path = nets[kind]
            img = test_image(size)
            stages, row, load = benchgpu.bench_case(
                kind,
                desc,
                net,
                path,
                size,
                np.asarray(img),
                png(img),
                server,
                device,
                kind in args.compile.split(","),
                args.repeat,
            )
            print("  " + " | ".join(row), flush=True)
            rows.append(row)
            stage_rows.append(breakdown_row(f"{kind} {size}² JPEG", stages))
            load_rows.append(load.row(f"{kind} {size}²→{size * desc.scale}² PNG"))
        # SDXL's hires fix at 1.5x through an x2 model: the LANCZOS after the model runs on the device.
        for kind, size, factor in (c for c in HIRES_OFF_SCALE if c[0] in nets):
            data = png(test_image(size))
            fields = {"model": kind, "scale": str(factor), "format": "jpeg"}
            stages = server.breakdown(data, max(3, args.repeat // 2), **fields)
            stage_rows.append(breakdown_row(f"{kind} {size}² x{factor} JPEG", stages))
        health = np.asarray(probe.stop())
        table(f"The service on {name} (medians of {args.repeat})", benchgpu.HEAD, rows)
        breakdown_table("HTTP with JPEG output: where the time went", stage_rows)
        table(f"{benchgpu.CLIENTS} clients: the server's host CPU per image", THROUGHPUT_HEAD, load_rows)
        print(
            f"\n/health during the run: {len(health)} requests, p50 {np.percentile(health, 50):.1f} ms, "
            f"p99 {np.percentile(health, 99):.1f} ms, max {health.max():.1f} ms"
        )
        # The defaults beside UPSCALER_CUDA_GRAPHS=false and Python's 5 ms GIL switch interval, for the
        # hires fix and the shipped models (the x4plus shape's large answers would take minutes); off
        # CUDA the graphs-off server runs the same forwards.
        on_gpu = [(kind, size, nets[kind][0].scale) for kind, size in cases if kind != "x4plus"]
        benchgpu.bench_settings(server, work, on_gpu, env)
    finally:
        probe.stop()
        server.close()
    # The same in-process, for the shipped models (the Real-ESRGAN shapes' thousand or so launches a
    # forward would make the busy-Python column take minutes eager).
    shipped = [(kind, nets[kind][2], size) for kind, size in cases if kind not in SHAPES]
    benchgpu.bench_gil_in_process(shipped, device)
    bench_resize(device)
    bench_bands()
    bench_decode(device)
    bench_encode(2048)


if __name__ == "__main__":
    main()
