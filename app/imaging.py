"""Decode and validate uploads, resize arrays, encode outputs.

Limits are checked from the header before any pixel is decoded. A decoded image keeps what the output
must carry: alpha, grayscale, 16-bit depth (`I;16` grayscale through Pillow; 16-bit colour, 16-bit gray
with alpha and 16-bit `tRNS` PNGs through pypng, since Pillow narrows those to 8 bits), the ICC profile
and PNG text chunks (an SD pipeline's `parameters`, ComfyUI's `prompt` / `workflow`). EXIF orientation is
applied on decode, and the header's size is the size after it.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from app import png16
from app.errors import ImageTooLarge, InvalidImage, InvalidParameter, UnsupportedMediaType

# Pixel limits are the service's own (checked from the header in probe); Pillow's decompression-bomb
# guard would only duplicate them, and a per-call warnings filter is not thread-safe.
Image.MAX_IMAGE_PIXELS = None

INPUT_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"}
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_GRAY16_MODES = {"I;16", "I;16L", "I;16B", "I"}
# Pillow calls a JPEG that carries an MPF index (most phone and camera photos) "MPO"; it is still a JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# The largest side each encoder can write; PNG's limit is far beyond any allowed output.
_MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_XMP_ORIENTATION = re.compile(r'tiff:Orientation="[0-9]"|<tiff:Orientation>[0-9]</tiff:Orientation>')
_XMP_KEY = "XML:com.adobe.xmp"
_PIL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)


@dataclass(frozen=True)
class Header:
    """What probe() read: the format (PNG, JPEG, WEBP, BMP, TIFF or GIF) and the size as displayed,
    i.e. after EXIF orientation (width and height swap for orientations 5..8)."""

    format: str
    width: int
    height: int


@dataclass
class DecodedImage:
    """An upload, oriented, split into what the models see and what rides along.

    `pixels` is (H, W, C) with C = 1 (grayscale) or 3 (colour), uint8 or uint16 per `bit_depth`;
    `alpha` is (H, W) of the same dtype or None. `image` is the same picture as a Pillow image for the
    LANCZOS path (None for 16-bit colour and 16-bit gray with alpha, which Pillow cannot hold).
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
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImage("not a readable image (PNG, JPEG, WebP, BMP, TIFF or GIF expected)") from None
    except (*_DECODE_ERRORS, IndexError, KeyError, TypeError) as exc:
        raise InvalidImage(f"not a readable image: {exc}") from None


