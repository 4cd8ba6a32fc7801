"""The benchmark's concurrent clients (scripts/clients.py), each its own process, against a real
`python -m app`: every request counted, the server's CPU read from /proc, a failing client reported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.clients import THROUGHPUT_HEAD, run_clients
from scripts.localserver import LocalServer, local_server
from tests.support.http import scrape, value
from tests.support.images import gradient_image, png_bytes

# Large enough that the server's CPU over the run is many of /proc's 10 ms clock ticks.
PNG = png_bytes(gradient_image(512, 384))


@pytest.fixture
def server(weights_dir: Path, tmp_path: Path) -> Iterator[LocalServer]:
    with local_server(weights_dir, tmp_path / "server.log", startup_s=60) as srv:
        yield srv


def served(server: LocalServer) -> float:
    """/upscale requests answered 200 so far."""
    import httpx2 as httpx

    with httpx.Client(base_url=server.url) as client:
        return value(scrape(client), "upscaler_requests_total", method="POST", route="/upscale", status="200")


@pytest.mark.slow
def test_clients_in_processes_count_every_image_and_read_the_server_cpu(server: LocalServer) -> None:
    fields = {"model": "lanczos", "scale": "2", "format": "png"}
    load = run_clients(
        f"{server.url}/upscale", PNG, fields, clients=2, per_client=3, server_pid=server.proc.pid
    )
    assert served(server) == 2 * (3 + 1)  # the timed requests and one warm-up each
    assert load.images_per_s > 0
    assert load.client_cpu_ms is not None and load.client_cpu_ms > 0
    assert set(load.stages_ms) >= {"decode", "encode"}
    if sys.platform == "linux":
        assert load.server_cpu_ms is not None and load.event_loop_ms is not None
        assert 0 < load.event_loop_ms <= load.server_cpu_ms
    row = load.row("case")
    assert len(row) == len(THROUGHPUT_HEAD) and row[0] == "case"


@pytest.mark.slow
def test_a_failing_client_is_reported(server: LocalServer) -> None:
    with pytest.raises(RuntimeError, match="client failed"):
        run_clients(f"{server.url}/upscale", PNG, {"scale": "99"}, clients=2, per_client=1, timeout_s=60)


def test_spawned_clients_do_not_run_the_calling_script_again(tmp_path: Path) -> None:
    """A script's top level (bench.py's: torch and the service) runs once, not once more per client."""
    marks = tmp_path / "marks"
    script = tmp_path / "caller.py"
    script.write_text(
        "import multiprocessing as mp, os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        f"with open({str(marks)!r}, 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n"
        "from scripts.clients import _bare_main\n"
        "if __name__ == '__main__':\n"
        "    with _bare_main():\n"
        "        child = mp.get_context('spawn').Process(target=print, args=('child ran',))\n"
        "        child.start()\n"
        "    child.join()\n"
        "    sys.exit(child.exitcode)\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "child ran" in run.stdout
    assert len(marks.read_text().split()) == 1
