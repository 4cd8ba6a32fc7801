"""The per-request memory estimate, the budget (setting or auto) and the 413 it causes."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.backends.base import ModelEntry
from app.config import SettingsError, load_settings
from app.memory import MIB, budget_bytes, estimate_bytes, total_memory_bytes
from tests.conftest import ClientFactory
from tests.support.images import gradient_image, png_bytes
from tests.support.stubs import StubRunner, add_stub

PNG = png_bytes(gradient_image(40, 30))


def entry(scale: int = 2, tile: int = 0, precision: str = "fp32", device: str = "cpu") -> ModelEntry:
    runner = SimpleNamespace(scale=scale, default_tile=tile, precision=precision, device=device)
    return ModelEntry(name="m", backend="pytorch", file=Path("m.pth"), runner=runner)


def estimate(w: int, h: int, factor: float, e: ModelEntry | None, **kw: int) -> int:
    target = (round(w * factor), round(h * factor))
    return estimate_bytes(
        w,
        h,
        target,
        factor,
        e,
        tile=kw.get("tile"),
        pad=kw.get("pad", 16),
        max_pixels=kw.get("max_pixels", 1 << 40),
    )


def test_estimate_bytes_by_hand_one_whole_image_pass() -> None:
    # 10x10 -> 20x20, 4 channels of 16 bits (the defaults): source 10*10*4 samples at 24 bytes; the pass
    # holds input + output float32 and 3 maps of 64 features at the output size; the finish is smaller.
    source = 10 * 10 * 4 * 24
    pass_buffers = (100 + 400) * 4 * 4
    activations = int(100 * 4 * 64 * 4 * 3 * 1.5)  # with the measured overhead of a real forward
    assert estimate(10, 10, 2.0, entry()) == source + pass_buffers + activations


def test_estimate_bytes_lanczos_is_source_and_target() -> None:
    assert estimate(10, 10, 2.0, None) == 10 * 10 * 4 * 24 + 20 * 20 * 4 * 24


def test_estimate_bytes_grows_with_size_passes_and_tile() -> None:
    small, large = estimate(100, 100, 2.0, entry()), estimate(200, 200, 2.0, entry())
    assert large > 3 * small
    assert estimate(100, 100, 4.0, entry(scale=2)) > estimate(100, 100, 2.0, entry(scale=2))  # two passes
    tiled = estimate(512, 512, 2.0, entry(), tile=64)
    assert tiled < estimate(512, 512, 2.0, entry(), tile=0)
    assert estimate(512, 512, 2.0, entry(tile=64)) == tiled  # the runner's tile when the setting is unset


def test_estimate_bytes_precision_and_device() -> None:
    fp32 = estimate(256, 256, 4.0, entry(scale=4))
    fp16 = estimate(256, 256, 4.0, entry(scale=4, precision="fp16"))
    cuda = estimate(256, 256, 4.0, entry(scale=4, device="cuda"))
    assert cuda < fp16 < fp32  # activations on the GPU are not host memory


def test_estimate_bytes_stops_passes_at_max_pixels() -> None:
    capped = estimate(100, 100, 8.0, entry(scale=2), max_pixels=400 * 400)
    assert capped < estimate(100, 100, 8.0, entry(scale=2))


def test_total_memory_bytes_reads_meminfo_and_cgroup_limits(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemFree:  10 kB\nMemTotal:  2048 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert total_memory_bytes(meminfo, cgroup) == 2048 * 1024
    (cgroup / "memory.max").write_text("max\n")  # cgroup v2 without a limit
    assert total_memory_bytes(meminfo, cgroup) == 2048 * 1024
    (cgroup / "memory.max").write_text("1048576\n")
    assert total_memory_bytes(meminfo, cgroup) == 1048576
    (cgroup / "memory.max").write_text("99999999999\n")  # above the machine: no real limit
    assert total_memory_bytes(meminfo, cgroup) == 2048 * 1024
    assert (total_memory_bytes(tmp_path / "absent", tmp_path / "absent") or 0) > 0  # sysconf


def test_budget_bytes_setting_or_half_of_memory() -> None:
    assert budget_bytes(100) == 100 * MIB
    assert budget_bytes(0, total=8 * 1024 * MIB) == 4 * 1024 * MIB
    assert budget_bytes(0) > 0


@pytest.mark.parametrize("value", ["-1", "lots"])
def test_memory_budget_setting_bad_value_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match="UPSCALER_MEMORY_BUDGET_MB"):
        load_settings({"UPSCALER_MEMORY_BUDGET_MB": value})


def test_upscale_over_memory_budget_is_image_too_large_before_the_model(make_client: ClientFactory) -> None:
    stub = ModelEntry(name="stub", backend="pytorch", file=Path("stub.pth"), runner=StubRunner(scale=4))
    limits = {"tile": None, "pad": 16, "max_pixels": 67_108_864}
    small_need = estimate_bytes(40, 30, (80, 60), 2.0, stub, **limits)  # type: ignore[arg-type]
    big_need = estimate_bytes(200, 150, (800, 600), 4.0, stub, **limits)  # type: ignore[arg-type]
    client = make_client({"UPSCALER_MEMORY_BUDGET_MB": str((small_need + big_need) / 2 / MIB)})
    runner = add_stub(client, "stub", scale=4)
    small = client.post("/upscale", files={"image": ("in.png", PNG, "image/png")}, data={"scale": "2"})
    assert small.status_code == 200 and runner.calls == 1
    big = png_bytes(gradient_image(200, 150))
    resp = client.post("/upscale", files={"image": ("in.png", big, "image/png")}, data={"scale": "4"})
    assert resp.status_code == 413, resp.text
    error = resp.json()["error"]
    assert error["type"] == "image_too_large" and "UPSCALER_MEMORY_BUDGET_MB" in error["message"]
    assert runner.calls == 1  # refused before the model ran


def test_upscale_lanczos_over_memory_budget_is_refused_too(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_MEMORY_BUDGET_MB": "0.01"})
    resp = client.post("/upscale", files={"image": ("in.png", PNG, "image/png")}, data={"model": "lanczos"})
    assert resp.status_code == 413 and resp.json()["error"]["type"] == "image_too_large"


def test_generate_over_memory_budget_is_image_too_large(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_MEMORY_BUDGET_MB": "0.01"})
    resp = client.post("/generate", json={"image": base64.b64encode(PNG).decode(), "hr_scale": 2})
    assert resp.status_code == 413 and resp.json()["error"]["type"] == "image_too_large"
