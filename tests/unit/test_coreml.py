"""Core ML backend without Core ML: the runner's padding and tiling with a stand-in predictor that runs
the same torch model, the backend off macOS and without coremltools, and the app serving through a
stand-in on "darwin". Packages made by the converter are tested in test_coreml_convert.py."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.backends.base import ModelEntry
from app.backends.coreml import (
    OFF_MACOS,
    CoreMLBackend,
    CoreMLRunner,
    _ImportNotes,
    describe,
    import_coremltools,
    package_shapes,
)
from app.backends.torch_runner import TorchRunner
from app.engine import run_model
from app.models import rrdbnet
from app.models.descriptor import ModelDescriptor
from app.models.rrdbnet import RRDBNet
from scripts.quality import psnr_unit as psnr
from tests.conftest import ClientFactory
from tests.support.checkpoints import arch_tuple, tiny_state_dict
from tests.support.http import ok
from tests.support.images import decode_response, gradient_image, png_bytes, textured


def tiny_net(scale: int, seed: int = 3, channels: int = 3) -> tuple[RRDBNet, ModelDescriptor]:
    sd = tiny_state_dict(scale, seed=seed, channels=channels)
    arch = rrdbnet.describe(sd)
    net = RRDBNet(channels, channels, scale, 8, 1, 4)
    net.load_state_dict(sd)
    return net.eval(), arch


def stand_in(net: RRDBNet, shapes: list[tuple[int, int]], seen: list | None = None) -> Any:
    """Core ML's predict, played by the torch model: it insists on one of the package's shapes."""

    def predict(x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float32 and x.shape[0] == 1 and tuple(x.shape[2:]) in shapes, x.shape
        if seen is not None:
            seen.append(tuple(x.shape[2:]))
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    return predict


def spec_of(shapes: list[tuple[int, int]], channels: int = 3, meta: dict[str, str] | None = None) -> Any:
    """A model spec with the converter's interface: `input` (1, C, H, W), fixed or enumerated."""
    model_pb2 = import_coremltools().proto.Model_pb2
    spec = model_pb2.Model()
    spec.specificationVersion = 7
    arr = spec.description.input.add(name="input").type.multiArrayType
    arr.shape.extend([1, channels, *shapes[-1]])
    arr.dataType = model_pb2.ArrayFeatureType.FLOAT32
    for h, w in shapes if len(shapes) > 1 else []:
        arr.enumeratedShapes.shapes.add().shape.extend([1, channels, h, w])
    spec.description.output.add(name="output").type.multiArrayType.dataType = arr.dataType
    spec.description.metadata.userDefined.update(meta or {})
    return spec


@pytest.mark.parametrize(
    ("shapes", "pad", "tile", "used_pad"),
    [
        # An x2 package: one pixel less than side - 2 x pad, the room to start windows on even pixels.
        ([(64, 64)], 16, 31, 16),
        ([(32, 32), (64, 64), (128, 128)], 16, 95, 16),
        ([(96, 160)], 10, 75, 10),
        ([(32, 32)], 16, 15, 8),  # context gives way before the tile shrinks below half the shape
    ],
)
def test_runner_default_tile_with_context_fits_package(
    shapes: list[tuple[int, int]], pad: int, tile: int, used_pad: int
) -> None:
    runner = CoreMLRunner(lambda x: x, 2, shapes, pad)
    assert (runner.default_tile, runner.pad) == (tile, used_pad)
    assert runner.default_tile + 2 * runner.pad <= max(min(s) for s in shapes)


