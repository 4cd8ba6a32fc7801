"""Where and how a model runs: device, precision and tile side, chosen from what the machine reports."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from app.backends.placement import (
    cpu_has_native_bf16,
    default_tile,
    effective_precision,
    pick_device,
    pick_precision,
)
from app.models import compact, rrdbnet
from app.models.descriptor import ModelDescriptor


def machine(cuda: bool, mps: bool | None) -> SimpleNamespace:
    """What pick_device reads of torch; mps None is a torch build without the MPS backend."""
    backends = (
        SimpleNamespace() if mps is None else SimpleNamespace(mps=SimpleNamespace(is_available=lambda: mps))
    )
    return SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: cuda), backends=backends)


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"), (False, None, "cpu")],
)
def test_pick_device_auto_prefers_cuda_then_mps(cuda: bool, mps: bool | None, expected: str) -> None:
    assert pick_device(machine(cuda, mps), "auto") == expected
    assert pick_device(machine(cuda, mps), "cpu") == "cpu"


@pytest.mark.parametrize(
    ("requested", "cuda", "mps"), [("cuda", False, True), ("mps", True, False), ("mps", True, None)]
)
def test_pick_device_explicit_but_absent_raises(requested: str, cuda: bool, mps: bool | None) -> None:
    with pytest.raises(
        RuntimeError, match=f"UPSCALER_DEVICE={requested} but this machine has no {requested}"
    ):
        pick_device(machine(cuda, mps), requested)


@pytest.mark.parametrize(
    ("device", "native_bf16", "expected"),
    [("cuda", False, "fp16"), ("mps", True, "fp16"), ("cpu", True, "bf16"), ("cpu", False, "fp32")],
)
def test_pick_precision_auto_by_device_and_cpu(device: str, native_bf16: bool, expected: str) -> None:
    assert pick_precision(device, "auto", native_bf16) == expected
    assert pick_precision(device, "fp32", native_bf16) == "fp32"


def test_effective_precision_lowers_what_the_descriptor_forbids() -> None:
    safe = rrdbnet.descriptor(3, 3, 4, 64, 23, 32)
    fragile = ModelDescriptor("Fragile", 4, 3, 3, supports_half=False, supports_bfloat16=False)
    assert [effective_precision(p, safe) for p in ("fp16", "bf16", "fp32")] == ["fp16", "bf16", "fp32"]
    assert [effective_precision(p, fragile) for p in ("fp16", "bf16", "fp32")] == ["fp32"] * 3


def test_cpu_has_native_bf16_reads_the_flags(tmp_path: Path) -> None:
    def flags(line: str) -> str:
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {line}\n")
        return str(tmp_path / "cpuinfo")

    assert cpu_has_native_bf16(flags("fpu sse2 avx2 fma avx512f avx512_bf16"))
    assert cpu_has_native_bf16(flags("fpu avx512f amx_bf16 amx_tile"))
    assert not cpu_has_native_bf16(flags("fpu sse2 avx2 fma f16c"))
    assert not cpu_has_native_bf16(str(tmp_path / "absent"))


def test_default_tile_follows_the_descriptor() -> None:
    x4, x2 = rrdbnet.descriptor(3, 3, 4, 64, 23, 32), rrdbnet.descriptor(3, 3, 2, 64, 23, 32)
    assert (default_tile("cpu", x4, None), default_tile("cpu", x2, None)) == (256, 512)
    assert default_tile("cpu", compact.descriptor(3, 3, 4, 64, 16), None) == 512
    discouraged = ModelDescriptor("SwinIR", 4, 3, 3, tiling="discouraged", activations_per_pixel=16384)
    assert default_tile("cpu", discouraged, None) == 0
    assert default_tile("cuda", x4, 80 * 1024**3) > default_tile("cuda", x4, 4 * 1024**3)
