"""Upload decoding (orientation, modes, draft, refusals), drawing and JPEG encoding."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from detector.detection import Detection
from detector.drawing import draw_detections
from detector.drawing import encode_jpeg
from detector.imaging import MB
from detector.imaging import CorruptImage
from detector.imaging import EmptyImage
from detector.imaging import ImageError
from detector.imaging import NotAnImage
from detector.imaging import TooCostly
from detector.imaging import TooManyPixels
from detector.imaging import decode_cost
from detector.imaging import decode_image
from detector.orientation import apply_orientation
from PIL import Image
from PIL import ImageOps

LIMIT = 50_000_000


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def _asymmetric(w: int = 48, h: int = 32) -> Image.Image:
    """An image whose every flip/rotation is distinguishable: red top-left, blue bottom-right."""
    arr = np.full((h, w, 3), 128, np.uint8)
    arr[: h // 2, : w // 3] = (255, 0, 0)
    arr[h // 2 :, 2 * w // 3 :] = (0, 0, 255)
    return Image.fromarray(arr)


def _with_orientation(image: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(image, fmt, exif=exif.tobytes())


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR announces width x height (the pixel data is never reached)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    data = _with_orientation(_asymmetric(), orientation, "PNG")
    decoded = decode_image(data, max_pixels=LIMIT)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert decoded.image.size == expected.size == decoded.size
    assert np.array_equal(np.asarray(decoded.image), np.asarray(expected))
    assert decoded.orientation == orientation


def test_jpeg_draft_decodes_reduced_and_keeps_original_size():
    data = _save(_asymmetric(2400, 1600), "JPEG", quality=80)
    decoded = decode_image(data, max_pixels=LIMIT, target=416)
    assert decoded.size == (2400, 1600)
    assert decoded.image.size == (600, 400)  # scale 1/4: still >= the 416x278 letterbox
    full = decode_image(data, max_pixels=LIMIT)
    assert full.image.size == full.size == (2400, 1600)


def test_jpeg_draft_with_rotation_reports_oriented_size():
    data = _with_orientation(_asymmetric(2400, 1600), 6)
    decoded = decode_image(data, max_pixels=LIMIT, target=416)
    assert decoded.size == (1600, 2400)
    assert decoded.image.size == (400, 600)


def test_draft_never_goes_below_the_letterbox():
    data = _save(_asymmetric(1000, 200), "JPEG")
    decoded = decode_image(data, max_pixels=LIMIT, target=416)
    assert max(decoded.image.size) >= 416
    assert decoded.size == (1000, 200)


def test_cmyk_jpeg_becomes_rgb():
    data = _save(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG", quality=95)
    decoded = decode_image(data, max_pixels=LIMIT, target=416)
    assert decoded.image.mode == "RGB"
    r, g, b = decoded.image.getpixel((10, 5))
    assert r > 200 and g < 60 and b < 60


def test_grey_and_16_bit_images_become_rgb():
    grey = decode_image(_save(Image.new("L", (8, 8), 77), "PNG"), max_pixels=LIMIT)
    assert grey.image.getpixel((0, 0)) == (77, 77, 77)
    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    decoded = decode_image(_save(deep, "PNG"), max_pixels=LIMIT)
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((3, 3)) == (255, 255, 255)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (8, 8), (0, 0, 0, 0)),
        Image.new("LA", (8, 8), (0, 0)),
        Image.new("P", (8, 8), 0),
    ],
    ids=["RGBA", "LA", "P-transparency"],
)
def test_transparency_is_composited_on_white(image):
    params = {"transparency": 0} if image.mode == "P" else {}
    decoded = decode_image(_save(image, "PNG", **params), max_pixels=LIMIT)
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((4, 4)) == (255, 255, 255)


def test_animation_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = decode_image(buf.getvalue(), max_pixels=LIMIT)
    r, g, b = decoded.image.getpixel((8, 8))
    assert r > 200 and b < 50


def test_orientation_override_applies_only_without_exif():
    plain = _save(_asymmetric(), "PNG")
    turned = decode_image(plain, max_pixels=LIMIT, orientation="6")
    assert turned.size == turned.image.size == (32, 48)
    assert turned.orientation == 6
    own = decode_image(
        _with_orientation(_asymmetric(), 3, "PNG"), max_pixels=LIMIT, orientation="6"
    )
    assert own.size == (48, 32)
    assert own.orientation == 3
    for garbage in ("undefined", "", "9", "0", "six", None):
        ignored = decode_image(plain, max_pixels=LIMIT, orientation=garbage)
        assert ignored.size == (48, 32)


def test_apply_orientation_rotates_and_ignores_garbage():
    image = _asymmetric()
    assert apply_orientation(image, "8").size == (32, 48)
    assert apply_orientation(image, "undefined") is image
    assert apply_orientation(image, None) is image


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "hello")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "error", "status", "words"),
    [
        (b"", EmptyImage, 400, "empty"),
        (b"hello, this is text\n", NotAnImage, 415, "text/plain"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', NotAnImage, 415, "image/svg+xml"),
        (b"<!DOCTYPE html><html></html>", NotAnImage, 415, "text/html"),
        (_zip_bytes(), NotAnImage, 415, "application/zip"),
        (b"\xff\xd8\xff\xe0garbage", CorruptImage, 400, "cannot be decoded"),
        (_save(_asymmetric(), "JPEG")[:300], CorruptImage, 400, "cannot be decoded"),
        (_png_header(8000, 8000), TooManyPixels, 422, "64000000 pixels"),
        (_png_header(10000, 10000), TooManyPixels, 422, "too large"),
        (_png_header(30000, 30000), TooManyPixels, 422, "too large"),
    ],
    ids=["empty", "text", "svg", "html", "zip", "bad-jpeg", "truncated", "bomb", "warn", "huge"],
)
def test_bad_uploads_are_refused_with_a_status(data, error, status, words):
    with pytest.raises(error) as info:
        decode_image(data, max_pixels=LIMIT, target=416)
    assert isinstance(info.value, ImageError)
    assert info.value.status == status
    assert words in str(info.value)


def test_pixel_limit_is_the_configured_one():
    data = _save(_asymmetric(100, 100), "PNG")
    with pytest.raises(TooManyPixels, match="100x100"):
        decode_image(data, max_pixels=9_999)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize("size", [(64, 48), (640, 480), (4000, 3000)])
def test_draw_detections_marks_boxes_and_labels(size):
    w, h = size
    image = Image.new("RGB", size, (40, 40, 40))
    dets = [
        Detection("dog", 16, 0.91, (w * 0.2, h * 0.3, w * 0.6, h * 0.9)),
        Detection("person", 0, 0.5, (-10.0, -10.0, w + 10.0, h + 10.0)),
    ]
    out = draw_detections(image, dets)
    assert out.size == size and out.mode == "RGB"
    assert image.getpixel((0, 0)) == (40, 40, 40)  # the input is left untouched
    arr = np.asarray(out)
    assert (arr != 40).any(axis=2).mean() > 0.005
    assert tuple(arr[int(h * 0.6), int(w * 0.2)]) != (40, 40, 40)  # left edge of the dog box


def test_label_font_grows_with_the_image():
    def label_rows(size):
        image = Image.new("RGB", size, (0, 0, 0))
        det = Detection("person", 0, 0.9, (size[0] * 0.1, size[1] * 0.5, size[0] * 0.9, size[1]))
        arr = np.asarray(draw_detections(image, [det]))
        col = arr[: int(size[1] * 0.5), int(size[0] * 0.1) + 3]  # through the label
        return int((col != 0).any(axis=1).sum())

    assert label_rows((4000, 3000)) > 3 * label_rows((640, 480)) > 0


def test_encode_jpeg_round_trips():
    data = encode_jpeg(_asymmetric(), quality=90)
    assert data[:3] == b"\xff\xd8\xff"
    back = Image.open(io.BytesIO(data))
    assert back.format == "JPEG" and back.size == (48, 32)


def _noise(mode: str, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 256, (h, w, len(mode)), np.uint8), mode)


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "L", "P"])
def test_non_jpeg_images_decode_reduced_like_a_whole_image_reduce(mode):
    """Band-by-band conversion and reduction gives what converting the whole image gives."""
    image = _noise("RGBA" if mode == "RGBA" else "RGB", 2100, 1700)
    image = image.convert(mode) if mode != "RGBA" else image
    decoded = decode_image(_save(image, "PNG"), max_pixels=LIMIT, target=416)
    assert decoded.size == (2100, 1700)
    assert decoded.image.size == (-(-2100 // 5), -(-1700 // 5))  # 2100 // 421, 1700 // 341
    whole = decode_image(_save(image, "PNG"), max_pixels=LIMIT).image.reduce(5)
    assert np.array_equal(np.asarray(decoded.image), np.asarray(whole))


def test_float_and_32_bit_images_scale_alike_in_every_band():
    """One scale for the whole image: a dark band is not left unscaled next to a bright one."""
    arr = np.zeros((2000, 300), np.float32)
    arr[:1000] = 200.0  # alone this band would be taken as 8-bit values
    arr[1000:] = 65535.0
    for mode, data in (("F", arr), ("I", arr.astype(np.int32))):
        decoded = decode_image(_save(Image.fromarray(data, mode), "TIFF"), max_pixels=LIMIT)
        assert decoded.image.getpixel((5, 5)) == (1, 1, 1), mode  # 200 / 257 rounded
        assert decoded.image.getpixel((5, 1500)) == (255, 255, 255), mode


def test_costly_decodes_are_refused_before_decoding():
    data = _save(Image.new("RGBA", (2000, 1500)), "PNG")
    with pytest.raises(TooCostly, match=r"needs about 2\d MB, more than the 20 MB"):
        decode_image(data, max_pixels=LIMIT, budget=20 * MB)
    assert decode_image(data, max_pixels=LIMIT, budget=20 * MB, target=416).size == (2000, 1500)


def test_the_cost_of_a_progressive_jpeg_counts_its_coefficients():
    image = Image.new("RGB", (1600, 1200), (90, 100, 110))
    baseline = Image.open(io.BytesIO(_save(image, "JPEG")))
    progressive = Image.open(io.BytesIO(_save(image, "JPEG", progressive=True, subsampling=0)))
    extra = decode_cost(progressive) - decode_cost(baseline)
    assert extra == 1600 * 1200 * 3 * 2  # 3 full-size components, 2 bytes per coefficient


def test_icons_are_refused_naming_the_format():
    inner = _save(Image.new("RGB", (16, 16)), "PNG")
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner), 22)
    with pytest.raises(NotAnImage, match=r"^ICO \(icon\) files are not accepted"):
        decode_image(struct.pack("<HHH", 0, 1, 1) + entry + inner, max_pixels=LIMIT)
