"""Costs a file's structure hides from its pixel count: value counts, scans, segments, buffers."""

from __future__ import annotations

import math
import struct

from PIL import Image
from PIL.JpegImagePlugin import MARKER

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
# Values one tag of a TIFF's first directory may hold. Pillow unpacks a tag into Python objects
# (about 400 bytes per strip or tile once its tile list is built) while it opens the file, before
# any size check: 2.4 million one-row strips (a 19 MB file) took 930 MB and 10 s. A 50 MP image
# cut into 16x16 tiles has 195,313 tiles, so real files stay below this.
TIFF_MAX_VALUES = 1 << 18
# Tag types Pillow unpacks into bytes or a str (BYTE, ASCII, UNDEFINED: ICC profiles, XMP,
# Photoshop blocks of several MB): not counted, they cost their size once.
_TIFF_BYTE_TYPES = (1, 2, 7)
# Scans a JPEG may have, weighed by its pixels: libjpeg walks every block of the image once per
# scan, and a progressive file can repeat a 75-byte scan (measured here: 40 ms per scan of a
# 50 MP image, 20,000 scans > 30 s). Encoders write 6 to 12 scans; this allows 64 at 50 MP.
JPEG_SCAN_PIXELS = 64 * 50_000_000
SOS = b"\xff\xda"  # start of scan: in entropy-coded data 0xFF is always followed by 0x00 or RSTn
# Segments and chunks Pillow reads one by one in Python while it opens a JPEG (markers before the
# first scan) or a PNG (every chunk but IDAT): each costs ~140 bytes and a few microseconds, and
# a PNG's iCCP chunk inflates up to 1 MB each time. Measured: 5 million empty APP1 segments
# (20 MB) took 700 MB and 7 s; 19,000 iCCP chunks 20 s. Real files have a few dozen.
MAX_SEGMENTS = 1 << 16
MAX_INFLATED_CHUNKS = 64  # iCCP, zTXt, iTXt (Pillow stops zTXt and iTXt at 64 MB of text)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_INFLATED = (b"iCCP", b"zTXt", b"iTXt")
_TIFF_COMPRESSION = 259
_TIFF_PHOTOMETRIC = 262
_TIFF_BITS = 258
_TIFF_ROWS_PER_STRIP = 278
_TIFF_TILE_WIDTH = 322
_TIFF_TILE_LENGTH = 323


def tiff_most_values(data: bytes) -> tuple[int, int]:
    """Return (tag, count) of the tag holding the most numbers in a TIFF's first directory.

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
        tag, kind, count = struct.unpack_from(order + entry_fmt, data, first + index * entry_size)
        if kind not in _TIFF_BYTE_TYPES and count > most[1]:
            most = (tag, count)
    return most


def jpeg_scans_problem(data: bytes, size: tuple[int, int]) -> str | None:
    """Say why a JPEG's scans would take too long to decode (None if they would not).

    Counts start-of-scan markers in the whole file; a marker inside an APP segment (an EXIF
    thumbnail's) is counted too, which only errs towards refusing.
    """
    scans = data.count(SOS)
    if scans * size[0] * size[1] <= JPEG_SCAN_PIXELS:
        return None
    return (
        f"this {size[0]}x{size[1]} JPEG has {scans} scans; decoding that many takes too long "
        f"(scans x pixels over {JPEG_SCAN_PIXELS}); re-save it as a baseline JPEG"
    )


def structure_problem(data: bytes) -> str | None:
    """Say why a file's structure alone would cost Pillow too much to open (None if fine)."""
    tag, count = tiff_most_values(data)
    if count > TIFF_MAX_VALUES:  # Pillow would unpack them all while opening the file
        return (
            f"TIFF tag {tag} holds {count} values, more than the {TIFF_MAX_VALUES} this service "
            "opens; re-save the image with fewer strips or tiles, or as JPEG or PNG"
        )
    if data.startswith(b"\xff\xd8\xff") and jpeg_segments(data) > MAX_SEGMENTS:
        return (
            f"this JPEG has more than {MAX_SEGMENTS} marker segments before its pixels; "
            "re-save it without its metadata"
        )
    if data.startswith(PNG_SIGNATURE):
        chunks, inflated = png_chunks(data)
        if chunks > MAX_SEGMENTS:
            return (
                f"this PNG has more than {MAX_SEGMENTS} metadata chunks; "
                "re-save it without its metadata"
            )
        if inflated > MAX_INFLATED_CHUNKS:
            return (
                f"this PNG has {inflated} compressed metadata chunks (iCCP, zTXt, iTXt), more "
                f"than {MAX_INFLATED_CHUNKS}; re-save it without its metadata"
            )
    return None


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


def jpeg_segments(data: bytes) -> int:
    """Count the marker segments Pillow's JPEG reader walks before the first scan.

    Follows the same chain (a marker with a handler carries a 2-byte length; one without, such
    as RSTn or EOI, does not; 0xFF fill and other bytes between markers are skipped) and stops
    counting past MAX_SEGMENTS.
    """
    pos, segments = 2, 0
    while segments <= MAX_SEGMENTS:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            break
        marker = 0xFF00 | data[pos + 1]
        if marker == 0xFFDA:
            break
        if marker not in MARKER:  # fill (0xFFFF) or stuffed (0xFF00) bytes
            pos += 1 if marker == 0xFFFF else 2
            continue
        segments += 1
        length = int.from_bytes(data[pos + 2 : pos + 4], "big") if MARKER[marker][2] else 0
        pos += 2 + max(length, 2 if MARKER[marker][2] else 0)
    return segments


def png_chunks(data: bytes) -> tuple[int, int]:
    """Return (chunks other than IDAT, chunks Pillow inflates) of a PNG, up to its IEND.

    Stops counting past MAX_SEGMENTS chunks.
    """
    pos, chunks, inflated = len(PNG_SIGNATURE), 0, 0
    while pos + 8 <= len(data) and chunks <= MAX_SEGMENTS:
        kind = data[pos + 4 : pos + 8]
        if kind == b"IEND":
            break
        if kind != b"IDAT":
            chunks += 1
            inflated += kind in _PNG_INFLATED
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
    return chunks, inflated
