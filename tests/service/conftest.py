"""Fixtures of the service tests: app and client from create_app(test config), sample images."""

from __future__ import annotations

from pathlib import Path

import pytest
from detector.app import create_app
from svc_helpers import jpeg_bytes
from svc_helpers import sample_image

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


@pytest.fixture
def service_config() -> dict:
    """Settings of a test app: real tiny weights, small limits, one allowed CORS origin."""
    require_weights()
    return {
        "model": "yolov3-tiny",
        "weights_dir": str(ROOT / "weights"),
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "max_pixels": MAX_PIXELS,
        "cors_origins": [ALLOWED_ORIGIN],
        "release": "test-release",
    }


@pytest.fixture
def app(service_config):
    """A fresh app per test; the loaded model is shared within the process (runtime cache)."""
    return create_app(service_config)


@pytest.fixture
def client(app):
    """Flask test client of `app`."""
    return app.test_client()


@pytest.fixture(scope="session")
def dog_jpeg() -> bytes:
    """../shared/testdata/dog.jpg (dog, bicycle, car), where the shared test data exists."""
    path = SHARED_TESTDATA / "dog.jpg"
    if not path.is_file():
        pytest.skip(f"shared test data absent ({path}); the skimage variants still run")
    return path.read_bytes()


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    """scikit-image's coffee photo as JPEG (tiny finds a cup)."""
    return jpeg_bytes(sample_image("coffee"))
