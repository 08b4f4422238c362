"""EXIF orientation: read it from a file, parse a client's value, undo it with transposes."""

from __future__ import annotations

from PIL import Image

EXIF_ORIENTATION = 0x0112
# A JPEG's EXIF (an APP1 segment) holds at most 64 KiB, and cameras write less; a PNG's or WebP's
# chunk has no such bound: one orientation tag of 9 million values took a worker 530 MB.
MAX_EXIF_BYTES = 1 << 16
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


def exif_size(im: Image.Image) -> int:
    """Return the bytes of an opened image's EXIF block (a PNG's may follow its pixels: loads it).

    A TIFF's EXIF is its own first directory, bounded before opening (imaging.open_image).
    """
    if im.format == "PNG" and "exif" not in im.info:
        im.load()
    profile = im.info.get("Raw profile type exif") or ""  # a PNG text chunk, in hex
    return max(len(im.info.get("exif") or b""), len(profile) // 2)


def exif_orientation(im: Image.Image) -> int:
    """Return the EXIF orientation (1..8) of an opened image, 1 when absent or invalid.

    An EXIF block larger than MAX_EXIF_BYTES is not read: Pillow unpacks a tag into Python
    objects, 20 to 40 times its size in bytes.
    """
    try:
        if exif_size(im) > MAX_EXIF_BYTES:
            return 1
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # broken EXIF blocks are common: treat them as "no orientation"
        return 1
    return value if value in range(1, 9) else 1


def parse_orientation(orientation: str | int | None) -> int:
    """Return an EXIF orientation 1..8 from a form value; garbage ("undefined", "") gives 1."""
    try:
        value = int(str(orientation).strip())
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def transpose(image: Image.Image, orientation: int) -> Image.Image:
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
    return transpose(image, parse_orientation(orientation))
