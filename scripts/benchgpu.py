"""The GPU table (`scripts/bench.py --device cuda`, or `mps`): every path of a case side by side in one
run, the limit first.

Columns per case (model shape, input size):
  limit       pure fp16 channels_last forward of a tensor already on the device (no host work at all)
  compiled    the same under torch.compile, and the engine as UPSCALER_COMPILE=1 runs it (--compile
              names the cases; the compile itself is untimed here, its seconds are printed)
  realesrgan  Real-ESRGAN's way: fp16 NCHW whole image, uint8 -> float on the host, float32 back to
              the host and quantised there (RealESRGANer.enhance without its pre/post padding)
  engine      app.engine.run_model in-process: the device-resident tile pipeline, uint8 in and out
  http png / http jpeg   one client, a real `python -m app` on 127.0.0.1 on the same device
  /generate   the same for the hires fix's JSON route: the PNG in and out as base64
  8 clients   images/s of 8 concurrent clients, each its own process (PNG out; scripts/clients.py),
              beside the limit's images/s (1 / limit)
  GPU MB      peak memory the engine's run allocated on the device (torch's allocator)
A second table splits the HTTP JPEG request: the service's stages from its Server-Timing header, and
what lies outside its processing time (transfer, HTTP parsing and the response, on both ends). A third
shows the server's host CPU per image while the 8 clients ran: all its threads, and its event loop's
thread alone (every request passes through it: at 100% busy it is the bound, not the GPU), and the
mean of each of the service's stages meanwhile. Then the defaults against UPSCALER_CUDA_GRAPHS=false and
against Python's 5 ms GIL switch interval (UPSCALER_SWITCH_INTERVAL_MS=5): 8 clients against the three
servers in turn, and the engine in-process beside a thread running Python.
Seconds are medians after a warm-up. Nothing is asserted: it prints what it measured.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.backends.base import ModelEntry
from app.backends.pytorch import PyTorchBackend
from app.config import load_settings
from app.engine import run_model
from app.models.descriptor import ModelDescriptor
from scripts.clients import Throughput, run_clients

CLIENTS = 8
LOAD_S = 2.0  # the clients' timed span, about: enough images that the start and end are a small part


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def median_s(fn: Callable[[], object], device: str, repeat: int) -> float:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def realesrgan_way(net: torch.nn.Module, img: np.ndarray, device: str) -> np.ndarray:
    """As RealESRGANer.enhance runs a whole image in half precision."""
    x = img.astype(np.float32) / 255.0
    t = torch.from_numpy(np.transpose(x, (2, 0, 1))).float().unsqueeze(0).to(device).half()
    with torch.no_grad():
        out = net(t)
    y = out.data.squeeze().float().cpu().clamp_(0, 1).numpy()
    return (np.transpose(y, (1, 2, 0)) * 255.0).round().astype(np.uint8)


def limit_s(
    net: torch.nn.Module, desc: ModelDescriptor, size: int, device: str, compile_net: bool, repeat: int
) -> tuple[float, float | None]:
    """The pure forward's seconds, and the compiled forward's (None without `compile_net`)."""
    fast = copy.deepcopy(net).eval().to(device).half()
    fast = fast.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = (
        torch.rand(1, desc.in_ch, size, size, device=device)
        .half()
        .contiguous(memory_format=torch.channels_last)
    )
    with torch.inference_mode():
        t_limit = median_s(lambda: fast(x), device, repeat)
        if not compile_net:
            return t_limit, None
        compiled = torch.compile(fast)
        t0 = time.perf_counter()
        compiled(x)
        sync(device)
        print(f"  {desc.family} x{desc.scale} {size}²: torch.compile took {time.perf_counter() - t0:.0f} s")
        return t_limit, median_s(lambda: compiled(x), device, repeat)


def engine_s(
    name: str, weights_file: Path, image: np.ndarray, device: str, repeat: int, compile_net: bool = False
) -> tuple[float, float]:
    """The engine's seconds in-process (the service's own loader and runner, compiled as
    UPSCALER_COMPILE=1 does with `compile_net`), and its peak GPU MB."""
    entry = ModelEntry(name, "pytorch", weights_file)
    PyTorchBackend(device=device, compile=compile_net).load(entry)
    if compile_net:
        print(f"  {name}: UPSCALER_COMPILE start-up: {entry.meta.get('compiled')}", flush=True)
    runner = entry.runner
    assert runner is not None, entry.reason
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds = median_s(lambda: run_model(image, runner, float(runner.scale), bit_depth=8), device, repeat)
    return seconds, torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")


def bench_case(
    name: str,
    desc: ModelDescriptor,
    net: torch.nn.Module,
    weights_file: Path,
    size: int,
    image: np.ndarray,
    png_data: bytes,
    server: Any,
    device: str,
    compile_net: bool,
    repeat: int,
) -> tuple[dict[str, float], list[str], Throughput]:
    """The case's row of the GPU table, and where its HTTP JPEG request's time went (ms, medians)."""
    scale = desc.scale
    t_limit, t_compiled = limit_s(net, desc, size, device, compile_net, repeat)
    nchw = copy.deepcopy(net).eval().to(device).half()
    t_realesrgan = median_s(lambda: realesrgan_way(nchw, image, device), device, repeat)
    nchw.cpu()
    t_engine, peak_mb = engine_s(name, weights_file, image, device, repeat)
    t_engine_c = engine_s(name, weights_file, image, device, repeat, True)[0] if compile_net else None
    if device == "cuda":
        torch.cuda.empty_cache()

    def http(fmt: str) -> Callable[[], bytes]:
        return lambda: server.upscale(png_data, model=name, scale=str(scale), format=fmt)

    t_png = median_s(http("png"), device, max(3, repeat // 2))
    t_jpeg = median_s(http("jpeg"), device, max(3, repeat // 2))
    t_generate = median_s(
        lambda: server.generate(png_data, hr_scale=scale, hr_upscaler=name), device, max(3, repeat // 2)
    )
    stages = server.breakdown(png_data, max(3, repeat // 2), model=name, scale=str(scale), format="jpeg")
    fields = {"model": name, "scale": str(scale), "format": "png"}
    limit_ips = 1.0 / t_limit
    load = run_clients(
        f"{server.url}/upscale",
        png_data,
        fields,
        clients=CLIENTS,
        per_client=max(4, round(LOAD_S * limit_ips / CLIENTS)),
        server_pid=server.proc.pid,
    )
    ips = load.images_per_s
    gflop = 2 * desc.macs_per_pixel * size * size / 1e9
    return (
        stages,
        [
            f"{name} {size}²→{size * scale}²",
            f"{t_limit:.4f} s ({gflop / t_limit / 1000:.0f} TFLOP/s)",
            f"{t_compiled:.4f} s / engine {t_engine_c:.4f} s" if t_compiled and t_engine_c else "-",
            f"{t_realesrgan:.4f} s ({t_realesrgan / t_limit:.2f}x)",
            f"{t_engine:.4f} s ({t_engine / t_limit:.2f}x)",
            f"{t_png:.4f} s ({t_png / t_limit:.2f}x)",
            f"{t_jpeg:.4f} s ({t_jpeg / t_limit:.2f}x)",
            f"{t_generate:.4f} s ({t_generate / t_limit:.2f}x)",
            f"{ips:.1f} / {limit_ips:.1f} ({ips / limit_ips:.0%})",
            f"{peak_mb:.0f}",
        ],
        load,
    )


HEAD = [
    "case",
    "limit: fp16 channels_last forward, input on the device",
    "compiled: limit / engine",
    "Real-ESRGAN's way",
    "engine in-process",
    "HTTP, PNG out",
    "HTTP, JPEG out",
    "HTTP /generate (base64 PNG both ways)",
    f"{CLIENTS} clients: images/s vs the limit's",
    "engine peak GPU MB",
]


def bench_settings(server: Any, work: Path, models: list[tuple[str, int, int]], env: dict[str, str]) -> None:
    """8 clients of each (model, input side, scale) in `models` against `server` (the defaults) and, in
    turn, against the same service with UPSCALER_CUDA_GRAPHS=false and with Python's own GIL switch
    interval (UPSCALER_SWITCH_INTERVAL_MS=5); says whether a model's capture failed in `server` (its
    log: the `server.log` of `work`)."""
    from scripts.bench import Server, at_once, png, test_image

    others = {
        "graphs off": Server(work, {**env, "UPSCALER_CUDA_GRAPHS": "false"}, name="server-eager"),
        "GIL 5 ms": Server(work, {**env, "UPSCALER_SWITCH_INTERVAL_MS": "5"}, name="server-gil5"),
    }
    posts = [
        (f"{model} {side}²→{side * scale}² PNG", png(test_image(side)), {"model": model, "scale": str(scale)})
        for model, side, scale in models
    ]
    try:
        servers = {**others, "shipped": server}
        at_once(servers, posts, 2, CLIENTS, "CUDA graphs and the GIL", "server", per_client=12)
    finally:
        for other in others.values():
            other.close()
    if env.get("UPSCALER_DEVICE") != "cuda":
        print("Not on CUDA: the graphs-off server ran the same eager forwards.")
        return
    failed = [line for line in (work / "server.log").read_text().splitlines() if "CUDA graphs off" in line]
    print("\n".join(failed) if failed else "No capture failed (no model fell back to eager).")


def images_per_s(
    fn: Callable[[], object], pool: ThreadPoolExecutor, threads: int, busy: float, count: int
) -> float:
    """`threads` of `pool`'s threads each run `fn` `count` times at once, beside a thread running
    Python `busy` of the time (none at 0); images per second."""
    from scripts.bench import BusyThread

    gate = threading.Barrier(threads)

    def work() -> None:
        gate.wait()
        for _ in range(count):
            fn()

    with BusyThread(busy) if busy else contextlib.nullcontext():
        t0 = time.perf_counter()
        for job in [pool.submit(work) for _ in range(threads)]:
            job.result()
        return threads * count / (time.perf_counter() - t0)


# (device threads, share of a Python thread): the service runs two device threads on CUDA, one on CPU.
GIL_LOADS = {"cuda": ((1, 0.0), (2, 0.0), (2, 0.33), (2, 1.0)), "cpu": ((1, 0.0), (1, 0.33), (1, 1.0))}


def bench_gil_in_process(models: list[tuple[str, Path, int]], device: str) -> None:
    """The engine in-process for each (name, weights, input side), with UPSCALER_CUDA_GRAPHS off and on
    (on CUDA) and under Python's GIL switch interval (5 ms) and the service's: images/s from the
    service's device threads (kept throughout, as graphs are per thread), alone and beside a thread
    running Python a third of the time and all of it. Every torch call gives the GIL up and takes it
    back, and beside a thread running Python each taking back waits up to the interval."""
    from app.scheduler import switch_interval
    from scripts.bench import table, test_image

    if not models:
        return
    loads = GIL_LOADS["cuda" if device == "cuda" else "cpu"]
    intervals = (5.0, load_settings({}).switch_interval_ms)
    rows = []
    for name, weights, side in models:
        img = np.asarray(test_image(side))
        for graphs in (False, True) if device == "cuda" else (False,):
            entry = ModelEntry(name, "pytorch", weights)
            PyTorchBackend(device=device, cuda_graphs=graphs).load(entry)
            runner = entry.runner
            assert runner is not None, entry.reason

            one = functools.partial(run_model, img, runner, float(runner.scale), bit_depth=8)

            with ThreadPoolExecutor(loads[-1][0]) as pool:
                images_per_s(one, pool, loads[-1][0], 0.0, 3)  # each thread's first use, and its capture
                for ms in intervals:
                    with switch_interval(ms):
                        rates = [images_per_s(one, pool, n, busy, 20 if busy < 1 else 2) for n, busy in loads]
                    row = [f"{name} {side}²", *(["on" if graphs else "off"] if device == "cuda" else [])]
                    rows.append([*row, f"{ms:g} ms", *(f"{r:.1f}" for r in rates)])
            del entry, runner
            if device == "cuda":
                torch.cuda.empty_cache()
    head = ["case", *(["CUDA graphs"] if device == "cuda" else []), "GIL switch interval"]
    head += [
        f"{n} thread{'s' * (n > 1)}" + (f" + Python {busy:.0%} busy" if busy else "") for n, busy in loads
    ]
    table(f"The engine in-process, images/s ({device})", head, rows)