def test_runner_pads_edge_tiles_to_package_shapes_and_crops_back() -> None:
    net, _ = tiny_net(2)
    shapes, seen = [(32, 32), (64, 64)], list[tuple[int, ...]]()
    runner = CoreMLRunner(stand_in(net, shapes, seen), 2, shapes, pad=16)
    out = run_model(textured(61, 38), runner, 2.0, pad=16)
    assert out.shape == (76, 122, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert set(seen) <= set(shapes) and len(seen) > 1  # several tiles, each padded to a package shape


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("shapes", [[(64, 64)], [(32, 32), (48, 48), (64, 64)]])
def test_runner_serves_the_pytorch_path_image(scale: int, shapes: list[tuple[int, int]]) -> None:
    net, arch = tiny_net(scale)
    runner = CoreMLRunner(stand_in(net, shapes), scale, shapes, pad=16)
    torch_runner = TorchRunner(torch, net, arch, "cpu", "fp32", runner.default_tile)
    img = textured(61, 38)
    expected = run_model(img, torch_runner, float(scale), pad=16)
    assert psnr(run_model(img, runner, float(scale), pad=16), expected) >= 45.0
    # UPSCALER_TILE=0 (whole image) hands the runner more than any shape holds: it tiles again.
    assert psnr(run_model(img, runner, float(scale), tile=0, pad=16), expected) >= 45.0


def test_runner_tile_that_fills_the_shape_equals_torch_runner() -> None:
    net, arch = tiny_net(4)
    runner = CoreMLRunner(stand_in(net, [(32, 32)]), 4, [(32, 32)], pad=8)
    tile = textured(32, 32)
    expected = TorchRunner(torch, net, arch, "cpu", "fp32", 32).run(tile)
    np.testing.assert_allclose(runner.run(tile), expected, atol=1e-5)


def test_runner_grayscale_and_16_bit_tiles() -> None:
    net, arch = tiny_net(2)
    runner = CoreMLRunner(stand_in(net, [(32, 32)]), 2, [(32, 32)], pad=8)
    gray16 = (textured(32, 32)[:, :, :1].astype(np.uint16) * 257).copy()
    out = runner.run(gray16)
    assert out.shape == (64, 64, 1)
    expected = TorchRunner(torch, net, arch, "cpu", "fp32", 32).run(gray16)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert runner.run(gray16[:13, :7]).shape == (26, 14, 1)  # padded up to the shape, cropped back


def test_runner_grayscale_package_runs_each_colour_plane() -> None:
    net, arch = tiny_net(4, channels=1)
    runner = CoreMLRunner(stand_in(net, [(16, 16)]), 4, [(16, 16)], pad=4, channels=1)
    tile = textured(16, 16)
    expected = TorchRunner(torch, net, arch, "cpu", "fp32", 16).run(tile)
    np.testing.assert_allclose(runner.run(tile), expected, atol=1e-5)


def test_runner_is_stateless_per_call() -> None:
    net, _ = tiny_net(2)
    runner = CoreMLRunner(stand_in(net, [(32, 32)]), 2, [(32, 32)], pad=8)
    before = dict(vars(runner))
    first = runner.run(textured(20, 12))
    runner.run(textured(32, 32))
    assert vars(runner) == before
    np.testing.assert_array_equal(runner.run(textured(20, 12)), first)


def test_runner_needs_a_shape() -> None:
    with pytest.raises(ValueError, match="at least one"):
        CoreMLRunner(lambda x: x, 2, [], pad=16)


def test_package_shapes_and_describe_read_the_spec() -> None:
    meta = {
        "arch": "RRDBNet",
        "scale": "2",
        "hyperparameters": '{"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "out_ch": 3, "scale": 2}',
        "tile_sizes": "32,64",
        "com.github.apple.coremltools.version": "9.0",
    }
    spec = spec_of([(32, 32), (64, 64)], meta=meta)
    assert sorted(package_shapes(spec)) == [(32, 32), (64, 64)]
    assert package_shapes(spec_of([(48, 80)])) == [(48, 80)]
    arch, shown = describe(spec)
    assert arch_tuple(arch) == ("RRDBNet", 2, 3, 3, 8, 1, 4)
    assert shown["tile_sizes"] == "32,64" and shown["num_feat"] == "8"
    assert "hyperparameters" not in shown and not any(k.startswith("com.github") for k in shown)
    with pytest.raises(ValueError, match="scale"):
        describe(spec_of([(32, 32)], meta={"arch": "RRDBNet"}))


def test_import_notes_drop_only_the_handled_messages() -> None:
    import logging

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("coremltools", logging.WARNING, __file__, 1, msg, None, None)

    notes = _ImportNotes(off_macos=True)
    torch_note = "Torch version 2.13.0+cpu has not been tested with coremltools. You may run into ..."
    proxy = "Failed to load _MLModelProxy: No module named 'coremltools.libcoremlpython'"
    assert not notes.filter(record(torch_note)) and notes.untested_torch == "2.13.0+cpu"
    assert not notes.filter(record(proxy))
    assert notes.filter(record("Failed to load _MLModelProxy: symbol not found"))
    assert notes.filter(record("scikit-learn version 9.9 has not been tested with coremltools."))
    assert _ImportNotes(off_macos=False).filter(record(proxy))  # on macOS a missing native lib is news


def test_backend_off_macos_is_unavailable_with_reason(tmp_path: Path) -> None:
    backend = CoreMLBackend(platform="linux")
    status = backend.status()
    assert (status.available, status.reason, status.version) == (False, OFF_MACOS, "9.0")
    entry = ModelEntry("phone", "coreml", tmp_path / "phone.mlpackage")
    backend.load(entry)
    assert (entry.available, entry.reason, entry.fallback_reason) == (False, OFF_MACOS, "backend_unavailable")


def test_backend_on_macos_without_coremltools_is_library_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "coremltools", None)  # makes `import coremltools` fail
    backend = CoreMLBackend(platform="darwin")
    assert not backend.status().available and "coremltools is not importable" in str(backend.reason)
    entry = ModelEntry("phone", "coreml", tmp_path / "phone.mlpackage")
    backend.load(entry)
    assert (entry.available, entry.fallback_reason) == (False, "library_missing")


