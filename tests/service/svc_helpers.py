"""Helpers of the service tests: sample images and multipart posts."""

from __future__ import annotations

import io
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights" / "yolov3-tiny.weights"
SHARED_TESTDATA = ROOT.parent / "shared" / "testdata"
ALLOWED_ORIGIN = "https://page.example"
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_PIXELS = 4_000_000


def require_weights() -> None:
    """Skip unless the real yolov3-tiny weights are present."""
    if not WEIGHTS.is_file():
        pytest.skip(f"yolov3-tiny weights missing at {WEIGHTS}: run `make weights`")
