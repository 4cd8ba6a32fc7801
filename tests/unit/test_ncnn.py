"""ncnn `.param` + `.bin` pairs: real Real-ESRGAN files (x4plus, x4plus-anime-6B, animevideov3) read into
our nets and checked against ncnn's own execution; synthetic graphs for storage formats and refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.models import ncnn
from app.models.architectures import load_file
from app.models.descriptor import UnknownArchitecture
from scripts.quality import psnr_unit
from tests.conftest import ClientFactory
from tests.support.checkpoints import compact_net, forward, load_entry
from tests.support.images import decode_response, png_bytes
from tests.support.ncnn import (
    ANIME_6B,
    ANIMEVIDEO_V3,
    ANIMEVIDEO_V3_X2,
    X4PLUS,
    ncnn_forward,
    real_models,
    write_compact,
)


def real_crop(datasets: Path, w: int, h: int) -> np.ndarray:
    """A (h, w, 3) float32 crop of Set5's butterfly (a real photo with edges and texture)."""
    img = Image.open(datasets / "Set5" / "butterfly.png").convert("RGB")
    return np.asarray(img.crop((100, 60, 100 + w, 60 + h)), dtype=np.float32) / 255.0


@pytest.mark.slow
@pytest.mark.datasets
@pytest.mark.parametrize(
    ("stem", "family", "hyper"),
    [
        (ANIMEVIDEO_V3, "SRVGGNetCompact", {"num_feat": 64, "num_conv": 16}),
        (ANIME_6B, "RRDBNet", {"num_feat": 64, "num_block": 6, "num_grow_ch": 32}),
        (X4PLUS, "RRDBNet", {"num_feat": 64, "num_block": 23, "num_grow_ch": 32}),
    ],
)
def test_ncnn_real_weights_match_ncnn_execution(datasets: Path, stem: str, family: str, hyper: dict) -> None:
    param = real_models() / f"{stem}.param"
    desc, net, meta = load_file(param)
    assert (desc.family, desc.scale, desc.source, meta["ncnn_storage"]) == (family, 4, "ncnn", "fp16")
    assert {k: desc.hyperparameters[k] for k in hyper} == hyper
    img = real_crop(datasets, 40, 32)
    with torch.inference_mode():
        ours = net(torch.from_numpy(img).permute(2, 0, 1)[None])[0].numpy()
    reference = ncnn_forward(param, img.transpose(2, 0, 1))
    assert ours.shape == reference.shape == (3, 128, 160)
    assert float(np.abs(ours - reference).max()) <= 1e-3


def test_ncnn_up2x_file_is_the_x4_net_and_says_so() -> None:
    models = real_models()
    desc2, net2, meta2 = load_file(models / f"{ANIMEVIDEO_V3_X2}.param")
    desc4, net4, meta4 = load_file(models / f"{ANIMEVIDEO_V3}.param")
    assert desc2 == desc4 and desc2.scale == 4
    note = meta2["ncnn_trailing_resize"]
    assert "bicubic x0.5 resize after the net" in note and "native scale" in note
    assert "ncnn_trailing_resize" not in meta4
    for key, value in net4.state_dict().items():
        assert torch.equal(net2.state_dict()[key], value), key


@pytest.mark.slow
@pytest.mark.datasets
def test_ncnn_served_over_http_matches_the_fp32_reference(
    datasets: Path, make_client: ClientFactory, tmp_path: Path
) -> None:
    """The real Compact (animevideov3) and RRDBNet (x4plus) pairs serve through /upscale, tiled, and
    match ncnn's whole-image fp32 execution (Compact) and our fp32 whole-image forward (x4plus)."""
    d = tmp_path / "w"
    d.mkdir()
    for stem in (ANIMEVIDEO_V3, X4PLUS):
        for suffix in (".param", ".bin"):
            shutil.copy(real_models() / f"{stem}{suffix}", d / f"{stem}{suffix}")
    client = make_client(
        {"UPSCALER_WEIGHTS_DIR": str(d), "UPSCALER_TILE": "32", "UPSCALER_PRECISION": "auto"}
    )
    health = client.get("/health")
    assert health.status_code == 200
    models = {m["name"]: m for m in health.json()["models"]}
    assert models[ANIMEVIDEO_V3]["arch"] == "SRVGGNetCompact" and models[ANIMEVIDEO_V3]["source"] == "ncnn"
    assert models[X4PLUS]["arch"] == "RRDBNet" and models[X4PLUS]["available"]
    img = real_crop(datasets, 64, 48)
    data = png_bytes(Image.fromarray((img * 255).round().astype(np.uint8)))
    exact = np.asarray(Image.open(__import__("io").BytesIO(data)), dtype=np.float32) / 255.0

    resp = client.post(
        "/upscale", files={"image": ("b.png", data, "image/png")}, data={"model": ANIMEVIDEO_V3}
    )
    assert resp.status_code == 200 and resp.headers["x-upscaler"] == ANIMEVIDEO_V3
    served = np.asarray(decode_response(resp.content), dtype=np.float32) / 255.0
    reference = ncnn_forward(d / f"{ANIMEVIDEO_V3}.param", exact.transpose(2, 0, 1)).transpose(1, 2, 0)
    assert served.shape == (192, 256, 3)
    assert psnr_unit(served, np.clip(reference, 0, 1)) >= 35.0

    resp = client.post("/upscale", files={"image": ("b.png", data, "image/png")}, data={"model": X4PLUS})
    assert resp.status_code == 200 and resp.headers["x-upscaler"] == X4PLUS
    served = np.asarray(decode_response(resp.content), dtype=np.float32) / 255.0
    _, net, _ = load_file(d / f"{X4PLUS}.param")
    assert psnr_unit(served, forward(net, exact)) >= 40.0


