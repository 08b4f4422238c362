"""Fixtures of the service tests: app and client from create_app(test config), sample images."""

from __future__ import annotations

import pytest
from detector.app import create_app
from svc_helpers import ALLOWED_ORIGIN
from svc_helpers import MAX_PIXELS
from svc_helpers import MAX_UPLOAD_BYTES
from svc_helpers import ROOT
from svc_helpers import SHARED_TESTDATA
from svc_helpers import jpeg_bytes
from svc_helpers import require_weights
from svc_helpers import sample_image


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
