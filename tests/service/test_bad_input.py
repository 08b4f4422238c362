"""A generated corpus of awkward uploads: every answer is 200 or a 4xx JSON error, never a 5xx."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image
from svc_helpers import MAX_UPLOAD_BYTES
from svc_helpers import jpeg_bytes
from svc_helpers import sample_image
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

ENDPOINTS = ("/", "/api/v1/detect")


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    """Encode an image in a Pillow format."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def photo(size=(320, 240)) -> Image.Image:
    """A small real photo to re-encode in many ways."""
    return sample_image("coffee").resize(size)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no data (a pixel bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def animated_gif() -> bytes:
    """Two frames: red then blue; the first one must be used."""
    red = Image.new("RGB", (64, 48), (255, 0, 0))
    blue = Image.new("RGB", (64, 48), (0, 0, 255))
    return encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)


def zip_file() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("photo.jpg", jpeg_bytes(photo()))
    return buf.getvalue()


def sixteen_bit_png() -> bytes:
    gradient = (np.arange(200 * 100, dtype=np.uint16).reshape(100, 200) * 3).astype(np.uint16)
    image = Image.fromarray(gradient)
    assert image.mode == "I;16"
    return encode(image, "PNG")


def truncated_jpeg() -> bytes:
    data = jpeg_bytes(photo())
    return data[: len(data) // 3]


# (case id, multipart fields (name -> bytes | str), expected status or set of acceptable statuses)
ACCEPTED = [
    ("jpeg", lambda: jpeg_bytes(photo())),
    ("png", lambda: encode(photo(), "PNG")),
    ("gif", lambda: encode(photo().convert("P"), "GIF")),
    ("animated-gif", animated_gif),
    ("webp", lambda: encode(photo(), "WEBP")),
    ("bmp", lambda: encode(photo(), "BMP")),
    ("tiff", lambda: encode(photo(), "TIFF")),
    ("cmyk-jpeg", lambda: jpeg_bytes(photo().convert("CMYK"))),
    ("grayscale-jpeg", lambda: jpeg_bytes(photo().convert("L"))),
    ("grayscale-png", lambda: encode(photo().convert("L"), "PNG")),
    ("16-bit-png", sixteen_bit_png),
    ("rgba-png", lambda: encode(photo().convert("RGBA"), "PNG")),
    ("la-png", lambda: encode(photo().convert("LA"), "PNG")),
    ("palette-transparent-png", lambda: encode(photo().convert("P"), "PNG", transparency=0)),
    ("1-bit-png", lambda: encode(photo().convert("1"), "PNG")),
    ("progressive-jpeg", lambda: jpeg_bytes(photo(), progressive=True)),
    ("one-pixel", lambda: encode(Image.new("RGB", (1, 1)), "PNG")),
    ("long-thin", lambda: encode(Image.new("RGB", (2000, 3), (9, 9, 9)), "PNG")),
]
REFUSED = [
    ("empty-file", lambda: b"", 400),
    ("truncated-jpeg", truncated_jpeg, 400),
    ("jpeg-magic-then-garbage", lambda: b"\xff\xd8\xff\xe0" + b"\x13" * 500, 400),
    ("png-magic-then-garbage", lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, 400),
    ("svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 415),
    ("svg-with-xml-prolog", lambda: b'<?xml version="1.0"?><svg width="1" height="1"/>', 415),
    ("text", lambda: b"hello, this is not an image\n", 415),
    ("html", lambda: b"<!doctype html><html><body>hi</body></html>", 415),
    ("json", lambda: b'{"image": "nope"}', 415),
    ("zip", zip_file, 415),
    ("pdf", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415),
    ("random-bytes", lambda: bytes(range(7, 256)) * 20, 415),
    ("pixels-over-limit", lambda: encode(Image.new("1", (2500, 2000)), "PNG"), 422),
    ("png-header-bomb", lambda: png_header_only(100_000, 100_000), 422),
    ("body-over-limit", lambda: b"\xff\xd8\xff" + b"\0" * (MAX_UPLOAD_BYTES + 1000), 413),
]


def check_error(response, status: int) -> None:
    """A refused upload: the expected 4xx and exactly {"error": "<sentence>"} as JSON."""
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/json"
    body = json.loads(response.data)
    assert list(body) == ["error"]
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"]


def post(client, url: str, fields: dict):
    """POST multipart fields; bytes become file parts, str plain form fields.

    The body is encoded in memory: the test client would spool a big one to a temporary file
    that it never closes.
    """
    form = {
        name: FileStorage(io.BytesIO(value), "upload.bin") if isinstance(value, bytes) else value
        for name, value in fields.items()
    }
    boundary, body = encode_multipart(form)
    return client.post(url, data=body, content_type=f"multipart/form-data; boundary={boundary}")


@pytest.mark.parametrize("url", ENDPOINTS)
@pytest.mark.parametrize(("case", "make"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_readable_images_are_accepted(client, url, case, make):
    response = post(client, url, {"file": make()})
    assert response.status_code == 200, response.data[:300]


@pytest.mark.parametrize("url", ENDPOINTS)
@pytest.mark.parametrize(("case", "make", "status"), REFUSED, ids=[c[0] for c in REFUSED])
def test_bad_uploads_get_a_4xx_json_error(client, url, case, make, status):
    check_error(post(client, url, {"file": make()}), status)


@pytest.mark.parametrize("url", ENDPOINTS)
@pytest.mark.parametrize(
    ("case", "fields"),
    [
        ("no-fields", {"orientation": "1"}),
        ("wrong-field-name", {"image": b"\xff\xd8\xff"}),
        ("file-sent-as-text-field", {"file": "not a file part"}),
    ],
)
def test_missing_file_is_400_naming_the_field(client, url, case, fields):
    response = post(client, url, fields)
    check_error(response, 400)
    assert "'file'" in response.get_json()["error"]


@pytest.mark.parametrize("url", ENDPOINTS)
def test_non_multipart_bodies_are_400(client, url):
    check_error(client.post(url, json={"image": "data:image/jpeg;base64,AAAA"}), 400)
    check_error(
        client.post(url, data="file=abc", content_type="application/x-www-form-urlencoded"), 400
    )
    check_error(client.post(url), 400)


def test_raw_body_that_is_not_an_image_is_415(client):
    check_error(client.post("/api/v1/detect", data=b"plain text", content_type="image/png"), 415)


@pytest.mark.parametrize(
    "orientation", ["undefined", "", "abc", "0", "9", "-1", "1e3", "6.5", "null", "١", "9" * 400]
)
def test_orientation_garbage_is_ignored(client, orientation):
    response = post(client, "/", {"file": jpeg_bytes(photo()), "orientation": orientation})
    assert response.status_code == 200


def test_animated_gif_uses_the_first_frame(client):
    response = post(client, "/", {"file": animated_gif()})
    encoded = response.get_json()["image"].split(", ", 1)[1]
    import base64

    image = Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")
    red, green, blue = image.getpixel((32, 24))
    assert red > 200 and blue < 60


def test_body_over_the_limit_without_a_file_part_is_413(client):
    big = b"x" * (MAX_UPLOAD_BYTES + 10)
    check_error(client.post("/api/v1/detect", data=big, content_type="image/jpeg"), 413)


@pytest.mark.parametrize("size", [(70_000, 1), (1, 70_000)])
def test_a_side_longer_than_a_jpeg_holds_is_422_when_drawn(client, size):
    """The drawn reply is a JPEG (sides up to 65500): such an image was a 500 with a traceback."""
    data = encode(Image.new("RGB", size), "PNG")
    response = post(client, "/", {"file": data})
    check_error(response, 422)
    assert "sides stop at 65500 pixels" in response.get_json()["error"]
    assert post(client, "/api/v1/detect", {"file": data}).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {f"part{i}": "x" for i in range(1001)},  # werkzeug reads at most 1000 parts
        {"orientation": "6" * 600_000},  # and 500,000 bytes of text fields
    ],
    ids=["1001-parts", "600-kB-text-field"],
)
def test_a_form_over_werkzeugs_limits_is_413_saying_which(client, fields):
    """The body is under the upload limit: the answer must not claim it is larger."""
    response = post(client, "/api/v1/detect", {"file": jpeg_bytes(photo()), **fields})
    check_error(response, 413)
    assert (
        "the form has more than 1000 parts or a text field over 500000 bytes"
        in (response.get_json()["error"])
    )
