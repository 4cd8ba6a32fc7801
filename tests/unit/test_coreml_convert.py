"""Checkpoint -> Core ML package (runs on Linux): the package's interface and metadata, its program
checked against torch, the backend reading it, and on macOS real Core ML predictions."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.backends.base import ModelEntry
from app.backends.coreml import OFF_MACOS, CoreMLBackend, CoreMLRunner, import_coremltools
from app.backends.torch_runner import TorchRunner
from app.engine import run_model
from scripts.coreml_convert import (
    UnsupportedRequest,
    compare_with_torch,
    convert_checkpoint,
    file_sha256,
    load_checkpoint,
    parse_shapes,
)
from scripts.mil_reference import load_program, run_program
from scripts.quality import psnr_unit as psnr
from tests.conftest import ClientFactory
from tests.support.checkpoints import arch_tuple, tiny_state_dict, write_checkpoint
from tests.support.http import ok
from tests.support.images import textured
from tests.support.paths import ROOT

macos_only = pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction exists only on macOS")


def converter_main(argv: list[str]) -> tuple[int, str, str]:
    """scripts/convert_coreml.py's main(argv), in this process: (exit status, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location("convert_coreml", ROOT / "scripts" / "convert_coreml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = module.main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny random-weight RRDBNets converted once: x4 with a fixed 48 tile (fp16, through the library),
    x2 with enumerated 32 and 64 (fp32, through the script with --check)."""
    d = tmp_path_factory.mktemp("coreml")
    x4 = write_checkpoint(tiny_state_dict(4, seed=5), d / "tiny-x4", "params_ema")
    x2 = write_checkpoint(tiny_state_dict(2, seed=6), d / "tiny-x2", "safetensors")
    fixed = convert_checkpoint(x4, d / "tiny-x4.mlpackage", [(48, 48)], "fp16", "macOS13")
    status, out, err = converter_main(
        [str(x2), "--shapes", "64,32", "--precision", "fp32", "--target", "macOS14", "--check"]
    )
    assert status == 0, err
    return {"x4": fixed.output, "x4_src": x4, "x2": d / "tiny-x2.mlpackage", "x2_src": x2, "x2_out": out}


def spec(path: Path) -> Any:
    return import_coremltools().utils.load_spec(str(path))


def test_parse_shapes() -> None:
    assert parse_shapes("256") == [(256, 256)]
    assert parse_shapes("512, 128,256,128") == [(128, 128), (256, 256), (512, 512)]
    assert parse_shapes("256x384,64") == [(64, 64), (256, 384)]
    with pytest.raises(ValueError, match="bad shape"):
        parse_shapes("256,big")


def test_convert_refuses_low_target_for_pixel_unshuffle(tmp_path: Path) -> None:
    x2 = write_checkpoint(tiny_state_dict(2), tmp_path / "x2", "safetensors")
    with pytest.raises(UnsupportedRequest, match="macOS13"):
        convert_checkpoint(x2, tmp_path / "x2.mlpackage", target="macOS12")
    status, _, err = converter_main([str(x2), "--target", "macOS12"])
    assert status == 2 and "--target macOS13 or newer" in err
    assert not (tmp_path / "x2.mlpackage").exists()


def test_convert_refuses_shapes_the_model_cannot_take(tmp_path: Path) -> None:
    x1 = write_checkpoint(tiny_state_dict(1), tmp_path / "x1", "top")
    with pytest.raises(UnsupportedRequest, match="multiples of 4"):
        convert_checkpoint(x1, tmp_path / "x1.mlpackage", [(30, 30)])
    with pytest.raises(UnsupportedRequest, match=r"\.mlpackage"):
        convert_checkpoint(x1, tmp_path / "x1.mlmodel")


class _RunsCode:
    marker: Path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_convert_loads_through_the_safe_loader(tmp_path: Path) -> None:
    payload = _RunsCode()
    payload.marker = tmp_path / "code-ran"
    torch.save({"params": tiny_state_dict(4), "hook": payload}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(tmp_path / "evil.pth")
    status, _, err = converter_main([str(tmp_path / "evil.pth")])
    assert status == 1 and "refused" in err
    assert not payload.marker.exists()


@pytest.mark.slow
def test_converted_fixed_tile_package_interface_and_metadata(packages: dict[str, Any]) -> None:
    s = spec(packages["x4"])
    (inp,) = s.description.input
    (out,) = s.description.output
    assert (inp.name, out.name) == ("input", "output")
    assert list(inp.type.multiArrayType.shape) == [1, 3, 48, 48]
    assert inp.type.multiArrayType.WhichOneof("ShapeFlexibility") is None  # fixed: no RangeDim
    assert inp.type.multiArrayType.dataType == inp.type.multiArrayType.FLOAT32
    assert list(out.type.multiArrayType.shape) == [1, 3, 192, 192]
    meta = dict(s.description.metadata.userDefined)
    assert (meta["arch"], meta["scale"], meta["tile_sizes"], meta["precision"]) == (
        "RRDBNet",
        "4",
        "48",
        "fp16",
    )
    assert meta["source_sha256"] == file_sha256(packages["x4_src"]) and meta["source_file"] == "tiny-x4.pth"
    hp = json.loads(meta["hyperparameters"])
    assert hp == {
        "scale": 4,
        "in_ch": 3,
        "out_ch": 3,
        "num_feat": 8,
        "num_block": 1,
        "num_grow_ch": 4,
        "unshuffle": 1,
    }


@pytest.mark.slow
def test_converted_enumerated_package_interface_and_metadata(packages: dict[str, Any]) -> None:
    s = spec(packages["x2"])
    array = s.description.input[0].type.multiArrayType
    assert array.WhichOneof("ShapeFlexibility") == "enumeratedShapes"
    assert sorted(tuple(e.shape) for e in array.enumeratedShapes.shapes) == [(1, 3, 32, 32), (1, 3, 64, 64)]
    assert s.description.output[0].name == "output"
    meta = dict(s.description.metadata.userDefined)
    assert (meta["scale"], meta["tile_sizes"], meta["shape_mode"]) == ("2", "32,64", "enumerated")
    assert (meta["precision"], meta["deployment_target"]) == ("fp32", "macOS14")
    assert json.loads(meta["hyperparameters"])["num_feat"] == 8


@pytest.mark.slow
def test_converter_script_reports_and_checks(packages: dict[str, Any]) -> None:
    out = packages["x2_out"]
    assert "RRDBNet x2" in out and "32,64" in out and file_sha256(packages["x2_src"]) in out
    runtime = "coreml" if sys.platform == "darwin" else "reference"
    assert f"[{runtime}]" in out and "32x32" in out and "64x64" in out


@pytest.mark.slow
@pytest.mark.parametrize(("key", "min_db"), [("x4", 60.0), ("x2", 80.0)])  # fp16 / fp32 packages
def test_converted_program_computes_the_torch_model(
    packages: dict[str, Any], key: str, min_db: float
) -> None:
    net, _ = load_checkpoint(packages[f"{key}_src"])
    shapes = [(48, 48)] if key == "x4" else [(32, 32), (64, 64)]
    runtime, results = compare_with_torch(packages[key], net, 3, shapes)
    assert [s for s, _ in results] == shapes
    floor = min_db if runtime == "reference" else 40.0  # Core ML's own runtime, on macOS
    assert all(db >= floor for _, db in results), results


@pytest.mark.slow
def test_backend_reads_package_metadata_off_macos(packages: dict[str, Any]) -> None:
    entry = ModelEntry("tiny-x4", "coreml", packages["x4"])
    CoreMLBackend(platform="linux").load(entry)
    assert (entry.available, entry.reason, entry.fallback_reason) == (False, OFF_MACOS, "backend_unavailable")
    assert arch_tuple(entry.descriptor) == ("RRDBNet", 4, 3, 3, 8, 1, 4) and entry.scale == 4
    assert entry.meta["source_sha256"] == file_sha256(packages["x4_src"])


@pytest.mark.slow
def test_backend_serves_the_package_program_like_pytorch(packages: dict[str, Any]) -> None:
    """On "darwin", with the package's own program (reference executor) standing in for Core ML."""

    def opener(path: Path, units: str) -> Any:
        function = load_program(path)
        return (lambda x: run_program(function, x)), spec(path)

    entry = ModelEntry("tiny-x2", "coreml", packages["x2"])
    CoreMLBackend(platform="darwin", opener=opener, tile_pad=8).load(entry)
    assert entry.available and entry.runner is not None and entry.scale == 2
    net, arch = load_checkpoint(packages["x2_src"])
    img = textured(70, 45)
    expected = run_model(img, TorchRunner(torch, net, arch, "cpu", "fp32", 48), 2.0, pad=8)
    assert psnr(run_model(img, entry.runner, 2.0, pad=8), expected) >= 45.0


