"""Decode and validate uploads, resize arrays, encode outputs.

Limits are checked from the header before any pixel is decoded. A decoded image keeps what the output
must carry: alpha, grayscale, 16-bit depth (`I;16` grayscale through Pillow, 16-bit RGB(A) PNG through
pypng, since Pillow reads those as 8-bit), the ICC profile and PNG text chunks (an SD pipeline's
`parameters`, ComfyUI's `prompt` / `workflow`). EXIF orientation is applied on decode.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from app.errors import ImageTooLarge, InvalidImage, InvalidParameter, UnsupportedMediaType

INPUT_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"}
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_GRAY16_MODES = {"I;16", "I;16L", "I;16B", "I"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int


@dataclass
class DecodedImage:
    """An upload, oriented, split into what the models see and what rides along.

    `pixels` is (H, W, C) with C = 1 (grayscale) or 3 (colour), uint8 or uint16 per `bit_depth`;
    `alpha` is (H, W) of the same dtype or None. `image` is the same picture as a Pillow image for the
    LANCZOS path (None for 16-bit colour, which Pillow cannot hold).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    format: str
    image: Image.Image | None
    icc_profile: bytes | None = None
    text: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[0]

    @property
    def gray(self) -> bool:
        return self.pixels.shape[2] == 1


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is checked right after; Pillow's bomb warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image is too large to decode: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidImage("not a readable image (PNG, JPEG, WebP, BMP, TIFF or GIF expected)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"not a readable image: {exc}") from None


