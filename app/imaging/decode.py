"""Read uploads: probe the header once, then decode the pixels from what the probe opened.

Limits are checked from the header before any pixel is decoded. A decoded image keeps what the output
must carry: alpha, grayscale, 16-bit depth, the ICC profile and PNG text chunks (an SD pipeline's
`parameters`, ComfyUI's `prompt` / `workflow`). EXIF orientation is applied on decode, and the header's
size is the size after it.

Most uploads (8- and 16-bit PNGs, YCbCr and gray JPEGs) are decoded straight into numpy by libpng and
libjpeg-turbo with the GIL released (`_direct`); the rest go through Pillow, and 16-bit PNGs that
Pillow would narrow to 8 bits and libpng is not given (a `tRNS` key colour, interlaced) through pypng.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from app.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from app.imaging import png16, pngread

# Pixel limits are the service's own (checked from the header in probe); Pillow's decompression-bomb
# guard would only duplicate them, and a per-call warnings filter is not thread-safe.
Image.MAX_IMAGE_PIXELS = None

INPUT_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"}
GRAY16_MODES = {"I;16", "I;16L", "I;16B", "I"}
# Pillow calls a JPEG that carries an MPF index (most phone and camera photos) "MPO"; it is still a JPEG.
FORMAT_ALIASES = {"MPO": "JPEG"}
# Scans a JPEG may have (start-of-scan markers counted, an embedded thumbnail's included). Each scan of
# a progressive JPEG is a pass over every block of the image however few bytes it takes: 2,647 legal
# scans in 200 KB kept libjpeg-turbo decoding a 4096² image for 7.7 s (its LJT-01-003), and with
# libjpeg's warnings not fatal (Pillow's path) the scans need not even be legal. libjpeg-turbo's
# standard progression (Pillow's progressive=True) has 10 scans.
MAX_JPEG_SCANS = 100
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
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)


@dataclass(frozen=True)
class Header:
    """What probe() read: the format (PNG, JPEG, WEBP, BMP, TIFF or GIF) and the size as displayed,
    i.e. after EXIF orientation (width and height swap for orientations 5..8). `decode` reads the
    pixels through the image the probe opened, so the header is parsed once."""

    format: str
    width: int
    height: int
    orientation: int = 1
    data: bytes = field(default=b"", repr=False, compare=False)
    opened: Image.Image | None = field(default=None, repr=False, compare=False)
    planes: int = field(default=4, compare=False)  # 1 gray, 2 gray + alpha, 3 colour, 4 colour + alpha
    bit_depth: int = field(default=8, compare=False)  # of the decoded samples: 8 or 16
    # A 16-bit PNG Pillow would narrow: libpng reads it (pngread), or pypng where libpng is not given it.
    pypng: bool = field(default=False, compare=False)


_PLANES = {"1": 1, "L": 1, "I": 1, "F": 1, "LA": 2, "La": 2, "PA": 4, "RGBA": 4, "RGBa": 4}


def layout(img: Image.Image, data: bytes) -> tuple[int, int, bool]:
    """(planes, bit depth, read by pypng) of the decoded image, from what open() read (no pixels)."""
    mode = img.mode
    if png16.needs_pypng(data, img):
        planes = {0: 2, 2: 3, 4: 2, 6: 4}.get(data[25], 4) + (data[25] == 2 and "transparency" in img.info)
        return planes, 16, True
    if mode.startswith("I;16") or mode == "I":
        return 1, 16, False
    planes = _PLANES.get(mode, 3)
    if "transparency" in img.info and planes in (1, 3):
        planes += 1
    if mode == "P":
        planes = 4 if "transparency" in img.info else 3
    return planes, 8, False


@dataclass
class DecodedImage:
    """An upload, oriented, split into what the models see and what rides along.

    `pixels` is (H, W, C) with C = 1 (grayscale) or 3 (colour), uint8 or uint16 per `bit_depth`;
    `alpha` is (H, W) of the same dtype or None. `image` is the Pillow image it was decoded through,
    if any: `pil()` gives the picture as a Pillow image for the LANCZOS path.
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

    def pil(self) -> Image.Image | None:
        """The picture as a Pillow image (L, LA, RGB, RGBA or I;16), made on first use when it was
        decoded straight into numpy; None for 16-bit colour and 16-bit gray with alpha, which Pillow
        cannot hold."""
        if self.image is None and (self.bit_depth == 8 or (self.gray and self.alpha is None)):
            planes = self.pixels if self.alpha is None else np.dstack([self.pixels, self.alpha])
            self.image = Image.fromarray(planes[..., 0] if planes.shape[2] == 1 else planes)
        return self.image


