"""Full yolov3 (416) with seeded random weights against OpenCV's darknet net on the same file."""

from __future__ import annotations

import numpy as np
import pytest
from detector.model import load_detector
from model_helpers import COCO_NAMES
from model_helpers import NEEDS_OPENVINO
from model_helpers import YOLOV3_CFG
from model_helpers import Oracle
from model_helpers import mismatches
from model_helpers import oracle_letterbox
from PIL import Image

pytestmark = pytest.mark.slow  # writes a 248 MB weights file and runs yolov3 a dozen times

HEADS = ["conv_81", "conv_93", "conv_105"]  # the convs feeding the three [yolo] layers
# Raw head maps (logits; std about 2 on these inputs): |torch - OpenCV| <= 1e-2 + 1e-3 |OpenCV|
# (measured max 1.6e-3: float32 summation order through 75 convs).
ATOL, RTOL = 1e-2, 1e-3
PHOTOS = ("coffee", "astronaut")


@pytest.fixture(scope="module")
def oracle(yolov3_random_weights, coco_names):
    return Oracle(YOLOV3_CFG, yolov3_random_weights, coco_names)


@pytest.fixture(
    scope="module", params=["torch", "opencv", pytest.param("openvino", marks=NEEDS_OPENVINO)]
)
def detector(request, yolov3_random_weights, tmp_path_factory):
    yield load_detector(
        YOLOV3_CFG, yolov3_random_weights, COCO_NAMES, engine=request.param, precision="fp32",
        cache_dir=tmp_path_factory.mktemp("ov-cache"),
    )  # fmt: skip


def test_raw_head_maps_match_oracle(detector, oracle, skimage_photos):
    blob, _ = oracle_letterbox(skimage_photos["coffee"], 416)
    want = oracle.raw(blob, HEADS)
    ours = detector.infer(blob)
    assert [tuple(m.shape) for m in ours] == [(1, 255, 13, 13), (1, 255, 26, 26), (1, 255, 52, 52)]
    for got, expected in zip(ours, want):
        assert expected.std() > 0.5  # the random net is neither dead nor saturated
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("photo", PHOTOS)
def test_detections_match_oracle(detector, oracle, skimage_photos, photo):
    rgb = skimage_photos[photo]
    want = oracle.detect(rgb)
    ours = detector.detect(Image.fromarray(rgb))
    assert len(want) >= 5, "random weights should give a handful of detections"
    assert mismatches(ours, want, rgb.shape[1], rgb.shape[0]) == []
