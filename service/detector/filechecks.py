"""Costs a file's structure hides from its pixel count: TIFF value counts, JPEG scans, buffers."""

from __future__ import annotations

import math
import struct

from PIL import Image

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
# Values one tag of a TIFF's first directory may hold. Pillow unpacks a tag into Python objects
# (about 400 bytes per strip or tile once its tile list is built) while it opens the file, before
# any size check: 2.4 million one-row strips (a 19 MB file) took 930 MB and 10 s. A 50 MP image
# cut into 16x16 tiles has 195,313 tiles, so real files stay below this.
TIFF_MAX_VALUES = 1 << 18
# Scans a JPEG may have, weighed by its pixels: libjpeg walks every block of the image once per
# scan, and a progressive file can repeat a 75-byte scan (measured here: 40 ms per scan of a
# 50 MP image, 20,000 scans > 30 s). Encoders write 6 to 12 scans; this allows 64 at 50 MP.
JPEG_SCAN_PIXELS = 64 * 50_000_000
SOS = b"\xff\xda"  # start of scan: in entropy-coded data 0xFF is always followed by 0x00 or RSTn
_TIFF_COMPRESSION = 259
_TIFF_PHOTOMETRIC = 262
_TIFF_BITS = 258
_TIFF_ROWS_PER_STRIP = 278
_TIFF_TILE_WIDTH = 322
_TIFF_TILE_LENGTH = 323


def tiff_most_values(data: bytes) -> tuple[int, int]:
    """Return (tag, count) of the tag holding the most values in a TIFF's first directory.

    Reads only the directory's entry headers (TIFF 6.0 section 2, BigTIFF's 20-byte entries);
    (0, 0) when the file is not a TIFF or its directory lies outside the data.
    """
    if not data.startswith(TIFF_MAGIC):
        return 0, 0
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    head, count_fmt, entry_fmt, entry_size = ("Q", "Q", "HHQ", 20) if big else ("I", "H", "HHI", 12)
    try:
        (offset,) = struct.unpack_from(order + head, data, 8 if big else 4)
        (entries,) = struct.unpack_from(order + count_fmt, data, offset)
    except struct.error:
        return 0, 0
    first = offset + struct.calcsize(count_fmt)
    entries = min(entries, max(0, (len(data) - first) // entry_size))
    most = (0, 0)
    for index in range(entries):
        tag, _, count = struct.unpack_from(order + entry_fmt, data, first + index * entry_size)
        if count > most[1]:
            most = (tag, count)
    return most


def jpeg_scan_pixels(data: bytes, size: tuple[int, int]) -> tuple[int, int]:
    """Return (scans, scans x pixels) of a JPEG: the work its entropy decoding takes.

    Counts start-of-scan markers in the whole file; a marker inside an APP segment (an EXIF
    thumbnail's) is counted too, which only errs towards refusing.
    """
    scans = data.count(SOS)
    return scans, scans * size[0] * size[1]


def tiff_buffer_bytes(im: Image.Image) -> int:
    """Return the strip or tile buffer Pillow allocates to decode a TIFF through libtiff.

    libtiff decodes one whole strip (RowsPerStrip rows, at most the image's height) or tile
    (TileWidth x TileLength, not bounded by the image) into it; YCbCr and old-style JPEG
    files are decoded as RGBA, 4 bytes a pixel. 0 for other formats and uncompressed TIFFs,
    which Pillow reads row by row.
    """
    if im.format != "TIFF" or not im.tile or im.tile[0][0] != "libtiff":
        return 0
    tags = im.tag_v2
    width, height = im.size
    bits = tags.get(_TIFF_BITS, 1)
    pixel = math.ceil(sum(bits if isinstance(bits, tuple) else (bits,)) / 8)
    if tags.get(_TIFF_PHOTOMETRIC) == 6 or tags.get(_TIFF_COMPRESSION) == 6:
        pixel = max(pixel, 4)
    tile = (tags.get(_TIFF_TILE_WIDTH), tags.get(_TIFF_TILE_LENGTH))
    if all(isinstance(side, int) for side in tile):
        return tile[0] * tile[1] * pixel
    rows = tags.get(_TIFF_ROWS_PER_STRIP, height)
    rows = rows if isinstance(rows, int) and 0 < rows < height else height
    return width * rows * pixel