@pytest.mark.slow
def test_health_shows_converted_package_off_macos(
    packages: dict[str, Any], make_client: ClientFactory, tmp_path: Path
) -> None:
    d = tmp_path / "w"
    d.mkdir()
    shutil.copytree(packages["x4"], d / "tiny-x4.mlpackage")
    body = ok(make_client({"UPSCALER_WEIGHTS_DIR": str(d)}).get("/health")).json()
    (model,) = body["models"]
    assert (model["backend"], model["available"], model["reason"]) == ("coreml", False, OFF_MACOS)
    assert (model["arch"], model["scale"], model["meta"]["tile_sizes"]) == ("RRDBNet", 4, "48")


@pytest.mark.macos
@macos_only
def test_coreml_prediction_matches_pytorch(packages: dict[str, Any]) -> None:
    for key in ("x4", "x2"):
        net, arch = load_checkpoint(packages[f"{key}_src"])
        entry = ModelEntry(key, "coreml", packages[key])
        CoreMLBackend("CPU_AND_NE").load(entry)
        assert entry.available and entry.runner is not None, entry.reason
        img = textured(70, 45)
        tile = entry.runner.default_tile
        expected = run_model(img, TorchRunner(torch, net, arch, "cpu", "fp32", tile), float(arch.scale))
        got = run_model(img, entry.runner, float(arch.scale))
        assert psnr(got, expected) >= 40.0
        assert isinstance(entry.runner, CoreMLRunner)
        runtime, results = compare_with_torch(packages[key], net, 3, list(entry.runner.shapes))
        assert runtime == "coreml" and all(db >= 40.0 for _, db in results), results
        assert np.isfinite(got).all()
