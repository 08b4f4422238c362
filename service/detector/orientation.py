"""EXIF orientation: read it from a file, parse a client's value, undo it with transposes."""

from __future__ import annotations

from PIL import Image

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


def exif_orientation(im: Image.Image) -> int:
    """Return the EXIF orientation (1..8) of an opened image, 1 when absent or invalid."""
    try:
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