def probe(data: bytes, max_pixels: int) -> Header:
    """Read only the header. Raises InvalidImage, UnsupportedMediaType or ImageTooLarge."""
    if not data:
        raise InvalidImage("the request has no image data")
    img = _open(data)
    fmt = img.format or ""
    if fmt not in INPUT_FORMATS:
        raise UnsupportedMediaType(f"image format {fmt or 'unknown'} is not supported; use PNG, JPEG or WebP")
    w, h = img.size
    if w < 1 or h < 1:
        raise InvalidImage(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageTooLarge(f"input is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    return Header(fmt, w, h)


def _png_color16(data: bytes) -> bool:
    """True for a PNG whose IHDR says 16-bit RGB or RGBA (colour types 2 and 6)."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 26:
        return False
    depth, color_type = data[24], data[25]
    return depth == 16 and color_type in (2, 6)


def _read_png16(data: bytes) -> np.ndarray:
    import png  # pypng: pure Python, reads 16-bit colour PNGs that Pillow narrows to 8 bits

    try:
        w, h, rows, info = png.Reader(bytes=data).asDirect()
        planes = int(info["planes"])
        arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    except (png.Error, zlib.error, ValueError) as exc:
        raise InvalidImage(f"broken 16-bit PNG: {exc}") from None
    return arr.reshape(h, w, planes)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an (H, W, ...) array, as ImageOps.exif_transpose does."""
    ops = {2: "f", 3: "r2", 4: "v", 5: "tf", 6: "r3", 7: "tv", 8: "r1"}.get(orientation, "")
    if ops.startswith("t"):
        arr = np.swapaxes(arr, 0, 1)
        ops = ops[1:]
    if ops == "f":
        arr = arr[:, ::-1]
    elif ops == "v":
        arr = arr[::-1]
    elif ops.startswith("r"):
        arr = np.rot90(arr, int(ops[1]))
    return np.ascontiguousarray(arr)


def decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode, orient and normalise an upload. Raises InvalidImage / UnsupportedMediaType / ImageTooLarge."""
    header = probe(data, max_pixels)
    img = _open(data)
    try:
        img.load()
        icc = img.info.get("icc_profile")
        text = {str(k): str(v) for k, v in getattr(img, "text", {}).items()} if header.format == "PNG" else {}
        orientation = img.getexif().get(0x0112, 1)
        if _png_color16(data):
            arr = _orient(_read_png16(data), orientation)
            alpha = arr[..., 3] if arr.shape[2] == 4 else None
            return DecodedImage(np.ascontiguousarray(arr[..., :3]), alpha, 16, header.format, None, icc, text)
        img = ImageOps.exif_transpose(img)
        img, icc = _working_mode(img, icc)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
        raise InvalidImage(f"image data is broken: {exc}") from None
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    bit_depth = 16 if arr.dtype == np.uint16 else 8
    alpha = None
    if img.mode in ("RGBA", "LA"):
        alpha = np.ascontiguousarray(arr[..., -1])
        arr = arr[..., :-1]
    return DecodedImage(np.ascontiguousarray(arr), alpha, bit_depth, header.format, img, icc, text)


def _working_mode(img: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """Convert to RGB, RGBA, L, LA or I;16 (the modes the pipeline runs on)."""
    mode = img.mode
    if mode in ("RGB", "RGBA", "L", "LA", "I;16"):
        return img, icc
    if mode in _GRAY16_MODES:
        arr = np.clip(np.asarray(img, dtype=np.int64), 0, 65535).astype(np.uint16)
        return Image.fromarray(arr), icc
    if mode == "1":
        return img.convert("L"), icc
    if mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB"), icc
    if mode == "PA":
        return img.convert("RGBA"), icc
    if mode in ("La", "RGBa"):
        return img.convert(mode.upper()), icc
    if mode == "CMYK":
        # The ICC profile (if any) describes CMYK, not the RGB we now hold: dropping it is the honest choice.
        return img.convert("RGB"), None
    if mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB"), icc
    raise UnsupportedMediaType(f"image mode {mode} is not supported")


def resize_array(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """LANCZOS-resize a float32 (H, W, C) or (H, W) array to `size` = (W, H), channel by channel."""
    if arr.ndim == 2:
        return np.asarray(
            Image.fromarray(arr.astype(np.float32, copy=False), "F").resize(size, Image.Resampling.LANCZOS)
        )
    out = np.empty((size[1], size[0], arr.shape[2]), np.float32)
    for c in range(arr.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(arr[..., c], dtype=np.float32), "F")
        out[..., c] = np.asarray(plane.resize(size, Image.Resampling.LANCZOS))
    return out


def to_unit_float(arr: np.ndarray) -> np.ndarray:
    """uint8 / uint16 -> float32 in 0..1 (float input is returned as float32)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * (1.0 / 255.0)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) * (1.0 / 65535.0)
    return arr.astype(np.float32, copy=False)


def quantize(arr: np.ndarray, bit_depth: int) -> np.ndarray:
    """float (any shape, about 0..1) -> uint8 or uint16, rounded and clipped."""
    peak, dtype = (65535.0, np.uint16) if bit_depth == 16 else (255.0, np.uint8)
    out = np.clip(arr, 0.0, 1.0)
    out *= peak
    out += 0.5
    return out.astype(dtype)


def compose(color: np.ndarray, alpha: np.ndarray | None, bit_depth: int) -> Image.Image | np.ndarray:
    """Build the output picture from float arrays: a Pillow image, or for 16-bit colour a uint16 array."""
    q = quantize(color, bit_depth)
    a = quantize(alpha, bit_depth) if alpha is not None else None
    if q.shape[2] == 1:
        if bit_depth == 16:
            return Image.fromarray(q[..., 0])  # I;16 (alpha on 16-bit gray is not representable in Pillow)
        return Image.fromarray(np.dstack([q, a]), "LA") if a is not None else Image.fromarray(q[..., 0], "L")
    if bit_depth == 16:
        return np.dstack([q, a]) if a is not None else q
    return Image.fromarray(np.dstack([q, a]), "RGBA") if a is not None else Image.fromarray(q, "RGB")


def output_format(requested: str | None, source_format: str) -> str:
    """The Pillow format name to encode to. Raises InvalidParameter for an unknown `format`."""
    if requested:
        key = requested.lower()
        if key not in OUTPUT_FORMATS:
            raise InvalidParameter(f"format must be png, jpeg or webp, not {requested!r}")
        return OUTPUT_FORMATS[key]
    return source_format if source_format in MEDIA_TYPES else "PNG"


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in _GRAY16_MODES:
        arr = np.asarray(img, dtype=np.uint16)
        return Image.fromarray((arr >> 8).astype(np.uint8), "L")
    return img


def _array16_to_pil8(arr: np.ndarray) -> Image.Image:
    return Image.fromarray((arr >> 8).astype(np.uint8), "RGBA" if arr.shape[2] == 4 else "RGB")


def encode(
    picture: Image.Image | np.ndarray,
    fmt: str,
    *,
    quality: int | None,
    png_level: int,
    icc_profile: bytes | None,
    text: dict[str, str],
) -> bytes:
    """Encode to PNG / JPEG / WEBP, carrying the ICC profile and (PNG) text chunks.

    A uint16 (H, W, 3|4) array is written as a 16-bit PNG; other formats narrow it to 8 bits. JPEG has
    no alpha (dropped) and WebP no grayscale (stored as RGB): each format keeps what it can.
    """
    buf = io.BytesIO()
    if isinstance(picture, np.ndarray):
        if fmt == "PNG":
            _write_png16(buf, picture, png_level, icc_profile, text)
            return buf.getvalue()
        picture = _array16_to_pil8(picture)
    params: dict[str, object] = {}
    if icc_profile:
        params["icc_profile"] = icc_profile
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value, zip=len(value) > 1024)
        params.update(pnginfo=info, compress_level=png_level)
    elif fmt == "JPEG":
        picture = _to_8bit(picture)
        if picture.mode in ("RGBA", "LA"):
            picture = picture.convert(picture.mode[:-1] or "L")
        params.update(quality=quality or 95)
    else:  # WEBP
        picture = _to_8bit(picture)
        if picture.mode in ("L", "LA"):
            picture = picture.convert("RGBA" if picture.mode == "LA" else "RGB")
        params.update(quality=quality or 95, method=4)
    picture.save(buf, fmt, **params)
    return buf.getvalue()


def _write_png16(
    buf: io.BytesIO, arr: np.ndarray, level: int, icc: bytes | None, text: dict[str, str]
) -> None:
    import png

    h, w, planes = arr.shape
    writer = png.Writer(w, h, greyscale=False, alpha=planes == 4, bitdepth=16, compression=level)
    tmp = io.BytesIO()
    writer.write_array(tmp, arr.reshape(-1))
    data = tmp.getvalue()
    # pypng writes no iCCP / tEXt: splice them in right after IHDR (8-byte signature + 25-byte IHDR).
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))
    for key, value in text.items():
        extra += _png_chunk(
            b"iTXt", key.encode("latin-1", "replace")[:79] + b"\x00\x00\x00\x00\x00" + value.encode("utf-8")
        )
    buf.write(data[:33] + extra + data[33:])


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
