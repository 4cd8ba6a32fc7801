"""Image helpers for the tests: crafted and 16-bit PNGs, metadata that pipelines carry (SD `parameters`,
ComfyUI `prompt` / `workflow`), and decoding through the service's own probe-then-decode path."""

from __future__ import annotations

import io
import zlib

import numpy as np
import png
from PIL import Image, ImageCms

from app.imaging.decode import DecodedImage, decode, probe
from app.imaging.encode import encode as encode_picture
from app.imaging.pixels import Picture
from scripts.crafted import raw_png

LIMIT = 16_777_216
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
JAPANESE = "桜の木の下で猫が眠る, masterpiece, best quality"
SD_TEXT = {
    "parameters": "a cat under a cherry tree\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42",
    "prompt": '{"3": {"class_type": "KSampler", "inputs": {"text": "' + JAPANESE + '"}}}',
    "workflow": '{"nodes": [' + ",".join(f'{{"id": {i}, "title": "ノード {i}"}}' for i in range(200)) + "]}",
}


# -- helpers ---------------------------------------------------------------------------------------
def crafted_png(w: int, h: int) -> bytes:
    """A valid-looking 8-bit RGB PNG whose IHDR claims w x h, with a token IDAT far too short for it."""
    return raw_png(w, h, zlib.compress(b"\x00" * 64))


def png_chunk_types(data: bytes) -> list[bytes]:
    return [kind for kind, _ in png.Reader(bytes=data).chunks()]


def save(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def write_png16(arr: np.ndarray, **params: object) -> bytes:
    """A 16-bit PNG written by pypng from a uint16 (H, W, C) array; C = 1..4 picks gray/alpha/colour."""
    h, w, c = arr.shape
    buf = io.BytesIO()
    writer = png.Writer(w, h, greyscale=c <= 2, alpha=c in (2, 4), bitdepth=16, **params)
    writer.write_array(buf, arr.reshape(-1))
    return buf.getvalue()


def read_png16(data: bytes) -> tuple[np.ndarray, dict]:
    w, h, rows, info = png.Reader(bytes=data).asDirect()
    return np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, info["planes"]), info


def fake_icc(space: bytes) -> bytes:
    """A profile-shaped blob: only the header's colour-space field (bytes 16..20) matters here."""
    blob = bytearray(132)
    blob[16:20] = space
    blob[36:40] = b"acsp"
    return bytes(blob)


def random16(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (h, w, c), dtype=np.uint16)


def with_orientation(img: Image.Image, orientation: int) -> bytes:
    """A JPEG whose EXIF says how to turn the stored pixels for display."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(img, "JPEG", quality=95, exif=exif.tobytes())


def decode_bytes(data: bytes, limit: int = LIMIT) -> DecodedImage:
    """Probe, then decode from the probed header: the service's path for one upload."""
    return decode(probe(data, limit))


def encode(picture: Image.Image | np.ndarray, fmt: str = "PNG", **kw: object) -> bytes:
    """Encode a Pillow image (L, LA, RGB, RGBA, I;16) or a (H, W, C) uint8 / uint16 array."""
    args: dict = {"quality": None, "png_level": 1, "icc_profile": None, "text": {}, **kw}
    pic = Picture.from_pil(picture) if isinstance(picture, Image.Image) else Picture(picture)
    return encode_picture(pic, fmt, **args)


def png_bytes(img: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **params)
    return buf.getvalue()


def decode_response(content: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(content))
    img.load()
    return img


def gradient_image(w: int = 40, h: int = 30, mode: str = "RGB") -> Image.Image:
    """A small deterministic image with structure in every channel."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), (x * y) % 256], -1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def textured(w: int = 75, h: int = 50) -> np.ndarray:
    rgb = np.asarray(gradient_image(w, h)).astype(np.int16)
    noise = np.random.default_rng(0).integers(-20, 21, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)
