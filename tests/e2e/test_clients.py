"""Real clients against a real `python -m app`: AUTOMATIC1111's `webuiapi`, this repository's Python
client (sync and async) and its folder CLI `upscale`."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from upscaler_client import AsyncClient, Client, UpscalerError

from scripts.localserver import local_server
from tests.support.images import gradient_image, png_bytes
from tests.support.paths import ROOT

KEY = "e2e-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shipped models (weights/), with an API key."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with local_server(ROOT / "weights", log, env={"UPSCALER_API_KEY": KEY}, startup_s=120) as srv:
        yield srv.url


@pytest.mark.slow
def test_webuiapi_client_talks_to_the_a1111_routes(server: str) -> None:
    webuiapi = pytest.importorskip("webuiapi")
    host, port = server.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    api.set_auth("webui", KEY)  # A1111's --api-auth style: the key as the password
    names = [u["name"] for u in api.get_upscalers()]
    assert names[:3] == ["None", "Lanczos", "Nearest"] and {"rrdb-x2", "rrdb-x4"} <= set(names)
    img = gradient_image(48, 32)
    by_factor = api.extra_single_image(img, upscaler_1="rrdb-x2", upscaling_resize=2)
    assert by_factor.image.size == (96, 64) and "rrdb-x2 (pytorch)" in by_factor.info
    to_size = api.extra_single_image(
        img, resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=50, upscaler_1="rrdb-x4"
    )
    assert to_size.image.size == (100, 50) and "rrdb-x4" in to_size.info
    batch = api.extra_batch_images([img, img.convert("L")], upscaler_1="Lanczos", upscaling_resize=3)
    assert [i.size for i in batch.images] == [(144, 96), (144, 96)]
    with pytest.raises(RuntimeError) as info:
        api.txt2img(prompt="a castle")
    assert info.value.args[0] == 501 and "/generate" in info.value.args[1]


@pytest.mark.slow
def test_python_client_sync_and_async(server: str) -> None:
    data = png_bytes(gradient_image(40, 30))
    with Client(server, api_key=KEY) as client:
        health = client.health()
        assert health.ready and {"rrdb-x2", "rrdb-x4"} <= set(health.serving)
        result = client.upscale(data, scale=4)
        assert (result.upscaler, result.output_size, result.fallback_reason) == ("rrdb-x4", (160, 120), None)
        assert list(result.timings) == ["budget", "decode", "queue", "model", "encode"]
        with Image.open(io.BytesIO(result.image)) as produced:
            assert produced.size == (160, 120)
        hires = client.generate([data, data], hr_scale=1.5, prompt="a cat")
        assert len(hires.images) == 2 and hires.output_size == (64, 48) and hires.info["prompt"] == "a cat"
        assert hires.timings["model"] > 0  # summed over both images
    with Client(server, api_key="wrong") as client, pytest.raises(UpscalerError) as info:
        client.upscale(data)
    assert info.value.status == 401 and info.value.type == "unauthorized"

    async def run() -> tuple[str, str]:
        async with AsyncClient(server, api_key=KEY) as client:
            one, two = await asyncio.gather(client.upscale(data, model="lanczos"), client.upscale(data))
            return one.upscaler, two.upscaler

    assert asyncio.run(run()) == ("lanczos", "rrdb-x2")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "upscaler_client.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "UPSCALER_API_KEY": KEY},
        check=False,
    )


@pytest.mark.slow
def test_cli_upscales_a_tree_resumes_and_reports_failures(server: str, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    gradient_image(40, 30).save(src / "a.png")
    gradient_image(30, 20).save(src / "sub" / "b.jpg", quality=90)
    gradient_image(20, 20, "L").save(src / "sub" / "deeper" / "c.bmp")
    (src / "notes.txt").write_text("not an image: not listed")
    out = tmp_path / "out"

    first = cli(str(src), "-o", str(out), "--url", server, "--scale", "2", "--jobs", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr + first.stdout
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert made == ["a.png", "sub/b.jpg", "sub/deeper/c.png"]  # BMP comes back as PNG
    with Image.open(out / "sub" / "b.jpg") as produced:
        assert produced.format == "JPEG" and produced.size == (60, 40)
    assert "done 3, skipped 0 (already there), failed 0" in first.stdout
    assert "upscalers: rrdb-x2 x3" in first.stdout
    assert "img/s" in first.stderr  # the progress bar, with its rate

    (src / "broken.png").write_bytes(b"\x89PNG but nothing else")
    second = cli(str(src), "-o", str(out), "--url", server, "--scale", "2", cwd=tmp_path)
    assert second.returncode == 1
    assert "done 0, skipped 3 (already there), failed 1" in second.stdout
    assert "broken.png: 400 invalid_image" in second.stdout
    assert not list(out.rglob(".*.part"))


def test_client_imports_without_torch_or_the_server() -> None:
    code = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "fastapi", "starlette", "app", "numpy", "PIL"}:
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import upscaler_client, upscaler_client.cli
print(sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "fastapi", "app", "numpy", "PIL"}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().replace("'", '"')) == []
