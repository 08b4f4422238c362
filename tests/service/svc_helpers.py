"""Helpers of the service tests: sample images and multipart posts."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart


def jpeg_bytes(image: Image.Image, quality: int = 90, **params) -> bytes:
    """Encode an image as JPEG."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, **params)
    return buf.getvalue()


def sample_image(name: str) -> Image.Image:
    """Return a scikit-image sample photo (bundled in its wheel) as an RGB image."""
    skdata = pytest.importorskip("skimage.data", reason="scikit-image (test extra) not installed")
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


def post_file(client, url: str, data: bytes, filename: str = "upload.jpg", **fields):
    """POST `data` as multipart field `file` (plus other form fields) with the test client."""
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(data), filename), **fields})
    return client.post(url, data=body, content_type=f"multipart/form-data; boundary={boundary}")
