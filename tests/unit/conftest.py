"""Model fixtures: real yolov3-tiny detectors per engine, random yolov3 weights, sample photos."""

from __future__ import annotations

import pytest
from detector.model import load_detector
from detector.model.loader import read_names
from detector.model.random_weights import write_random_weights
from model_helpers import COCO_NAMES
from model_helpers import ENGINE_CASES  # noqa: F401 (re-exported for the tests)
from model_helpers import SKIMAGE_PHOTOS
from model_helpers import TINY_CFG
from model_helpers import TINY_WEIGHTS
from model_helpers import YOLOV3_CFG


@pytest.fixture(scope="session")
def coco_names() -> list[str]:
    """The 80 COCO class names shipped with the package."""
    return read_names(COCO_NAMES)


@pytest.fixture(scope="session")
def tiny_weights():
    """Path of the real yolov3-tiny weights, or a skip naming how to get them."""
    if not TINY_WEIGHTS.is_file():
        pytest.skip(
            f"{TINY_WEIGHTS} missing: run `make setup` (detector fetch-weights yolov3-tiny)"
        )
    return TINY_WEIGHTS


@pytest.fixture(scope="session")
def tiny_detectors(tiny_weights, tmp_path_factory):
    """A cache of real yolov3-tiny detectors keyed by (engine, precision), loaded on demand."""
    cache, ov_cache = {}, tmp_path_factory.mktemp("tiny-ov-cache")

    def get(engine: str, precision: str = "fp32"):
        key = (engine, precision)
        if key not in cache:
            cache[key] = load_detector(
                TINY_CFG, tiny_weights, COCO_NAMES, engine=engine, precision=precision,
                threads=2, cache_dir=ov_cache,
            )  # fmt: skip
        return cache[key]

    return get


@pytest.fixture(scope="session")
def yolov3_random_weights(tmp_path_factory):
    """A seeded random weights file for the full yolov3 cfg (realistic scales, 248 MB)."""
    path = tmp_path_factory.mktemp("yolov3") / "yolov3-random.weights"
    return write_random_weights(YOLOV3_CFG, path, seed=3)


@pytest.fixture(scope="session")
def skimage_photos():
    """scikit-image's bundled sample photos as RGB arrays, by name."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) not installed")
    photos = {name: getattr(data, name)() for name in SKIMAGE_PHOTOS}
    photos["stereo_motorcycle"] = photos["stereo_motorcycle"][0]  # (left, right, disparity)
    return photos
