"""The spandrel extra: SwinIR and SPAN checkpoints (random weights, spandrel's own classes) serve through
the same safe loading, with spandrel's size requirements and precision support carried over.

These run in their own environment (`make test-spandrel`: torch 2.14.1 + torchvision 0.29.1), where
UPSCALER_TEST_REQUIRE_SPANDREL=1 turns a missing spandrel into a failure instead of a skip.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.spandrel

try:
    import spandrel
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR
except Exception as exc:  # ImportError, or torchvision failing beside a mismatched torch
    if os.environ.get("UPSCALER_TEST_REQUIRE_SPANDREL") == "1":
        raise
    pytest.skip(
        f"the spandrel extra is not importable here ({exc}); make test-spandrel runs these",
        allow_module_level=True,
    )

from safetensors.torch import save_file  # noqa: E402

from app.backends.base import ModelEntry  # noqa: E402
from app.backends.pytorch import PyTorchBackend  # noqa: E402
from app.models.architectures import load  # noqa: E402
from app.models.descriptor import UnknownArchitecture  # noqa: E402
from scripts.quality import psnr_unit  # noqa: E402
from tests.conftest import ClientFactory  # noqa: E402
from tests.support.images import decode_response, gradient_image, png_bytes  # noqa: E402


def swinir_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # SwinIR calls torch.meshgrid without `indexing`
        warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
        return _swinir()


def _swinir() -> dict[str, torch.Tensor]:
    net = SwinIR(
        img_size=32,
        in_chans=3,
        embed_dim=12,
        depths=[2],
        num_heads=[2],
        window_size=8,
        mlp_ratio=2.0,
        upscale=2,
        upsampler="pixelshuffle",
        resi_connection="1conv",
    )
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def span_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=12, upscale=4)
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def spandrel_reference(sd: dict[str, torch.Tensor], img: np.ndarray) -> np.ndarray:
    """spandrel's own call (it pads to the size requirements itself): (H, W, 3) uint8 -> float 0..1."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
        model = spandrel.ModelLoader().load_from_state_dict(dict(sd)).eval()
    x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        y = model(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return np.round(y * 255.0) / 255.0


def test_spandrel_descriptor_carries_spandrels_requirements() -> None:
    sd = swinir_state_dict()
    desc, net = load(sd)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
        theirs = spandrel.ModelLoader().load_from_state_dict(dict(sd))
    assert (desc.family, desc.source, desc.scale) == ("SwinIR", "spandrel", 2)
    assert (desc.size_multiple, desc.size_minimum) == (
        theirs.size_requirements.multiple_of,
        max(1, theirs.size_requirements.minimum),
    )
    assert (desc.supports_half, desc.supports_bfloat16) == (theirs.supports_half, theirs.supports_bfloat16)
    assert desc.tiling == theirs.tiling.name.lower() and not net.training


@pytest.mark.parametrize(
    ("name", "make", "scale"), [("swinir", swinir_state_dict, 2), ("span", span_state_dict, 4)]
)
def test_spandrel_models_serve_like_spandrel_runs_them(
    make_client: ClientFactory, tmp_path: Path, name: str, make: object, scale: int
) -> None:
    d = tmp_path / "w"
    d.mkdir()
    sd = make()  # type: ignore[operator]
    if name == "swinir":
        save_file(sd, str(d / f"{name}.safetensors"))
    else:
        torch.save({"params": sd}, str(d / f"{name}.pth"))  # loaded with weights_only=True
    client = make_client({"UPSCALER_WEIGHTS_DIR": str(d), "UPSCALER_PRECISION": "fp32"})
    health = client.get("/health")
    assert health.status_code == 200
    (model,) = health.json()["models"]
    assert model["available"], model["reason"]
    assert (model["arch"], model["source"], model["scale"]) == (
        {"swinir": "SwinIR", "span": "SPAN"}[name],
        "spandrel",
        scale,
    )
    img = np.asarray(gradient_image(37, 29))  # not a multiple of SwinIR's window: padding is needed
    resp = client.post(
        "/upscale",
        files={"image": ("a.png", png_bytes(Image.fromarray(img)), "image/png")},
        data={"model": name},
    )
    assert resp.status_code == 200, resp.text
    assert (resp.headers["x-upscaler"], resp.headers["x-output-size"]) == (name, f"{37 * scale}x{29 * scale}")
    served = np.asarray(decode_response(resp.content), dtype=np.float32) / 255.0
    assert psnr_unit(served, spandrel_reference(sd, img)) >= 40.0


def test_spandrel_never_unpickles_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    torch.save({"params": swinir_state_dict(), "hook": RunsCode()}, tmp_path / "evil.pth")
    entry = ModelEntry("evil", "pytorch", tmp_path / "evil.pth")
    PyTorchBackend("cpu", "fp32").load(entry)
    assert not entry.available and "refused" in (entry.reason or "") and not marker.exists()


def test_spandrel_unknown_state_dict_says_spandrel_does_not_know_it_either() -> None:
    with pytest.raises(
        UnknownArchitecture, match=r"^unsupported architecture: 1 tensors.*does not recognise it"
    ):
        load({"encoder.blocks.0.weight": torch.zeros(4, 4)})


def test_spandrel_model_output_decodes(make_client: ClientFactory, tmp_path: Path) -> None:
    """A grayscale image through an RGB spandrel model stays grayscale, as with native models."""
    d = tmp_path / "w"
    d.mkdir()
    save_file(span_state_dict(1), str(d / "span.safetensors"))
    client = make_client({"UPSCALER_WEIGHTS_DIR": str(d)})
    gray = png_bytes(gradient_image(20, 18, "L"))
    resp = client.post("/upscale", files={"image": ("g.png", gray, "image/png")})
    assert resp.status_code == 200 and resp.headers["x-upscaler"] == "span"
    assert Image.open(io.BytesIO(resp.content)).mode == "L"