@pytest.mark.parametrize("fp16", [False, True])
def test_ncnn_synthetic_compact_in_any_layer_order(tmp_path: Path, fp16: bool) -> None:
    net = compact_net(scale=2, num_feat=8, num_conv=2)
    param = write_compact(net, tmp_path, "syn", fp16=fp16)
    entry = load_entry(param)
    assert entry.available and entry.runner is not None, entry.reason
    assert entry.meta["ncnn_storage"] == ("fp16" if fp16 else "fp32")
    if fp16:  # the reference holds the weights as the file stores them
        with torch.no_grad():
            for layer in net.body:
                if isinstance(layer, torch.nn.Conv2d):
                    layer.weight.copy_(layer.weight.half().float())
    img = np.random.default_rng(3).random((14, 18, 3), dtype=np.float32)
    np.testing.assert_allclose(entry.runner.run(img), forward(net, img), atol=1e-5)


def test_ncnn_graph_of_another_kind_is_unavailable_with_reason(tmp_path: Path) -> None:
    param = write_compact(compact_net(), tmp_path, "odd", extra_layer="Pooling")
    entry = load_entry(param)
    assert not entry.available and entry.fallback_reason == "weights_missing"
    assert entry.reason == "unsupported architecture: ncnn layer type Pooling (odd0)"


def test_ncnn_weightless_graph_of_another_shape_is_refused(tmp_path: Path) -> None:
    param = write_compact(compact_net(), tmp_path, "noresidual")
    text = param.read_text().replace("Interp up0 1 1 d1 base 0=1", "Interp up0 1 1 d1 base 0=2")
    param.write_text(text)  # a bilinear residual: neither family
    entry = load_entry(param)
    assert not entry.available and entry.reason is not None
    assert entry.reason.startswith("unsupported architecture: ncnn graph of")
    assert "residual is not the nearest-upsampled input" in entry.reason


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("no-bin", "ncnn weights syn.bin are missing beside syn.param"),
        ("short-bin", "ncnn .bin is shorter than its .param says"),
        ("long-bin", "ncnn .bin has 4 bytes more than its .param uses"),
        ("not-param", "not an ncnn text .param file"),
        ("int8", "ncnn int8-quantised weights are not supported"),
    ],
)
def test_ncnn_damaged_pairs_say_why(tmp_path: Path, damage: str, reason: str) -> None:
    param = write_compact(compact_net(), tmp_path, "syn")
    bin_path = param.with_suffix(".bin")
    data = bin_path.read_bytes()
    if damage == "no-bin":
        bin_path.unlink()
    elif damage == "short-bin":
        bin_path.write_bytes(data[:-8])
    elif damage == "long-bin":
        bin_path.write_bytes(data + b"\0" * 4)
    elif damage == "not-param":
        param.write_bytes(b"\x01\x02binary param")
    else:
        bin_path.write_bytes((0x000D4B38).to_bytes(4, "little") + data[4:])
    with pytest.raises((UnknownArchitecture, OSError)) as info:
        ncnn.read(param)
    assert reason in str(info.value)
    entry = load_entry(param)
    assert not entry.available and reason in (entry.reason or "")


def test_ncnn_pair_beside_a_safetensors_of_one_stem_is_a_duplicate(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    d = tmp_path / "w"
    d.mkdir()
    net = compact_net()
    write_compact(net, d, "same")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "same.safetensors"))
    resp = make_client({"UPSCALER_WEIGHTS_DIR": str(d)}).get("/health")
    assert resp.status_code == 200
    rows = [(m["file"], m["available"], m["duplicate_of"]) for m in resp.json()["models"]]
    assert rows == [("same.safetensors", True, None), ("same.param", False, "same.safetensors")]


@pytest.mark.slow
def test_ncnn_pair_converts_to_core_ml(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    from scripts.coreml_convert import compare_with_torch, convert_checkpoint

    param = write_compact(compact_net(scale=2, num_feat=8, num_conv=2), tmp_path, "syn")
    done = convert_checkpoint(param, tmp_path / "syn.mlpackage", [(32, 32)], precision="fp32")
    assert done.descriptor.family == "SRVGGNetCompact" and done.metadata["arch"] == "SRVGGNetCompact"
    runtime, results = compare_with_torch(done.output, done.net, 3, done.shapes)
    floor = 80.0 if runtime == "reference" else 40.0
    assert [s for s, _ in results] == [(32, 32)] and all(db >= floor for _, db in results), results
