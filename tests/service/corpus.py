"""Small files that decode into huge images (50 MP at the default limits), for the memory tests."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image

WIDTH, HEIGHT = 8000, 6250  # 50 MP: the default max_pixels


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data))
    return struct.pack(">I", len(data)) + kind + data + crc


def png16(width: int, height: int, color_type: int, channels: int) -> bytes:
    """A 16-bit PNG (grey: type 0, RGBA: type 6) of mid-grey rows, compressed row by row."""
    row = b"\0" + b"\x80\x00" * channels * width
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    )


def bmp_rle8(width: int, height: int, index: int = 3) -> bytes:
    """An 8-bit run-length encoded BMP of one palette index."""
    run = bytearray()
    left = width
    while left:
        count = min(255, left)
        run += bytes((count, index))
        left -= count
    rows = (bytes(run) + b"\0\0") * height + b"\0\x01"
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    header = b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset)
    return header + info + palette + rows


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def _mid(mode: str, size=(WIDTH, HEIGHT)) -> Image.Image:
    values = {"F": 3000.5, "I": 30000, "I;16": 30000, "CMYK": (30, 60, 90, 10), "P": 3}
    return Image.new(mode, size, values.get(mode, (90, 100, 110)))


CORPUS = {
    "png-gray16": lambda: png16(WIDTH, HEIGHT, 0, 1),
    "png-rgba16": lambda: png16(WIDTH, HEIGHT, 6, 4),
    "tiff-F": lambda: _save(_mid("F"), "TIFF", compression="tiff_adobe_deflate"),
    "tiff-I": lambda: _save(_mid("I"), "TIFF", compression="tiff_adobe_deflate"),
    "tiff-I16": lambda: _save(_mid("I;16"), "TIFF", compression="tiff_adobe_deflate"),
    "webp-lossless-50mp": lambda: _save(_mid("RGB"), "WEBP", lossless=True),
    "webp-lossless-20mp": lambda: _save(_mid("RGB", (5000, 4000)), "WEBP", lossless=True),
    "bmp-rle8": lambda: bmp_rle8(WIDTH, HEIGHT),
    "gif": lambda: _save(_mid("P"), "GIF"),
    "jpeg-huge": lambda: _save(_mid("RGB"), "JPEG", quality=60),
    "jpeg-progressive": lambda: _save(_mid("RGB"), "JPEG", quality=60, progressive=True),
    "jpeg-progressive-444": lambda: _save(
        _mid("RGB"), "JPEG", quality=60, progressive=True, subsampling=0
    ),
    "jpeg-cmyk": lambda: _save(_mid("CMYK"), "JPEG", quality=60),
    "jpeg-cmyk-progressive": lambda: _save(_mid("CMYK"), "JPEG", quality=60, progressive=True),
}


def build(directory: Path) -> dict[str, Path]:
    """Write every corpus file into `directory` (once) and return name -> path."""
    paths = {}
    for name, make in CORPUS.items():
        path = directory / name
        if not path.exists():
            path.write_bytes(make())
        paths[name] = path
    return paths