def _orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation 1..8 from the metadata read at open, without decoding pixels.

    PngImageFile.getexif() would decode the whole image to look for an eXIf chunk after the pixel data;
    the base method reads only what open() saw, so probe() and decode() agree on the displayed size.
    A broken EXIF block does not make the picture unreadable: it counts as "no orientation".
    """
    try:
        value = Image.Image.getexif(img).get(0x0112, 1)
    except (*_DECODE_ERRORS, IndexError, KeyError, TypeError, UnicodeDecodeError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def probe(data: bytes, max_pixels: int) -> Header:
    """Read only the header. Raises InvalidImage, UnsupportedMediaType or ImageTooLarge."""
    if not data:
        raise InvalidImage("the request has no image data")
    img = _open(data)
    fmt = _FORMAT_ALIASES.get(img.format or "", img.format or "")
    if fmt not in INPUT_FORMATS:
        raise UnsupportedMediaType(f"image format {fmt or 'unknown'} is not supported; use PNG, JPEG or WebP")
    w, h = img.size
    if w < 1 or h < 1:
        raise InvalidImage(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageTooLarge(f"input is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    if _orientation(img) >= 5:
        w, h = h, w
    return Header(fmt, w, h)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an (H, W, ...) array, as ImageOps.exif_transpose does."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:  # transpose: mirror about the main diagonal
        arr = np.swapaxes(arr, 0, 1)
    elif orientation == 6:
        arr = np.rot90(arr, -1)  # 90 degrees clockwise
    elif orientation == 7:  # transverse: mirror about the other diagonal
        arr = np.swapaxes(arr, 0, 1)[::-1, ::-1]
    elif orientation == 8:
        arr = np.rot90(arr, 1)
    return np.ascontiguousarray(arr)


def _png_text(img: Image.Image, orientation: int) -> dict[str, str]:
    """PNG text chunks as str. Once orientation is applied, XMP must not ask viewers to apply it again."""
    text = {str(k): str(v) for k, v in getattr(img, "text", {}).items()}
    if orientation != 1 and _XMP_KEY in text:
        text[_XMP_KEY] = _XMP_ORIENTATION.sub("", text[_XMP_KEY])
    return text


def decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode, orient and normalise an upload. Raises InvalidImage / UnsupportedMediaType / ImageTooLarge."""
    header = probe(data, max_pixels)
    img = _open(data)
    try:
        orientation = _orientation(img)
        img.load()
        icc = img.info.get("icc_profile")
        text = _png_text(img, orientation) if header.format == "PNG" else {}
        if png16.needs_pypng(data, img):
            color, alpha = png16.read(data)
            color = _orient(color, orientation)
            alpha = _orient(alpha, orientation) if alpha is not None else None
            return DecodedImage(color, alpha, 16, header.format, None, icc, text)
        if orientation in _TRANSPOSE:
            img = img.transpose(_TRANSPOSE[orientation])
        img, icc = _working_mode(img, icc)
    except _DECODE_ERRORS as exc:
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
    if mode in ("L", "RGB") and "transparency" in img.info:
        # A tRNS key colour (PNG) is alpha in disguise: make it a real alpha plane.
        return img.convert("LA" if mode == "L" else "RGBA"), icc
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
    """LANCZOS-resize a float32 (H, W, C) or (H, W) array to `size` = (W, H), channel by channel.
    Values are not clipped: LANCZOS may overshoot the input range a little (quantize() clips)."""
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
    """float (any shape, about 0..1) -> uint8 or uint16, rounded to nearest and clipped.

    Works in float32 whatever comes in: float16 cannot even hold 65535. NaN (a model that overflowed)
    becomes 0 instead of an undefined cast.
    """
    peak, dtype = (65535.0, np.uint16) if bit_depth == 16 else (255.0, np.uint8)
    out = np.nan_to_num(np.asarray(arr, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    out *= peak
    out += 0.5
    return out.astype(dtype)


def compose(color: np.ndarray, alpha: np.ndarray | None, bit_depth: int) -> Image.Image | np.ndarray:
    """Build the output picture from float arrays: `color` (H, W, 1|3), `alpha` (H, W) or None, about 0..1.

    Returns a Pillow image (L, LA, RGB, RGBA, or I;16 for 16-bit gray without alpha), or a uint16
    (H, W, 2|3|4) array for what Pillow cannot hold: 16-bit gray + alpha and 16-bit colour.
    """
    q = quantize(color, bit_depth)
    a = quantize(alpha, bit_depth) if alpha is not None else None
    if bit_depth == 16:
        if q.shape[2] == 1 and a is None:
            return Image.fromarray(q[..., 0])  # I;16
        return np.dstack([q, a]) if a is not None else q
    if q.shape[2] == 1:
        return Image.fromarray(np.dstack([q, a]), "LA") if a is not None else Image.fromarray(q[..., 0], "L")
    return Image.fromarray(np.dstack([q, a]), "RGBA") if a is not None else Image.fromarray(q, "RGB")


def output_format(requested: str | None, source_format: str) -> str:
    """The Pillow format name to encode to. Raises InvalidParameter for an unknown `format`."""
    if requested:
        key = requested.strip().lower()
        if key not in OUTPUT_FORMATS:
            raise InvalidParameter(f"format must be png, jpeg or webp, not {requested!r}")
        return OUTPUT_FORMATS[key]
    source_format = _FORMAT_ALIASES.get(source_format, source_format)
    return source_format if source_format in MEDIA_TYPES else "PNG"


def _narrow(arr: np.ndarray) -> np.ndarray:
    """uint16 -> uint8, rounded to nearest (v * 255 / 65535)."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in _GRAY16_MODES:
        return Image.fromarray(_narrow(np.asarray(img, dtype=np.uint16)), "L")
    return img


def _array16_to_pil8(arr: np.ndarray) -> Image.Image:
    planes = arr.shape[2]
    q = _narrow(arr)
    return Image.fromarray(q[..., 0] if planes == 1 else q, _PIL_MODES[planes])


def _icc_for(icc: bytes | None, gray: bool) -> bytes | None:
    """The profile if it fits the output's colour space (ICC header bytes 16..20), else None: a GRAY
    profile on RGB pixels (or an RGB one on gray pixels) is invalid, and viewers reject or misrender it."""
    if not icc or len(icc) < 20:
        return None
    space = icc[16:20]
    return icc if space == (b"GRAY" if gray else b"RGB ") else None


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

    A uint16 (H, W, 2|3|4) array is written as a 16-bit PNG; other formats narrow it to 8 bits. JPEG has
    no alpha (dropped) and WebP no grayscale (stored as RGB): each format keeps what it can. The ICC
    profile is kept when it matches the written colour space. Raises InvalidParameter when the picture is
    larger than the format can hold (JPEG 65500, WebP 16383 pixels a side).
    """
    size = (picture.shape[1], picture.shape[0]) if isinstance(picture, np.ndarray) else picture.size
    limit = _MAX_SIDE.get(fmt)
    if limit is not None and max(size) > limit:
        raise InvalidParameter(
            f"{fmt} cannot hold {size[0]}x{size[1]} (at most {limit} pixels a side); ask for format=png"
        )
    buf = io.BytesIO()
    if isinstance(picture, np.ndarray):
        if fmt == "PNG":
            png16.write(buf, picture, png_level, _icc_for(icc_profile, picture.shape[2] <= 2), text)
            return buf.getvalue()
        picture = _array16_to_pil8(picture)
    params: dict[str, object] = {}
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value, zip=len(value) > 1024)
        params.update(pnginfo=info, compress_level=png_level)
    elif fmt == "JPEG":
        picture = _to_8bit(picture)
        if picture.mode in ("RGBA", "LA"):
            picture = picture.convert(picture.mode[:-1])
        params.update(quality=quality or 95)
    else:  # WEBP
        picture = _to_8bit(picture)
        if picture.mode in ("L", "LA"):
            picture = picture.convert("RGBA" if picture.mode == "LA" else "RGB")
        params.update(quality=quality or 95, method=4)
    icc = _icc_for(icc_profile, picture.mode in ("L", "LA") or picture.mode in _GRAY16_MODES)
    if icc:
        params["icc_profile"] = icc
    picture.save(buf, fmt, **params)
    return buf.getvalue()
