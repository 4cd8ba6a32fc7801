"""A real `python -m app` on 127.0.0.1 and a free port, for the end-to-end tests and the benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalServer:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], startup_s: float, log: Callable[[], str] = lambda: ""
) -> None:
    """Return once `url`/health/ready answers 200. Raises RuntimeError (with `log()`) when the process
    exits or is not ready within `startup_s`."""
    import httpx2 as httpx

    deadline = time.monotonic() + startup_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready in {startup_s:.0f} s:\n{log()}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)


@contextmanager
def local_server(
    weights_dir: Path, log_path: Path, env: dict[str, str] | None = None, startup_s: float = 120
) -> Iterator[LocalServer]:
    """Start the service, yield once /health/ready answers 200, stop it (SIGTERM, then kill) on exit.

    Raises RuntimeError, with the server's log, when it exits or is not ready within `startup_s`.
    """

    port = free_port()
    full_env = {
        **os.environ,
        "UPSCALER_HOST": "127.0.0.1",
        "UPSCALER_PORT": str(port),
        "UPSCALER_WEIGHTS_DIR": str(weights_dir),
        "UPSCALER_LOG_LEVEL": "warning",
        **(env or {}),
    }
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    server = LocalServer(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_ready(server.url, proc, startup_s, server.log)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
