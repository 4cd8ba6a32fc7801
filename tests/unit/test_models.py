"""Model families: SRVGGNetCompact written here, the architecture registry, unsupported architectures,
one stem with several files, and what /health and /metrics say of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save_file

from app.engine import run_model
from app.models.architectures import describe, load
from app.models.checkpoint import unwrap
from app.models.compact import SRVGGNetCompact
from app.models.descriptor import UnknownArchitecture
from scripts.quality import psnr_unit
from tests.conftest import ClientFactory
from tests.support.checkpoints import compact_net, forward, load_entry, tiny_state_dict, write_checkpoint
from tests.support.images import gradient_image, png_bytes


@pytest.mark.parametrize(
    ("scale", "num_feat", "num_conv"), [(1, 8, 2), (2, 16, 4), (3, 8, 1), (4, 64, 16), (4, 64, 32)]
)
def test_compact_describe_reads_hyperparameters(scale: int, num_feat: int, num_conv: int) -> None:
    net = SRVGGNetCompact(3, 3, num_feat, num_conv, scale)
    desc = describe(net.state_dict())
    assert (desc.family, desc.scale, desc.in_ch, desc.out_ch) == ("SRVGGNetCompact", scale, 3, 3)
    assert (desc.hp("num_feat"), desc.hp("num_conv"), desc.size_multiple) == (num_feat, num_conv, 1)
    assert desc.tiling == "supported" and desc.supports_half and desc.supports_bfloat16


def test_compact_macs_count_every_convolution() -> None:
    net = SRVGGNetCompact(3, 3, 16, 4, 4)
    h, w = 10, 12
    counted = 0

    def hook(mod: torch.nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal counted
        assert isinstance(mod, torch.nn.Conv2d)
        counted += out.numel() * mod.in_channels * 9

    for layer in net.body:
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_hook(hook)
    net(torch.zeros(1, 3, h, w))
    assert counted == describe(net.state_dict()).macs_per_pixel * h * w


@pytest.mark.parametrize("layout", ["params", "params_ema", "safetensors"])
def test_compact_loads_and_serves_like_its_reference_forward(tmp_path: Path, layout: str) -> None:
    net = compact_net(scale=4)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    if layout == "safetensors":
        path = tmp_path / "compact.safetensors"
        save_file(sd, str(path))
    else:
        path = tmp_path / "compact.pth"
        torch.save({layout: sd}, str(path))
    entry = load_entry(path)
    assert entry.available and entry.runner is not None, entry.reason
    assert entry.descriptor is not None and entry.descriptor.family == "SRVGGNetCompact"
    img = np.random.default_rng(1).random((20, 28, 3), dtype=np.float32)
    np.testing.assert_allclose(entry.runner.run(img), forward(net, img), atol=1e-5)


def test_compact_tiled_equals_whole_image(tmp_path: Path) -> None:
    net = compact_net(scale=2, num_feat=16, num_conv=4)
    path = tmp_path / "c.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    entry = load_entry(path, tile=32)
    assert entry.runner is not None
    img = np.asarray(gradient_image(90, 70), dtype=np.float32) / 255.0
    tiled = run_model(img, entry.runner, 2.0, tile=32, pad=8)
    whole = run_model(img, entry.runner, 2.0, tile=0)
    assert psnr_unit(tiled, whole) > 45


def test_compact_bf16_on_cpu_stays_close_to_fp32(tmp_path: Path) -> None:
    net = compact_net(scale=4, num_feat=16, num_conv=4)
    path = tmp_path / "c.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    entry = load_entry(path, precision="bf16")
    assert entry.runner is not None and getattr(entry.runner, "precision", None) == "bf16"
    img = np.asarray(gradient_image(40, 30), dtype=np.float32) / 255.0
    assert psnr_unit(entry.runner.run(img), forward(net, img)) > 35


def test_compact_grayscale_model_runs_colour_images_per_plane(tmp_path: Path) -> None:
    net = compact_net(scale=2, channels=1)
    path = tmp_path / "gray.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    entry = load_entry(path)
    assert entry.runner is not None and entry.descriptor is not None and entry.descriptor.in_ch == 1
    img = np.random.default_rng(2).random((12, 10, 3), dtype=np.float32)
    out = entry.runner.run(img)
    assert out.shape == (24, 20, 3)
    np.testing.assert_allclose(out[..., 1:2], forward(net, img[..., 1:2]), atol=1e-5)


def test_compact_without_prelu_is_not_claimed_natively() -> None:
    sd = {k: v for k, v in SRVGGNetCompact(3, 3, 8, 2, 4).state_dict().items() if k != "body.3.weight"}
    with pytest.raises(UnknownArchitecture, match="SRVGGNetCompact"):
        describe(sd)


def test_registry_recognises_each_family_and_nothing_else() -> None:
    assert describe(unwrap(tiny_state_dict(2))).family == "RRDBNet"
    assert describe(SRVGGNetCompact(3, 3, 8, 1, 2).state_dict()).family == "SRVGGNetCompact"
    swinir_like = {
        "conv_first.weight": torch.zeros(60, 3, 3, 3),
        "layers.0.residual_group.blocks.0.attn.relative_position_bias_table": torch.zeros(225, 6),
        "layers.0.residual_group.blocks.1.attn.qkv.weight": torch.zeros(180, 60),
        "conv_after_body.weight": torch.zeros(60, 60, 3, 3),
    }
    with pytest.raises(
        UnknownArchitecture, match=r"^unsupported architecture: 4 tensors, keys like conv_first"
    ):
        describe(swinir_like)


def test_load_without_spandrel_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.models import spandrel_adapter

    monkeypatch.setattr(spandrel_adapter, "version", lambda: None)
    sd = {
        "layers.0.residual_group.blocks.0.norm1.weight": torch.zeros(60),
        "conv_last.weight": torch.zeros(3),
    }
    with pytest.raises(UnknownArchitecture) as info:
        load(sd)
    assert str(info.value).startswith(
        "unsupported architecture: 2 tensors, keys like layers.N.residual_group"
    )
    assert str(info.value).endswith("(install the spandrel extra)")


def test_one_stem_several_files_is_one_model(make_client: ClientFactory, tmp_path: Path) -> None:
    d = tmp_path / "w"
    d.mkdir()
    sd = tiny_state_dict(2, seed=4)
    write_checkpoint(sd, d / "dup", "safetensors")
    write_checkpoint(sd, d / "dup", "params")  # dup.pth, the same weights
    client = make_client({"UPSCALER_WEIGHTS_DIR": str(d)})
    resp = client.get("/health")
    assert resp.status_code == 200
    models = resp.json()["models"]
    assert [(m["file"], m["available"], m["duplicate_of"]) for m in models] == [
        ("dup.safetensors", True, None),
        ("dup.pth", False, "dup.safetensors"),
    ]
    assert "duplicate" in models[1]["reason"] and models[0]["serving"]

    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    series = [
        tuple(sorted(s.labels.items()))
        for family in text_string_to_metric_families(metrics.text)
        if family.name == "upscaler_model_available"
        for s in family.samples
    ]
    assert series == [(("backend", "pytorch"), ("model", "dup"))]


def test_health_shows_family_and_hyperparameters(make_client: ClientFactory, tmp_path: Path) -> None:
    d = tmp_path / "w"
    d.mkdir()
    save_file({k: v.contiguous() for k, v in compact_net(2).state_dict().items()}, str(d / "c.safetensors"))
    write_checkpoint(tiny_state_dict(4, num_block=2), d / "r", "top")
    torch.save({"params": {"encoder.blocks.0.weight": torch.zeros(4, 4)}}, str(d / "other.pth"))
    resp = make_client({"UPSCALER_WEIGHTS_DIR": str(d)}).get("/health")
    assert resp.status_code == 200
    models = {m["name"]: m for m in resp.json()["models"]}
    assert models["c"]["arch"] == "SRVGGNetCompact" and models["c"]["source"] == "native"
    assert models["c"]["hyperparameters"] == {
        "scale": 2,
        "in_ch": 3,
        "out_ch": 3,
        "num_feat": 8,
        "num_conv": 3,
        "act_type": "prelu",
    }
    assert models["r"]["arch"] == "RRDBNet" and models["r"]["hyperparameters"]["num_block"] == 2
    assert models["r"]["precision"] == "fp32" or models["r"]["precision"] == "bf16"
    assert not models["other"]["available"] and models["other"]["fallback_reason"] == "weights_missing"
    assert models["other"]["reason"].startswith("unsupported architecture: 1 tensors, keys like encoder")


def test_unsupported_model_request_falls_back_with_a_spec_reason(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    d = tmp_path / "w"
    d.mkdir()
    torch.save({"encoder.blocks.0.weight": torch.zeros(4, 4)}, str(d / "other.pth"))
    client = make_client({"UPSCALER_WEIGHTS_DIR": str(d)})
    png = png_bytes(gradient_image(20, 16))
    resp = client.post("/upscale", files={"image": ("a.png", png, "image/png")}, data={"model": "other"})
    assert resp.status_code == 200
    assert (resp.headers["x-upscaler"], resp.headers["x-fallback-reason"]) == ("lanczos", "weights_missing")
    strict = client.post(
        "/upscale", files={"image": ("a.png", png, "image/png")}, data={"model": "other", "fallback": "false"}
    )
    assert strict.status_code == 503 and "unsupported architecture" in strict.json()["error"]["message"]