def test_backend_bad_package_on_macos_is_unavailable(tmp_path: Path) -> None:
    def opener(path: Path, units: str) -> Any:
        return stand_in(tiny_net(2)[0], [(32, 32)]), spec_of([(32, 32)], meta={"arch": "RRDBNet"})

    entry = ModelEntry("odd", "coreml", tmp_path / "odd.mlpackage")
    CoreMLBackend(platform="darwin", opener=opener).load(entry)
    assert not entry.available and "scale" in str(entry.reason) and entry.fallback_reason == "weights_missing"


def _post(client: Any, **fields: str) -> Any:
    png = png_bytes(gradient_image(40, 30))
    return client.post("/upscale", files={"image": ("in.png", png, "image/png")}, data=fields)


def test_app_off_macos_lists_package_and_falls_back(make_client: ClientFactory, tmp_path: Path) -> None:
    d = tmp_path / "w"
    d.mkdir()
    (d / "phone.mlpackage").mkdir()
    client = make_client({"UPSCALER_WEIGHTS_DIR": str(d)})
    body = ok(client.get("/health")).json()
    (model,) = body["models"]
    assert (model["name"], model["backend"], model["available"]) == ("phone", "coreml", False)
    assert model["reason"] == OFF_MACOS and body["backends"]["coreml"]["reason"] == OFF_MACOS
    resp = _post(client, model="phone")
    assert resp.status_code == 200
    assert (resp.headers["x-upscaler"], resp.headers["x-upscale-backend"]) == ("lanczos", "pillow")
    assert resp.headers["x-fallback-reason"] == "backend_unavailable"
    strict = _post(client, model="phone", fallback="false")
    assert strict.status_code == 503 and strict.json()["error"]["type"] == "neural_unavailable"
    assert strict.headers["x-fallback-reason"] == "backend_unavailable"


def test_app_on_macos_prefers_coreml_and_serves_the_pytorch_image(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import write_checkpoint

    d = tmp_path / "w"
    d.mkdir()
    write_checkpoint(tiny_state_dict(2, seed=3), d / "tiny-x2", "safetensors")
    (d / "tiny-x2.mlpackage").mkdir()
    net, _ = tiny_net(2, seed=3)
    shapes = [(32, 32), (64, 64)]
    meta = {"arch": "RRDBNet", "scale": "2", "hyperparameters": '{"num_feat": 8}'}
    opened: list[tuple[str, str]] = []

    def opener(path: Path, units: str) -> Any:
        opened.append((path.name, units))
        return stand_in(net, shapes), spec_of(shapes, meta=meta)

    env = {"UPSCALER_WEIGHTS_DIR": str(d), "UPSCALER_COREML_COMPUTE_UNITS": "CPU_AND_NE"}
    served = {}
    for platform in ("linux", "darwin"):
        backend = functools.partial(CoreMLBackend, platform=platform, opener=opener)
        monkeypatch.setattr("app.main.CoreMLBackend", backend)
        client = make_client(env)
        resp = _post(client, model="tiny-x2")
        assert resp.status_code == 200 and "x-fallback-reason" not in resp.headers
        served[resp.headers["x-upscale-backend"]] = np.asarray(decode_response(resp.content), np.float32)
        models = {(m["name"], m["backend"]): m for m in ok(client.get("/health")).json()["models"]}
        assert models[("tiny-x2", "coreml")]["available"] is (platform == "darwin")
    assert opened == [("tiny-x2.mlpackage", "CPU_AND_NE")]
    assert set(served) == {"pytorch", "coreml"}
    assert psnr(served["coreml"] / 255.0, served["pytorch"] / 255.0) >= 45.0
