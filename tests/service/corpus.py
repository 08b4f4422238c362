"""Small files that decode into huge images (50 MP at the default limits), for the memory tests."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 8000, 6250  # 50 MP: the default max_pixels


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data))
    return struct.pack(">I", len(data)) + kind + data + crc


def png16(width: int, height: int, color_type: int, channels: int) -> bytes:
    """A 16-bit PNG (grey: type 0, RGBA: type 6) of mid-grey rows, compressed row by row."""
    row = b"\0" + b"\x80\x00" * channels * width
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
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


def _deflated_zeros(count: int) -> bytes:
    """`count` zero bytes, deflated (a 1.6 GB tile compresses to 1.6 MB)."""
    packer = zlib.compressobj(9)
    block = bytes(1 << 24)
    parts = [
        packer.compress(block[: min(len(block), count - at)]) for at in range(0, count, len(block))
    ]
    return b"".join(parts) + packer.flush()


def _ifd(order: str, entries: list[tuple[int, int, int, bytes]], start: int) -> tuple[bytes, bytes]:
    """A TIFF directory at `start` and its out-of-line values; entries: (tag, type, count, raw)."""
    data_at = start + 2 + 12 * len(entries) + 4
    table, values = b"", b""
    for tag, kind, count, value in sorted(entries):
        if len(value) <= 4:
            table += struct.pack(order + "HHI", tag, kind, count) + value.ljust(4, b"\0")
        else:
            table += struct.pack(order + "HHII", tag, kind, count, data_at + len(values))
            values += value + b"\0" * (len(value) % 2)
    return struct.pack(order + "H", len(entries)) + table + b"\0\0\0\0", values


def tiff(
    width: int, height: int, bits: tuple[int, ...], layout: tuple, chunk: bytes, **tags
) -> bytes:
    """A little-endian TIFF whose every strip or tile is `chunk`.

    :param layout: ("strip", rows per strip) or ("tile", width, length).
    :param tags: compression (1 none, 8 deflate), photometric (1 grey, 2 RGB), extra (ExtraSamples).
    """
    count = (
        -(-height // layout[1])
        if layout[0] == "strip"
        else (-(-width // layout[1]) * -(-height // layout[2]))
    )

    def entries(at: int) -> list:
        def longs(*values: int) -> bytes:
            return struct.pack(f"<{len(values)}I", *values)

        found = [
            (256, 4, 1, longs(width)),
            (257, 4, 1, longs(height)),
            (258, 3, len(bits), struct.pack(f"<{len(bits)}H", *bits)),
            (259, 3, 1, struct.pack("<H", tags.get("compression", 8))),
            (262, 3, 1, struct.pack("<H", tags.get("photometric", 2 if len(bits) > 2 else 1))),
            (277, 3, 1, struct.pack("<H", len(bits))),
        ]
        if "extra" in tags:
            found.append((338, 3, 1, struct.pack("<H", tags["extra"])))
        offsets, counts = (273, 279) if layout[0] == "strip" else (324, 325)
        if layout[0] == "strip":
            found.append((278, 4, 1, longs(layout[1])))
        else:
            found += [(322, 4, 1, longs(layout[1])), (323, 4, 1, longs(layout[2]))]
        found += [
            (offsets, 4, count, longs(at) * count),
            (counts, 4, count, longs(len(chunk)) * count),
        ]
        return found

    table, values = _ifd("<", entries(0), 8)
    table, values = _ifd("<", entries(8 + len(table) + len(values)), 8)
    return b"II*\0" + struct.pack("<I", 8) + table + values + chunk


def exif_bomb(values: int) -> bytes:
    """An EXIF block whose orientation tag holds `values` distinct 16-bit numbers."""
    numbers = struct.pack(f">{values}H", *(300 + i % 60000 for i in range(values)))
    entry = struct.pack(">HHII", 0x0112, 3, values, 26)
    return b"MM\0*" + struct.pack(">IH", 8, 1) + entry + b"\0\0\0\0" + numbers


def png_with_exif(exif: bytes) -> bytes:
    """A small PNG carrying `exif` in an eXIf chunk before its pixels."""
    small = _save(Image.new("RGB", (64, 48), (90, 100, 110)), "PNG")
    return small[:33] + png_chunk(b"eXIf", exif) + small[33:]


def jpeg_repeated_scans(width: int, height: int, copies: int) -> bytes:
    """A progressive grey JPEG whose last scan (75 bytes at 50 MP) is repeated `copies` times."""
    data = _save(Image.new("L", (width, height), 128), "JPEG", quality=60, progressive=True)
    end = data.rindex(b"\xff\xd9")
    last = data[data.rindex(b"\xff\xda") : end]
    return data[:end] + last * copies + data[end:]


def jpeg_with_segments(segment: bytes, count: int) -> bytes:
    """A small JPEG with `count` copies of a marker segment after its SOI (Pillow parses each)."""
    data = _save(Image.new("RGB", (64, 48), (90, 100, 110)), "JPEG")
    return data[:2] + segment * count + data[2:]


def png_with_chunks(chunk: bytes, count: int) -> bytes:
    """A small PNG with `count` copies of a chunk before its pixels."""
    small = _save(Image.new("RGB", (64, 48), (90, 100, 110)), "PNG")
    return small[:33] + chunk * count + small[33:]


def iccp(inflated: int) -> bytes:
    """An iCCP chunk whose profile inflates to `inflated` bytes (Pillow reads up to 1 MiB)."""
    return png_chunk(b"iCCP", b"p\0\0" + zlib.compress(bytes(inflated), 9))


def noise_jpeg(width: int = WIDTH, height: int = HEIGHT, quality: int = 40) -> bytes:
    """Random pixels as JPEG (17 MB at 50 MP): the drawn reply of / is as large (~40 MB)."""
    rng = np.random.default_rng(13)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return _save(Image.fromarray(pixels), "JPEG", quality=quality)


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
    # Found by the attacker's-side audit (issue 13.5): costs the pixel count does not show.
    "png-exif-bomb": lambda: png_with_exif(exif_bomb(9_000_000)),
    "webp-exif-bomb": lambda: _save(_mid("RGB", (64, 48)), "WEBP", exif=exif_bomb(9_000_000)),
    "tiff-rgba16-one-strip": lambda: tiff(
        WIDTH, HEIGHT, (16,) * 4, ("strip", HEIGHT), _deflated_zeros(WIDTH * HEIGHT * 8), extra=2
    ),
    "tiff-tile-beyond-image": lambda: tiff(
        WIDTH, HEIGHT, (8,) * 3, ("tile", 8192, 65520), _deflated_zeros(8192 * 65520 * 3)
    ),
    "tiff-2.4M-strips": lambda: tiff(8, 2_400_000, (8,), ("strip", 1), bytes(8), compression=1),
    "jpeg-20000-scans": lambda: jpeg_repeated_scans(WIDTH, HEIGHT, 20_000),
    "png-70000x1": lambda: _save(Image.new("RGB", (70_000, 1)), "PNG"),
    "jpeg-5M-app1-segments": lambda: jpeg_with_segments(b"\xff\xe1\x00\x02", 5_000_000),
    "png-19000-iccp-chunks": lambda: png_with_chunks(iccp(1 << 20), 19_000),
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
