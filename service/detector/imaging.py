"""Decode uploads safely (orientation, modes, bombs), draw detections and encode JPEG."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from PIL import UnidentifiedImageError

# Formats a photo can come in (JPEG covers MPO); others (EPS, PDF, ...) are "not an image".
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "ICO")
# Signatures of the accepted formats: such a file that fails to decode is corrupt, not foreign.
_IMAGE_MAGIC = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF",
    b"\x00\x00\x01\x00",
)
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as a browser shows them
EXIF_ORIENTATION = 0x0112
# EXIF orientation (1..8) -> Pillow transposes: the table ImageOps.exif_transpose uses.
_TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
_PALETTE = (
    (255, 56, 56),
    (255, 157, 151),
    (255, 112, 31),
    (255, 178, 29),
    (207, 210, 49),
    (72, 249, 10),
    (146, 204, 23),
    (61, 219, 134),
    (26, 147, 52),
    (0, 212, 187),
    (44, 153, 168),
    (0, 194, 255),
    (52, 69, 147),
    (100, 115, 255),
    (0, 24, 236),
    (132, 56, 255),
    (82, 0, 133),
    (203, 56, 255),
    (255, 149, 200),
    (255, 55, 199),
)


class ImageError(ValueError):
    """An upload that cannot be used as an image; `status` is the HTTP status to answer with."""

    status = 400


class EmptyImage(ImageError):
    """The upload has no bytes."""

    status = 400


class CorruptImage(ImageError):
    """An image format was recognised but its data cannot be decoded."""

    status = 400


class NotAnImage(ImageError):
    """The upload is not in an image format this service reads."""

    status = 415


class TooManyPixels(ImageError):
    """The image header announces more pixels than allowed (decompression bomb)."""

    status = 422


@dataclass(frozen=True)
class Decoded:
    """A decoded upload: RGB image (maybe reduced by JPEG draft) and the original oriented size."""

    image: Image.Image
    size: tuple[int, int]  # (width, height) of the full-resolution image after orientation
    orientation: int = 1  # EXIF orientation the file carried (1 = none), already applied
    format: str = ""


def sniff_type(data: bytes) -> str:
    """Guess a media type for a file Pillow does not read, for the error message."""
    head = data[:512].lstrip()
    lower = head.lower()
    if lower.startswith(b"<svg") or (lower.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "image/svg+xml"
    if lower.startswith((b"<!doctype html", b"<html")):
        return "text/html"
    if head.startswith(b"%PDF"):
        return "application/pdf"
    if head.startswith(b"PK\x03\x04"):
        return "application/zip"
    if head.startswith(b"\x1f\x8b"):
        return "application/gzip"
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


def _draft_size(size: tuple[int, int], target: int) -> tuple[int, int]:
    """Return the size a letterbox to `target` resizes to: JPEG draft must not go below it."""
    w, h = size
    scale = target / max(w, h)
    return max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))


def _exif_orientation(im: Image.Image) -> int:
    """Return the EXIF orientation (1..8) of an opened image, 1 when absent or invalid."""
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # broken EXIF blocks are common: treat them as "no orientation"
        return 1
    return value if value in range(1, 9) else 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on BACKGROUND."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        arr = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode == "P":
        return im.convert("RGB")
    if mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, BACKGROUND)
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def decode_image(
    data: bytes, *, max_pixels: int, target: int | None = None, orientation: str | None = None
) -> Decoded:
    """Decode an upload into an RGB image, refusing what is not a safe image.

    :param data: the file's bytes.
    :param max_pixels: largest width * height accepted, checked from the header before decoding.
    :param target: network input size; a JPEG is then decoded at a reduced scale (draft) that
        stays at least as large as the letterbox needs. `Decoded.size` keeps the full size.
    :param orientation: an EXIF orientation (1..8) sent by the client, applied only when the file
        carries none of its own; anything else is ignored.
    :raise ImageError: EmptyImage/CorruptImage (400), NotAnImage (415), TooManyPixels (422).
    """
    if not data:
        raise EmptyImage("file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"image is too large in pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        if data.startswith(_IMAGE_MAGIC):
            raise CorruptImage(f"image data cannot be decoded ({len(data)} bytes)") from exc
        raise NotAnImage(f"file is not an image (got {sniff_type(data)})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"image data cannot be decoded: {exc}") from exc
    width, height = im.size
    if width <= 0 or height <= 0:
        raise CorruptImage(f"image has an invalid size {width}x{height}")
    if width * height > max_pixels:
        raise TooManyPixels(
            f"image is {width}x{height} = {width * height} pixels, more than the limit {max_pixels}"
        )
    exif = _exif_orientation(im)
    if target and im.format in ("JPEG", "MPO"):
        im.draft(im.mode, _draft_size(im.size, target))
    try:
        im.seek(0)
        im.load()
        fmt = im.format or ""
        image = _to_rgb(im)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImage(f"image data cannot be decoded: {exc}") from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - caught at open already
        raise TooManyPixels(f"image is too large in pixels ({exc})") from exc
    if exif != 1:
        image = _transpose(image, exif)
    elif orientation is not None:
        override = parse_orientation(orientation)
        if override != 1:
            image = _transpose(image, override)
            exif = override
    size = (height, width) if exif in (5, 6, 7, 8) else (width, height)
    return Decoded(image=image, size=size, orientation=exif, format=fmt)


def parse_orientation(orientation: str | int | None) -> int:
    """Return an EXIF orientation 1..8 from a form value; garbage ("undefined", "") gives 1."""
    try:
        value = int(str(orientation).strip())
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _transpose(image: Image.Image, orientation: int) -> Image.Image:
    """Apply the transposes that undo an EXIF orientation."""
    for method in _TRANSPOSE.get(orientation, ()):
        image = image.transpose(method)
    return image


def apply_orientation(image: Image.Image, orientation: str | int | None) -> Image.Image:
    """Rotate/flip a decoded image by a client-sent EXIF orientation (1..8; garbage ignored).

    Use it only for files without an EXIF orientation of their own (`Decoded.orientation == 1`),
    since `decode_image` has already applied that one. `decode_image(..., orientation=value)`
    does both and keeps `Decoded.size` consistent; prefer it.
    """
    return _transpose(image, parse_orientation(orientation))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Return Pillow's bundled font at `size` pixels (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _text_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `color`."""
    r, g, b = color
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def draw_detections(image: Image.Image, detections) -> Image.Image:
    """Return a copy of `image` with each detection's box and "label score" drawn on it.

    Line width and font size follow the image size, so labels stay readable on thumbnails and
    on 12 MP photos alike; labels sit above the box, or inside it at the top edge.
    """
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    w, h = out.size
    short = min(w, h)
    line = max(1, round(short / 300))
    font = _font(max(10, round(short / 40)))
    draw = ImageDraw.Draw(out)
    pad = max(1, line)
    for det in detections:
        color = _PALETTE[det.class_id % len(_PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in det.box)
        x1, x2 = max(0.0, min(x1, x2)), min(w - 1.0, max(x1, x2))
        y1, y2 = max(0.0, min(y1, y2)), min(h - 1.0, max(y1, y2))
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
        text = f"{det.label} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        ty = y1 - th if y1 - th >= 0 else y1
        tx = min(x1, max(0.0, w - tw))
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
        draw.text((tx + pad - left, ty + pad - top), text, fill=_text_color(color), font=font)
    return out


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """Encode an image as JPEG bytes."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
