"""Letterbox geometry, yolo decoding, NMS and the mapping of boxes back to original pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from detector.model.postprocess import HeadSpec
from detector.model.postprocess import batched_nms
from detector.model.postprocess import box_iou
from detector.model.postprocess import decode
from detector.model.postprocess import nms
from detector.model.postprocess import postprocess
from detector.model.preprocess import PAD_VALUE
from detector.model.preprocess import Letterbox
from detector.model.preprocess import letterbox
from detector.model.preprocess import letterbox_geometry
from PIL import Image


@pytest.mark.parametrize(
    ("size", "placed"),
    [
        ((976, 774), (416, 330, 0, 43)),  # 774 * 416 / 976 = 329.9 -> 330
        ((774, 976), (330, 416, 43, 0)),
        ((500, 500), (416, 416, 0, 0)),
        ((100, 50), (416, 208, 0, 104)),  # upscaled
        ((4000, 1), (416, 1, 0, 207)),  # never a zero-height image
    ],
)
def test_letterbox_geometry(size, placed):
    box = letterbox_geometry(*size, 416, 416)
    assert (box.new_width, box.new_height, box.dx, box.dy) == placed


def test_letterbox_pads_with_grey_and_keeps_pixels():
    image = Image.new("RGB", (200, 100), (255, 0, 51))
    x, box = letterbox(image, 64, 64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32
    assert x.flags.c_contiguous  # plain NCHW: OpenVINO and OpenCV take it without a copy
    assert (box.new_width, box.new_height, box.dx, box.dy) == (64, 32, 0, 16)
    assert np.all(x[0, :, :16] == PAD_VALUE) and np.all(x[0, :, 48:] == PAD_VALUE)
    inside = x[0, :, 16:48]
    assert np.allclose(inside[0], 1.0) and np.allclose(inside[1], 0.0)
    assert np.allclose(inside[2], 51 / 255)


def test_letterbox_converts_modes():
    x, _ = letterbox(Image.new("L", (32, 32), 255), 32, 32)
    assert np.all(x == 1.0)


def test_decode_matches_darknet_formulas():
    anchors = ((10.0, 20.0), (30.0, 40.0))
    raw = np.zeros((1, 2 * 7, 2, 4), np.float32)  # 2 anchors x (5 + 2 classes), 2 x 4 grid
    raw[0, 7 + 0, 1, 3] = 2.0  # anchor 1, row 1, col 3: tx
    raw[0, 7 + 3, 1, 3] = math.log(2.0)  # th
    raw[0, 7 + 4, 1, 3] = 3.0  # objectness logit
    rows = decode([raw], [HeadSpec(anchors, 2)], 128, 64)
    assert rows.shape == (2 * 2 * 4, 7)
    row = rows[8 + 4 + 3]  # anchor-major, then row, then col: anchor 1, row 1, col 3
    sig = 1 / (1 + math.exp(-2.0))
    assert row[0] == pytest.approx((sig + 3) * 32)  # stride 128 / 4
    assert row[1] == pytest.approx((0.5 + 1) * 32)  # stride 64 / 2
    assert row[2:4].tolist() == pytest.approx([30.0, 80.0])  # anchor * exp(t)
    assert row[4] == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert row[5:].tolist() == pytest.approx([0.5, 0.5])


def test_decode_scale_x_y():
    raw = np.zeros((1, 6, 1, 1), np.float32)
    raw[0, 0] = 10.0  # sigmoid ~ 1
    rows = decode([raw], [HeadSpec(((1.0, 1.0),), 1, scale_x_y=1.2)], 32, 32)
    assert rows[0, 0] == pytest.approx((1.2 - 0.1) * 32, abs=1e-2)


def greedy_nms(boxes, scores, threshold):
    """The textbook loop, to check the vectorized version against."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    iou = box_iou(boxes, boxes).tolist()
    for i in order:
        if all(iou[i][k] <= threshold for k in keep):
            keep.append(i)
    return keep


def test_nms_chain_keeps_the_third_box():
    # A overlaps B, B overlaps C, A does not overlap C: greedy keeps A and C (B suppressed).
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]
    assert nms(boxes, scores, 0.9).tolist() == [0, 1, 2]


