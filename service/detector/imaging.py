"""Decode uploads safely: orientation, modes, pixel bombs and a bounded decode memory."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from .filechecks import jpeg_scans_problem
from .filechecks import structure_problem
from .filechecks import tiff_buffer_bytes
from .orientation import exif_orientation
from .orientation import parse_orientation
from .orientation import transpose

# Formats a photo can come in (JPEG covers MPO); others (EPS, PDF, ...) are "not an image".
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM")
# Formats refused by name: an ICO's header does not bound the size of the PNG it carries.
_REFUSED = ((b"\x00\x00\x01\x00", "ICO (icon)"),)
MB = 1 << 20
# Bytes per pixel of Pillow's storage by mode (RGB is stored as 4 bytes); others count 4.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_BAND_PIXELS = 1 << 18  # modes are converted and reduced about 0.25 MP at a time
_BAND_BYTES = 16  # per band pixel: the cropped band, its float32 or RGBA copy, its RGB version
_WEBP_EXTRA = 12  # per pixel: libwebp's canvas and the buffers Pillow copies it through (measured)
_RLE_EXTRA = (
    2  # per pixel: Pillow's BMP RLE decoder builds the image in a bytearray, then copies it
)
# Signatures of the accepted formats: such a file that fails to decode is corrupt, not foreign.
_IMAGE_MAGIC = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
    b"MM\x00+",
    b"RIFF",
)
JPEG_MAX_SIDE = 65500  # libjpeg's JPEG_MAX_DIMENSION: the drawn reply (a JPEG) cannot be larger
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as a browser shows them


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


class TooCostly(ImageError):
    """Decoding the image would need more memory than one request may use."""

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


def _deep_scale(im: Image.Image) -> bool:
    """Say whether a 16/32-bit or float image is scaled by 1/257 into 8 bits (else clipped)."""
    if im.mode.startswith("I;16"):
        return True
    if im.mode in ("I", "F"):
        low, high = im.getextrema()  # over the whole image, so every band scales alike
        return high > 255
    return False


def _to_rgb(im: Image.Image, scale: bool = False) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on BACKGROUND.

    :param scale: divide 16/32-bit and float values by 257 (see _deep_scale), else clip them.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.array(im, dtype=np.float32)  # a copy of one band, which is ours to scale
        if scale:
            arr *= 1 / 257.0
        arr += 0.5
        np.clip(arr, 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
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


def _convert(im: Image.Image, factor: int) -> Image.Image:
    """Return a loaded image as RGB reduced by `factor`, one band of rows at a time.

    Converting in bands keeps the temporaries (float copies, RGBA composites) to a few MB
    whatever the image size; only the native image and the result are full size.
    """
    if im.mode == "RGB" and factor == 1:
        return im
    width, height = im.size
    scale = _deep_scale(im)
    rows = _band_rows(width, factor)
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        band = _to_rgb(im.crop((0, top, width, min(height, top + rows))), scale)
        if factor > 1:
            band = band.reduce(factor)
        out.paste(band, (0, top // factor))
    return out


def _band_rows(width: int, factor: int) -> int:
    """Return the rows _convert handles at a time: about _BAND_PIXELS, a multiple of `factor`."""
    return max(factor, _BAND_PIXELS // width // factor * factor)


def _jpeg_coefficients(im: Image.Image) -> int:
    """Return the bytes libjpeg holds for a progressive JPEG's coefficients (0 if baseline)."""
    if not (im.info.get("progressive") or im.info.get("progression")):
        return 0
    layers = getattr(im, "layer", None) or [("", 1, 1, 0)] * len(im.getbands())
    h_max = max(layer[1] for layer in layers)
    v_max = max(layer[2] for layer in layers)
    width, height = im.size
    total = 0
    for _, h, v, _ in layers:
        blocks_w = math.ceil(math.ceil(width * h / h_max) / 8)
        blocks_h = math.ceil(math.ceil(height * v / v_max) / 8)
        total += blocks_w * blocks_h * 64 * 2
    return total