def load_plugins() -> None:
    """Import Pillow's common format plugins (BMP, GIF, JPEG, PPM, PNG) now: Image.open does it on its
    first call, and that should not be a request's."""
    Image.preinit()


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
    fmt = FORMAT_ALIASES.get(img.format or "", img.format or "")
    if fmt not in INPUT_FORMATS:
        raise UnsupportedMediaType(f"image format {fmt or 'unknown'} is not supported; use PNG, JPEG or WebP")
    w, h = img.size
    if w < 1 or h < 1:
        raise InvalidImage(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageTooLarge(f"input is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    # 0xFF 0xDA cannot occur in entropy-coded data (an 0xFF there is followed by 0x00 or a restart).
    if fmt == "JPEG" and (scans := data.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        raise InvalidImage(f"the JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are read")
    orientation = _orientation(img)
    if orientation >= 5:
        w, h = h, w
    planes, bit_depth, pypng = layout(img, data)
    return Header(fmt, w, h, orientation, data, img, planes, bit_depth, pypng)


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
    """PNG text chunks as str (reading them decodes the pixels: some follow the image data)."""
    return _unoriented_xmp({str(k): str(v) for k, v in getattr(img, "text", {}).items()}, orientation)


def _unoriented_xmp(text: dict[str, str], orientation: int) -> dict[str, str]:
    """Once orientation is applied, XMP must not ask viewers to apply it again."""
    if orientation != 1 and _XMP_KEY in text:
        text[_XMP_KEY] = _XMP_ORIENTATION.sub("", text[_XMP_KEY])
    return text


def decode(header: Header) -> DecodedImage:
    """Decode, orient and normalise the image `header` was probed from (the same opened file, parsed
    once). Raises InvalidImage / UnsupportedMediaType."""
    img = header.opened
    if img is None:
        raise ValueError("decode() takes the header probe() returned")
    orientation = header.orientation
    direct = _direct(header, img)
    if direct is not None:
        return direct
    try:
        img.load()
        icc = img.info.get("icc_profile")
        text = _png_text(img, orientation) if header.format == "PNG" else {}
        if header.pypng:
            color, alpha = png16.read(header.data)
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


def _direct(header: Header, img: Image.Image) -> DecodedImage | None:
    """8- and 16-bit PNGs through libpng (app/imaging/pngread.py) and YCbCr / gray JPEGs through
    libjpeg-turbo (simplejpeg): decoded straight into numpy with the GIL released, where Pillow takes
    it back for every block and copies into numpy after. None for everything else (Pillow's path)."""
    data, orientation, icc = header.data, header.orientation, img.info.get("icc_profile")
    if header.format == "PNG" and pngread.eligible(data):
        read = pngread.read(data)
        if read is None:
            return None
        samples, text = read
        text = _unoriented_xmp(text, orientation)
    elif header.format == "JPEG" and img.mode in ("RGB", "L"):
        try:
            samples = simplejpeg.decode_jpeg(data, colorspace="RGB" if img.mode == "RGB" else "GRAY")
        except ValueError as exc:
            raise InvalidImage(f"image data is broken: {exc}") from None
        text = {}
    else:
        return None
    samples = _orient(samples, orientation)
    bit_depth = 16 if samples.dtype == np.uint16 else 8
    alpha = None
    if samples.shape[2] in (2, 4):
        alpha = np.ascontiguousarray(samples[..., -1])
        samples = np.ascontiguousarray(samples[..., :-1])
    return DecodedImage(samples, alpha, bit_depth, header.format, None, icc, text)


def _working_mode(img: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """Convert to RGB, RGBA, L, LA or I;16 (the modes the pipeline runs on)."""
    mode = img.mode
    if mode in ("L", "RGB") and "transparency" in img.info:
        # A tRNS key colour (PNG) is alpha in disguise: make it a real alpha plane.
        return img.convert("LA" if mode == "L" else "RGBA"), icc
    if mode in ("RGB", "RGBA", "L", "LA", "I;16"):
        return img, icc
    if mode in GRAY16_MODES:
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
