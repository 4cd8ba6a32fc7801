"""Hostile clients against a real server on loopback: every case of the trial, each bounded in count
and time, printing a table (case, status, seconds, server RSS before / peak / after, healthy after).
Exits 1 on any status a case does not document (a 500 above all: 503 overloaded and 504 timeout are
the documented answers to what cannot be served in time or memory), a request with no answer where
one is due, a server that is not healthy after a case, a peak RSS above the memory budget, or a
traceback or 500 in the server's log.

    .venv/bin/python scripts/hostile.py                 # starts python -m app on 127.0.0.1 (weights/)
    .venv/bin/python scripts/hostile.py --skip-sigterm  # keep the server up at the end

Loopback only; it stops by itself (every case has a time limit; the whole run takes about a minute).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.imaging.pngwrite import chunk  # noqa: E402
from scripts.crafted import pixel_bomb, scan_bomb  # noqa: E402
from scripts.localserver import local_server  # noqa: E402
from scripts.rss import PeakRSS, rss_mb  # noqa: E402

MB = 1024 * 1024
# The trial's budget: 4096² 16-bit RGBA -> 8192² (estimated at about 8 GB) does not fit at all;
# 2048² -> 4096² (about 2 GB) fits twice, so four at once share it.
BUDGET_MB = 4500
SETTINGS = {
    "UPSCALER_MEMORY_BUDGET_MB": str(BUDGET_MB),
    "UPSCALER_REQUEST_TIMEOUT_S": "60",
    "UPSCALER_READ_TIMEOUT_S": "2",
    "UPSCALER_MAX_CONNECTIONS": "128",
    "UPSCALER_MAX_BATCH": "16",
    "UPSCALER_QUEUE_SIZE": "8",
    "UPSCALER_SHUTDOWN_GRACE_S": "30",
    "UPSCALER_LOG_LEVEL": "warning",
}


# -- hostile inputs -----------------------------------------------------------------------------------


def small_png(w: int = 16, h: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def metadata_bomb() -> bytes:
    """63 zTXt chunks, each 1 MB of text compressed to ~1 KB."""
    data = small_png()
    bomb = chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"a" * MB, 9))
    return data[:33] + bomb * 63 + data[33:]


def many_frames_gif(frames: int = 5000) -> bytes:
    first = Image.new("P", (16, 16))
    rest = [Image.new("P", (16, 16), i % 256) for i in range(frames - 1)]
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=rest)
    return buf.getvalue()


def multipage_tiff(pages: int = 100) -> bytes:
    buf = io.BytesIO()
    images = [Image.new("RGB", (64, 64), (i, i, i)) for i in range(pages)]
    images[0].save(buf, "TIFF", save_all=True, append_images=images[1:])
    return buf.getvalue()


def huge_headers() -> dict[str, bytes]:
    """Files whose headers claim enormous sizes, with almost no pixel data."""
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    jpeg = bytearray(io.BytesIO().getvalue())
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    jpeg = bytearray(buf.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    bmp = bytearray(
        b"BM"
        + struct.pack("<IHHI", 54, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, 50000, 50000, 1, 24, 0, 0, 0, 0, 0, 0)
    )
    gif = (
        b"GIF89a"
        + struct.pack("<HH", 65000, 65000)
        + b"\x00\x00\x00"
        + b"\x2c"
        + struct.pack("<HHHH", 0, 0, 65000, 65000)
        + b"\x00\x02\x02\x44\x01\x00\x3b"
    )
    webp_buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(webp_buf, "WEBP", lossless=False)
    webp = bytearray(webp_buf.getvalue())  # VP8: frame size at bytes 26..30 (14 bits each)
    webp[26:30] = struct.pack("<HH", 16383, 16383)
    # A baseline TIFF by hand: 60000 x 60000 gray, one strip of 16 bytes.
    entries = [(256, 4, 60000), (257, 4, 60000), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8)]
    entries += [(278, 4, 60000), (279, 4, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in entries)
    tiff = b"II*\x00" + struct.pack("<I", 8 + 16) + b"\0" * 16 + ifd + struct.pack("<I", 0)
    return {
        "png": png,
        "jpeg": bytes(jpeg),
        "bmp": bytes(bmp),
        "gif": gif,
        "webp": bytes(webp),
        "tiff": tiff,
    }


def flat_png16(side: int = 4096) -> bytes:
    import png as pypng

    buf = io.BytesIO()
    row = np.full(side * 4, 30000, np.uint16)
    pypng.Writer(side, side, greyscale=False, alpha=True, bitdepth=16, compression=9).write(
        buf, (row for _ in range(side))
    )
    return buf.getvalue()


# -- the cases ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    statuses: list[str]
    ok: bool
    note: str = ""


def post_image(url: str, data: bytes, timeout: float = 60, **fields: str) -> httpx.Response:
    return httpx.post(
        f"{url}/upscale",
        files={"image": ("x", data, "application/octet-stream")},
        data=fields,
        timeout=timeout,
    )


def expect(resp_statuses: list[int], allowed: set[int], note: str = "") -> Outcome:
    return Outcome([str(s) for s in resp_statuses], all(s in allowed for s in resp_statuses), note)


def raw(url: str, payload: bytes, read_s: float, close_after_send: bool = False) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        if close_after_send:
            return b""
        sock.settimeout(read_s)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            chunks.append(b"(still open)")
        return b"".join(chunks)


def request_head(target: str, length: int) -> str:
    return f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n\r\n"


def client_closed(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("upscaler_requests_total{") and 'status="499"' in line
        )
    )


def cases(url: str) -> dict[str, Callable[[], Outcome]]:
    def bomb() -> Outcome:
        r = post_image(url, metadata_bomb(), model="lanczos")
        return Outcome(
            [str(r.status_code)],
            r.status_code == 200 and len(r.content) < 4 * MB,
            f"{len(r.content)} bytes out",
        )

    def pixels() -> Outcome:
        eight, sixteen = (post_image(url, pixel_bomb(20 * 1024, depth=d), model="lanczos") for d in (8, 16))
        return Outcome(
            [str(eight.status_code), str(sixteen.status_code)],
            eight.status_code == 200 and sixteen.status_code == 400,
            sixteen.json()["error"]["message"] if sixteen.status_code == 400 else "",
        )

    def scans() -> Outcome:
        r = post_image(url, scan_bomb(4096), model="lanczos")
        message = r.json()["error"]["message"] if r.status_code == 400 else ""
        return Outcome([str(r.status_code)], r.status_code == 400, message)

    def gif() -> Outcome:
        return expect([post_image(url, many_frames_gif(), model="lanczos").status_code], {200, 400, 413})

    def tiff() -> Outcome:
        return expect([post_image(url, multipage_tiff(), model="lanczos").status_code], {200})

    def headers() -> Outcome:
        return expect(
            [post_image(url, data).status_code for data in huge_headers().values()], {400, 413, 415}
        )

    def parts() -> Outcome:
        files = [("image", ("a.png", small_png(), "image/png"))] + [
            (f"f{i}", ("x", b"x", "text/plain")) for i in range(500)
        ]
        r = httpx.post(f"{url}/upscale", files=files, data={f"t{i}": "1" for i in range(10)}, timeout=30)
        return expect([r.status_code], {400, 413, 422})

    def four_at_once(side: int, allowed: set[int]) -> Outcome:
        data = flat_png16(side)
        results: list[int] = []

        def one() -> None:
            results.append(post_image(url, data, timeout=120, model="lanczos", scale="2").status_code)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        return expect(sorted(results), allowed, f"{len(data) // 1024} KB upload, 4 at once")

    def memory_trial() -> Outcome:  # larger than the whole budget: refused from the header
        return four_at_once(4096, {413})

    def memory_shared() -> Outcome:  # two fit at once: the others wait for their memory
        return four_at_once(2048, {200})

    def nested() -> Outcome:
        body = '{"image": ' + "[" * 10000 + "]" * 10000 + "}"
        r = httpx.post(
            f"{url}/generate", content=body, headers={"Content-Type": "application/json"}, timeout=30
        )
        return expect([r.status_code], {422})

    def batch() -> Outcome:
        b64 = base64.b64encode(small_png(256, 256)).decode()
        r = httpx.post(f"{url}/generate", json={"images": [b64] * 200}, timeout=60)
        return expect([r.status_code], {413})

    def echo() -> Outcome:
        r = post_image(url, small_png(), model="m" * 10_000)
        return Outcome(
            [str(r.status_code)], r.status_code == 400 and len(r.text) < 600, f"{len(r.text)} bytes"
        )

    def repeated() -> Outcome:
        files = [
            ("image", ("a.png", small_png(), "image/png")),
            ("image", ("b.png", small_png(), "image/png")),
        ]
        return expect([httpx.post(f"{url}/upscale", files=files, timeout=30).status_code], {400})

    def slow_upload() -> Outcome:
        head = (
            b"POST /upscale HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
        )
        answer = raw(url, head + b"\x89PNG", read_s=10)
        return Outcome(
            [answer[9:12].decode(errors="replace") or "closed"], answer.startswith(b"HTTP/1.1 408")
        )

    def stalled() -> Outcome:
        host, port = url.removeprefix("http://").split(":")
        socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(100)]
        for s in socks:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        time.sleep(3.5)
        closed = 0
        for s in socks:
            s.settimeout(0.5)
            with contextlib.suppress(TimeoutError, ConnectionError):
                closed += s.recv(10) == b""
            s.close()
        return Outcome([f"{closed}/100 closed"], closed == 100)

    def endless_head() -> Outcome:  # header lines for ever: cut after 16 KiB, nothing held
        host, port = url.removeprefix("http://").split(":")
        line = b"X-A: " + b"a" * 1000 + b"\r\n"
        sent = 0
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            with contextlib.suppress(ConnectionError, TimeoutError):
                while sent < 256 * MB:
                    s.sendall(line * 64)
                    sent += len(line) * 64
        return Outcome([f"cut after {sent / MB:.1f} MB"], sent < 8 * MB)

    def gone_upload() -> Outcome:
        before = client_closed(url)
        head = (
            b"POST /upscale HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 50000\r\n\r\n"
        )
        raw(url, head + b"\x89PNG" * 100, read_s=0, close_after_send=True)
        time.sleep(0.5)
        after = client_closed(url)
        return Outcome([f"499 x{after - before}"], after - before == 1)

    def gone_work() -> Outcome:
        before = client_closed(url)
        big = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (768, 768, 3), dtype=np.uint8)).save(
            big, "PNG"
        )
        body = big.getvalue()
        head = request_head("/upscale?scale=4", len(body))
        raw(url, head.encode() + body, read_s=0, close_after_send=True)
        time.sleep(2.0)
        after = client_closed(url)
        return Outcome([f"499 x{after - before}"], after - before == 1)

    def gone_response() -> Outcome:
        data = small_png(1024, 1024)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(request_head("/upscale?model=lanczos&scale=4", len(data)).encode() + data)
            first = s.recv(1024)  # the answer starts; leave in the middle of it
        return Outcome([first[9:12].decode(errors="replace")], first.startswith(b"HTTP/1.1 200"))

    return {
        "metadata bomb (63 x 1 MB zTXt)": bomb,
        "pixel-data bombs (20 GB of zeros past a 16 x 12 image, 8 and 16 bits)": pixels,
        "progressive JPEG of 2647 scans (4096², 200 KB)": scans,
        "GIF with 5000 frames": gif,
        "multi-page TIFF (100 pages)": tiff,
        "huge-dimension headers (PNG JPEG BMP GIF WebP TIFF)": headers,
        "multipart with 500 parts": parts,
        "flat 4096² 16-bit RGBA, LANCZOS x2, 4 at once": memory_trial,
        "flat 2048² 16-bit RGBA, LANCZOS x2, 4 at once": memory_shared,
        "JSON nested 10000 deep": nested,
        "/generate with 200 images": batch,
        "10 KB model name": echo,
        "two image parts": repeated,
        "slow upload (body stalls)": slow_upload,
        "100 connections stalled in their headers": stalled,
        "a request head that never ends (header lines)": endless_head,
        "disconnect mid-upload": gone_upload,
        "disconnect mid-work": gone_work,
        "disconnect mid-response": gone_response,
    }


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/live", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def sigterm_under_load(url: str, proc: object) -> tuple[Outcome, float]:
    """4 requests in flight, then SIGTERM: each is answered (200, or 503 shutting_down) and exit is 0."""
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (384, 384, 3), dtype=np.uint8)).save(
        data, "PNG"
    )
    results: list[str] = []

    def one() -> None:
        try:
            results.append(str(post_image(url, data.getvalue(), timeout=120, scale="4").status_code))
        except httpx.TransportError:
            results.append("refused")

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    for t in threads:
        t.join(150)
    code = proc.wait(timeout=120)  # type: ignore[attr-defined]
    ok = code == 0 and all(r in ("200", "503") for r in results) and "200" in results
    return Outcome([*sorted(results), f"exit {code}"], ok), time.monotonic() - t0


def run(url: str, pid: int, proc: object | None) -> int:
    rows, failed = [], []
    baseline = rss_mb(pid)
    for name, case in cases(url).items():
        before = rss_mb(pid)
        t0 = time.monotonic()
        with PeakRSS(pid) as peak:
            try:
                outcome = case()
            except Exception as exc:  # a case that could not complete is a failure, not a crash
                outcome = Outcome([type(exc).__name__], False, str(exc)[:80])
        seconds = time.monotonic() - t0
        alive = healthy(url)
        over = peak.peak - baseline > BUDGET_MB
        rows.append(
            [
                name,
                " ".join(outcome.statuses),
                f"{seconds:.1f}",
                f"{before:.0f}",
                f"{peak.peak:.0f}",
                f"{rss_mb(pid):.0f}",
                "yes" if alive else "NO",
            ]
        )
        if not (outcome.ok and alive) or over:
            failed.append(f"{name}: {outcome.statuses} {outcome.note}")
    if proc is not None:
        before = rss_mb(pid)
        with PeakRSS(pid) as peak:
            outcome, seconds = sigterm_under_load(url, proc)
        rows.append(
            [
                "SIGTERM with 4 requests in flight",
                " ".join(outcome.statuses),
                f"{seconds:.1f}",
                f"{before:.0f}",
                f"{peak.peak:.0f}",
                "-",
                "exited",
            ]
        )
        if not outcome.ok:
            failed.append(f"SIGTERM: {outcome.statuses}")
    print(f"\nserver RSS at start {baseline:.0f} MB, memory budget {BUDGET_MB} MB\n")
    print("| case | status | seconds | RSS before MB | peak MB | after MB | healthy after |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if failed:
        print("\nFAILED:\n  " + "\n  ".join(failed))
        return 1
    print(f"\nall {len(rows)} cases answered as documented")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-sigterm", action="store_true", help="do not end the server with SIGTERM")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with local_server(ROOT / "weights", log, env=SETTINGS, startup_s=120) as srv:
            code = run(srv.url, srv.proc.pid, None if args.skip_sigterm else srv.proc)
            text = log.read_text()
        tracebacks = text.count("Traceback")
        fivehundreds = sum(
            1 for line in text.splitlines() if line.startswith("{") and json.loads(line).get("status") == 500
        )
        print(f"server log: {tracebacks} tracebacks, {fivehundreds} responses with status 500")
        return 1 if code or tracebacks or fivehundreds else 0


if __name__ == "__main__":
    sys.exit(main())