def reduce_factor(size: tuple[int, int], target: int | None) -> int:
    """Return the integer factor an image may be reduced by and still cover a target letterbox."""
    if not target:
        return 1
    need_w, need_h = _draft_size(size, target)
    return max(1, min(size[0] // need_w, size[1] // need_h))


def decode_cost(im: Image.Image, target: int | None = None, orientation: int = 1) -> int:
    """Estimate the peak bytes decoding an opened image takes (native, extras, RGB result).

    :param im: an opened, not yet loaded image.
    :param target: network input size when the image may be decoded reduced (see decode_image).
    :param orientation: EXIF orientation; a transpose costs one more copy of the result.
    """
    width, height = im.size
    pixels = width * height
    factor = 1
    extra = 0
    if im.format in ("JPEG", "MPO"):
        extra = _jpeg_coefficients(im)
        if target:
            scale = 8
            need_w, need_h = _draft_size(im.size, target)
            while scale > 1 and (width // scale < need_w or height // scale < need_h):
                scale //= 2
            pixels = math.ceil(width / scale) * math.ceil(height / scale)
    else:
        factor = reduce_factor(im.size, target)
        if im.format == "WEBP":
            extra = pixels * _WEBP_EXTRA
        elif im.tile and im.tile[0][0] == "bmp_rle":
            extra = pixels * _RLE_EXTRA
        extra += tiff_buffer_bytes(im)
    native = pixels * _PIXEL_BYTES.get(im.mode, 4)
    result = band = 0
    if im.mode != "RGB" or factor > 1:
        result = 4 * pixels // (factor * factor)
        band = min(height, _band_rows(width, factor)) * width * _BAND_BYTES
    turned = 4 * pixels // (factor * factor) if orientation != 1 else 0
    return native + extra + result + turned + band


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Open (not decode) an upload, checking its format, its announced size and structure.

    :raise ImageError: EmptyImage/CorruptImage (400), NotAnImage (415), TooManyPixels (422),
        TooCostly (422: a TIFF tag with too many values, a JPEG with too many scans, too
        many metadata segments or chunks).
    """
    if not data:
        raise EmptyImage("file is empty (0 bytes)")
    for magic, name in _REFUSED:
        if data.startswith(magic):
            raise NotAnImage(
                f"{name} files are not accepted; send a photo as JPEG, PNG, WebP, GIF, BMP or TIFF"
            )
    problem = structure_problem(data)
    if problem:
        raise TooCostly(problem)
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
    problem = jpeg_scans_problem(data, im.size) if im.format in ("JPEG", "MPO") else None
    if problem:
        raise TooCostly(problem)
    return im


def check_drawable(im: Image.Image) -> None:
    """Refuse an image the drawn reply cannot hold: a JPEG's sides stop at JPEG_MAX_SIDE."""
    width, height = im.size
    if max(width, height) > JPEG_MAX_SIDE:
        raise TooManyPixels(
            f"image is {width}x{height}; the drawn reply is a JPEG, whose sides stop at "
            f"{JPEG_MAX_SIDE} pixels: send it smaller, or to /api/v1/detect for the boxes only"
        )


def check_cost(im: Image.Image, cost: int, budget: int | None) -> None:
    """Refuse an image whose decode_cost exceeds the per-request budget (bytes; None = any)."""
    if budget is not None and cost > budget:
        width, height = im.size
        raise TooCostly(
            f"decoding this {width}x{height} {im.format} image ({im.mode}) needs about "
            f"{cost // MB} MB, more than the {budget // MB} MB an upload may use; "
            "send it smaller or as an 8-bit baseline JPEG or PNG"
        )


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    target: int | None = None,
    orientation: str | None = None,
    budget: int | None = None,
    opened: Image.Image | None = None,
) -> Decoded:
    """Decode an upload into an RGB image, refusing what is not a safe image.

    :param data: the file's bytes.
    :param max_pixels: largest width * height accepted, checked from the header before decoding.
    :param target: network input size; the image is then decoded reduced (JPEG draft, else an
        integer Image.reduce) but never below what the letterbox needs. `Decoded.size` keeps
        the full size, so boxes come back in original pixels.
    :param orientation: an EXIF orientation (1..8) sent by the client, applied only when the file
        carries none of its own; anything else is ignored.
    :param budget: bytes the decode may take (decode_cost); a costlier image is refused.
    :param opened: the result of open_image(data) when the caller has it already.
    :raise ImageError: EmptyImage/CorruptImage (400), NotAnImage (415), TooManyPixels and
        TooCostly (422).
    """
    im = opened or open_image(data, max_pixels=max_pixels)
    width, height = im.size
    check_cost(im, decode_cost(im, target), budget)
    exif = exif_orientation(im)  # a PNG's EXIF may follow its pixels: this can load it
    if exif == 1 and orientation is not None:
        exif = -parse_orientation(orientation)  # negative: sent by the client
    if abs(exif) != 1:
        check_cost(im, decode_cost(im, target, abs(exif)), budget)
    factor = 1
    if target and im.format in ("JPEG", "MPO"):
        im.draft(im.mode, _draft_size(im.size, target))
    else:
        factor = reduce_factor(im.size, target)
    try:
        im.seek(0)
        im.load()
        fmt = im.format or ""
        image = _convert(im, factor)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImage(f"image data cannot be decoded: {exc}") from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - caught at open already
        raise TooManyPixels(f"image is too large in pixels ({exc})") from exc
    del im
    exif = abs(exif)
    if exif != 1:
        image = transpose(image, exif)
    size = (height, width) if exif in (5, 6, 7, 8) else (width, height)
    return Decoded(image=image, size=size, orientation=exif, format=fmt)
