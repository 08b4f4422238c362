"""The original site's contract: `POST /` returns exactly {"name", "image"}; /status_check text."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image
from svc_helpers import jpeg_bytes
from svc_helpers import post_file
from svc_helpers import sample_image

PREFIX = b'{"name": "input.jpg", "image": "data:image/jpeg;base64, '


def decode_result(body: bytes) -> Image.Image:
    """Check the reply is byte-for-byte the original shape and return its JPEG."""
    assert body.startswith(PREFIX)
    assert body.endswith(b'"}')
    payload = json.loads(body)
    assert list(payload) == ["name", "image"]
    encoded = body[len(PREFIX) : -2]
    assert b" " not in encoded and b"\n" not in encoded
    image = Image.open(io.BytesIO(base64.b64decode(encoded, validate=True)))
    assert image.format == "JPEG"
    return image


def test_post_returns_the_original_shape_with_a_jpeg_of_the_upload_size(client, coffee_jpeg):
    response = post_file(client, "/", coffee_jpeg, orientation="undefined")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert decode_result(response.data).size == (600, 400)


def test_boxes_are_drawn_on_the_returned_image(client, coffee_jpeg):
    response = post_file(client, "/", coffee_jpeg)
    drawn = decode_result(response.data).convert("RGB")
    original = Image.open(io.BytesIO(coffee_jpeg)).convert("RGB")
    difference = sum(
        abs(a - b) for a, b in zip(drawn.tobytes()[::97], original.tobytes()[::97])
    ) / len(original.tobytes()[::97])
    assert difference > 1.0  # the box and label pixels changed the image


def test_dog_photo_round_trip(client, dog_jpeg):
    response = post_file(client, "/", dog_jpeg, filename="dog.jpg")
    assert decode_result(response.data).size == Image.open(io.BytesIO(dog_jpeg)).size


@pytest.mark.parametrize(
    ("orientation", "swapped"),
    [("1", False), ("6", True), ("8", True), ("3", False), ("undefined", False)],
)
def test_orientation_field_rotates_an_image_without_exif(client, orientation, swapped):
    upload = jpeg_bytes(sample_image("coffee"))  # 600 x 400, no EXIF
    response = post_file(client, "/", upload, orientation=orientation)
    assert decode_result(response.data).size == ((400, 600) if swapped else (600, 400))


def test_exif_orientation_of_the_file_wins_over_the_field(client):
    exif = Image.Exif()
    exif[0x0112] = 6
    upload = jpeg_bytes(sample_image("coffee"), exif=exif.tobytes())
    response = post_file(client, "/", upload, orientation="8")
    assert decode_result(response.data).size == (400, 600)


def test_detections_flag_adds_the_list_and_keeps_the_original_keys_first(client, dog_jpeg):
    response = post_file(client, "/?detections=1", dog_jpeg)
    payload = json.loads(response.data)
    assert list(payload)[:2] == ["name", "image"]
    assert payload["model"] == "yolov3-tiny"
    labels = {d["label"] for d in payload["detections"]}
    assert {"dog", "bicycle", "car"} <= labels


def test_status_check_answers_like_the_original(client):
    response = client.get("/status_check")
    assert response.status_code == 200
    assert response.data == b"GET request received"


def test_page_is_served_with_its_assets(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.data.decode()
    for needle in (
        'id="file-input"',
        'id="preview"',
        'id="detections"',
        'id="backend-state"',
        "/static/app.js",
        "/static/style.css",
        'name="viewport"',
    ):
        assert needle in html
    assert "connect-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        with client.get(asset) as response:
            assert response.status_code == 200
    assert "http" not in html.replace("http-equiv", "")  # nothing loads from another host
