"""The imaging promises end to end through POST /upscale: alpha, gray, 16-bit, metadata, orientation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from scripts.quality import psnr
from tests.support.images import (
    SD_TEXT,
    SRGB,
    decode_response,
    png_bytes,
    read_png16,
    save,
    with_orientation,
    write_png16,
)


# -- through POST /upscale -------------------------------------------------------------------------
def post(client: TestClient, data: bytes, name: str = "x.png", mime: str = "image/png") -> Any:
    resp = client.post("/upscale", files={"image": (name, data, mime)}, data={"scale": "2"})
    assert resp.status_code == 200, resp.text
    return resp


def crop(data: bytes, box: tuple[int, int, int, int]) -> Image.Image:
    return decode_response(data).crop(box)


def test_upscale_rgba_keeps_alpha(client: TestClient, datasets: Path) -> None:
    src = crop((datasets / "realworld" / "children-alpha.png").read_bytes(), (200, 60, 296, 124))
    alpha_in = src.getchannel("A")
    assert np.ptp(np.asarray(alpha_in)) > 100, "the crop must hold an alpha edge"
    resp = post(client, png_bytes(src))
    out = decode_response(resp.content)
    assert resp.headers["x-upscaler"] == "tiny-x2" and out.mode == "RGBA" and out.size == (192, 128)
    ref = np.asarray(alpha_in.resize((192, 128), Image.Resampling.LANCZOS))
    assert psnr(np.asarray(out.getchannel("A")), ref) > 30


def test_upscale_gray_stays_gray(client: TestClient, datasets: Path) -> None:
    png_gray = png_bytes(crop((datasets / "realworld" / "00017_gray.png").read_bytes(), (100, 100, 164, 164)))
    out = decode_response(post(client, png_gray).content)
    assert out.mode == "L" and out.size == (128, 128)
    jpeg = crop((datasets / "realworld" / "wolf_gray.jpg").read_bytes(), (60, 60, 124, 124))
    icc = decode_response((datasets / "realworld" / "wolf_gray.jpg").read_bytes()).info["icc_profile"]
    resp = post(client, save(jpeg, "JPEG", quality=95, icc_profile=icc), "x.jpg", "image/jpeg")
    out = decode_response(resp.content)
    assert resp.headers["content-type"] == "image/jpeg" and out.format == "JPEG"
    assert out.mode == "L" and out.info["icc_profile"] == icc


def test_upscale_16bit_rgba_png_stays_16bit(client: TestClient, datasets: Path) -> None:
    full, _ = read_png16((datasets / "realworld" / "tree_alpha_16bit.png").read_bytes())
    part = np.ascontiguousarray(full[100:148, 150:214])
    resp = post(client, write_png16(part))
    back, info = read_png16(resp.content)
    assert info["bitdepth"] == 16 and info["alpha"] and not info["greyscale"]
    assert back.shape == (96, 128, 4)
    ref = np.asarray(
        Image.fromarray((part[..., 3] >> 8).astype(np.uint8)).resize((128, 96), Image.Resampling.LANCZOS)
    )
    assert psnr((back[..., 3] >> 8).astype(np.uint8), ref) > 30


def test_upscale_png_keeps_text_and_icc(client: TestClient, datasets: Path) -> None:
    src = crop((datasets / "Set5" / "baby.png").read_bytes(), (200, 200, 264, 248))
    info = PngImagePlugin.PngInfo()
    for key, value in SD_TEXT.items():
        info.add_text(key, value)
    out = decode_response(post(client, png_bytes(src, pnginfo=info, icc_profile=SRGB)).content)
    assert out.format == "PNG" and out.size == (128, 96)
    assert out.text == SD_TEXT and out.info["icc_profile"] == SRGB  # type: ignore[attr-defined]


def test_upscale_jpeg_in_jpeg_out_with_orientation(client: TestClient, datasets: Path) -> None:
    src = crop((datasets / "realworld" / "0014.jpg").read_bytes(), (0, 0, 48, 32))
    resp = post(client, with_orientation(src, 6), "x.jpg", "image/jpeg")
    out = decode_response(resp.content)
    assert resp.headers["content-type"] == "image/jpeg" and out.format == "JPEG"
    assert resp.headers["x-input-size"] == "32x48" and out.size == (64, 96)
    assert out.getexif().get(0x0112, 1) == 1