@pytest.mark.parametrize("seed", range(5))
def test_nms_equals_greedy_on_random_boxes(seed):
    g = np.random.default_rng(seed)
    xy = g.random((200, 2), np.float32) * 100
    wh = g.random((200, 2), np.float32) * 30 + 1
    boxes = np.concatenate((xy, xy + wh), 1)
    scores = g.random(200, np.float32)
    assert nms(boxes, scores, 0.45).tolist() == greedy_nms(boxes, scores, 0.45)


def test_batched_nms_is_class_wise():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    classes = np.array([0, 1, 0])
    assert sorted(batched_nms(boxes, scores, classes, 0.45).tolist()) == [0, 1]
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.45).size == 0


def rows_for(boxes_xywh, obj, cls):
    """Build decode()-shaped rows from boxes (network pixels), objectness and class probs."""
    return np.concatenate((np.array(boxes_xywh), np.array(obj)[:, None], np.array(cls)), 1).astype(
        np.float32
    )


def test_postprocess_scores_threshold_and_maps_back():
    box = Letterbox(width=800, height=400, new_width=416, new_height=208, dx=0, dy=104)
    rows = rows_for(
        [[208, 208, 104, 52], [208, 208, 100, 50], [20, 120, 80, 40], [300, 300, 10, 10]],
        [0.9, 0.8, 0.6, 0.3],
        [[0.1, 0.9], [0.1, 0.9], [0.8, 0.2], [0.9, 0.1]],  # the last: 0.27 > 0.25
    )
    result = postprocess(rows, box, threshold=0.25, nms_threshold=0.45)
    assert result.classes.tolist() == [1, 0, 0]
    assert result.scores.tolist() == pytest.approx([0.81, 0.48, 0.27])
    scale = 800 / 416
    x1, y1, x2, y2 = result.boxes[0].tolist()
    assert [x1, y1, x2, y2] == pytest.approx(
        [156 * scale, (182 - 104) * scale, 260 * scale, (234 - 104) * scale], rel=1e-5
    )
    assert result.boxes[1, 0] == 0.0  # clipped: x1 was (20 - 40) * scale < 0
    high = postprocess(rows, box, threshold=0.5, nms_threshold=0.45)
    assert high.classes.tolist() == [1]  # 0.48 and 0.27 are below 0.5


def test_postprocess_maps_to_original_size():
    """A JPEG decoded at 1/4 scale (draft): boxes come back in full-size pixels."""
    box = Letterbox(width=200, height=100, new_width=416, new_height=208, dx=0, dy=104)
    rows = rows_for([[208, 208, 104, 52]], [0.9], [[0.9]])
    reduced = postprocess(rows, box, 0.25, 0.45).boxes[0]
    full = postprocess(rows, box, 0.25, 0.45, original_size=(800, 400)).boxes[0]
    assert np.allclose(full, reduced * 4)


def test_postprocess_empty():
    box = Letterbox(10, 10, 416, 416, 0, 0)
    result = postprocess(np.zeros((0, 7), np.float32), box, 0.25, 0.45)
    assert result.boxes.shape == (0, 4) and result.scores.size == 0


def test_box_iou():
    a = np.array([[0.0, 0.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
    assert box_iou(a, b).tolist() == [[pytest.approx(1 / 7), 0.0]]
    assert np.isclose(box_iou(a, a).item(), 1.0)


def test_decode_threshold_keeps_exactly_the_rows_above_it():
    g = np.random.default_rng(0)
    heads = [HeadSpec(((10.0, 14.0), (23.0, 27.0)), 3), HeadSpec(((5.0, 5.0), (8.0, 9.0)), 3)]
    maps = [g.standard_normal((1, 16, 4, 6), np.float32) * 2]
    maps.append(g.standard_normal((1, 16, 8, 12), np.float32) * 2)
    full = decode(maps, heads, 192, 128)
    kept = decode(maps, heads, 192, 128, threshold=0.6)
    assert 0 < len(kept) < len(full)
    assert np.allclose(kept, full[full[:, 4] > 0.6])
