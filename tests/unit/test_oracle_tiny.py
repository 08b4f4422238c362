"""yolov3-tiny with the real weights against OpenCV's darknet importer, for every engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_helpers import ENGINE_CASES
from model_helpers import PHOTOS_WITH_OBJECTS
from model_helpers import SHARED
from model_helpers import SKIMAGE_PHOTOS
from model_helpers import TINY_CFG
from model_helpers import Box
from model_helpers import Oracle
from model_helpers import mismatches
from model_helpers import oracle_letterbox
from PIL import Image

SHARED_IMAGES = ("crosswalk.jpg", "dog.jpg", "street.jpg", "wedding.jpg")


@pytest.fixture(scope="module")
def reference():
    """The shared reference detections (OpenCV on the four test images), by image name."""
    path = SHARED / "reference" / "yolov3-tiny.json"
    if not path.is_file():
        pytest.skip(f"{path} absent: the shared test data exists only here and in CI")
    return {entry["image"]: entry for entry in json.loads(path.read_text())}


@pytest.fixture(scope="module")
def oracle(tiny_weights, coco_names):
    """OpenCV's darknet net on the same cfg + weights, run live."""
    return Oracle(TINY_CFG, tiny_weights, coco_names)


@pytest.mark.parametrize("case", ENGINE_CASES)
@pytest.mark.parametrize("image_name", SHARED_IMAGES)
def test_matches_shared_reference(tiny_detectors, reference, case, image_name):
    expected = reference[image_name]
    image = Image.open(SHARED / "testdata" / image_name).convert("RGB")
    assert image.size == (expected["width"], expected["height"])
    detector = tiny_detectors(*case)
    ours = detector.detect(image)
    want = [Box(d["label"], d["score"], tuple(d["box"])) for d in expected["detections"]]
    assert mismatches(ours, want, *image.size) == []
    assert {d.label for d in ours if d.score > 0.3} == {d.label for d in want if d.score > 0.3}


@pytest.mark.parametrize("case", ENGINE_CASES)
@pytest.mark.parametrize("photo", PHOTOS_WITH_OBJECTS)
def test_matches_live_oracle_on_sample_photos(tiny_detectors, oracle, skimage_photos, case, photo):
    rgb = skimage_photos[photo]
    want = oracle.detect(rgb)
    ours = tiny_detectors(*case).detect(Image.fromarray(rgb))
    assert want, f"the oracle finds nothing in {photo}: pick a photo with objects"
    assert mismatches(ours, want, rgb.shape[1], rgb.shape[0]) == []


# Raw head maps (logits, mean |x| about 6.5) on the same input. fp32: |ours - oracle| <=
# 2e-3 + 1e-3 |oracle| everywhere. bf16 keeps about 3 significant digits per layer: median
# |diff| <= 0.1 and max |diff| <= 1.0 (measured 0.05 and 0.72); its detections are checked above.
FP32_ATOL, FP32_RTOL = 2e-3, 1e-3
BF16_MEDIAN, BF16_MAX = 0.1, 1.0


@pytest.mark.parametrize("case", ENGINE_CASES)
@pytest.mark.parametrize("photo", SKIMAGE_PHOTOS)
def test_raw_head_maps_match_oracle(tiny_detectors, oracle, skimage_photos, case, photo):
    blob, _ = oracle_letterbox(skimage_photos[photo], 416)
    want = oracle.raw(blob, ["conv_15", "conv_22"])
    ours = tiny_detectors(*case).infer(blob)
    for got, expected in zip(ours, want):
        if case[1] == "fp32":
            np.testing.assert_allclose(got, expected, atol=FP32_ATOL, rtol=FP32_RTOL)
        else:
            diff = np.abs(got - expected)
            assert np.median(diff) <= BF16_MEDIAN and diff.max() <= BF16_MAX


def test_detections_are_clipped_and_sorted(tiny_detectors, skimage_photos):
    rgb = skimage_photos["stereo_motorcycle"]
    detector = tiny_detectors("torch")
    detections = detector.detect(Image.fromarray(rgb))
    assert len(detections) >= 1
    scores = [d.score for d in detections]
    assert scores == sorted(scores, reverse=True)
    for d in detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= rgb.shape[1] and 0 <= y1 < y2 <= rgb.shape[0]
        assert d.score > 0.25 and d.label == detector.class_names[d.class_id]
