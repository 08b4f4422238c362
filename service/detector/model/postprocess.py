"""Decode [yolo] maps, threshold, class-wise NMS and map boxes back: vectorized numpy, fp32.

Every engine's maps go through this one implementation (numpy, so that serving an OpenVINO or
OpenCV model never imports torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .preprocess import Letterbox

# Candidates kept for NMS, highest scores first: bounds the IoU matrix (MAX^2 floats) on
# pathological inputs; a real image at threshold 0.25 has a few hundred at most.
MAX_CANDIDATES = 3000


@dataclass(frozen=True)
class HeadSpec:
    """What decoding one [yolo] head needs: its anchors (input pixels), classes, scale_x_y."""

    anchors: tuple[tuple[float, float], ...]
    classes: int
    scale_x_y: float = 1.0


def head_specs(cfg) -> list[HeadSpec]:
    """Return the HeadSpec of each [yolo] layer of a parsed cfg, in output order."""
    return [
        HeadSpec(cfg.layers[i].anchors, cfg.layers[i].classes, cfg.layers[i].scale_x_y)
        for i in cfg.yolo_indices
    ]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Return 1 / (1 + exp(-x)) in float32, without overflow warnings for large |x|."""
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32, copy=False)


def decode(
    maps: Sequence[np.ndarray],
    heads: Sequence[HeadSpec],
    net_w: int,
    net_h: int,
    threshold: float | None = None,
) -> np.ndarray:
    """Turn raw head maps (1 x A*(5+C) x H x W) into float32 rows [cx, cy, w, h, obj, cls...].

    Boxes are in network-input pixels. As darknet's yolo layer: x = (sigmoid(tx) + col) / W,
    w = exp(tw) * anchor_w / net_w, objectness and class probabilities are sigmoids.
    Rows are ordered by head, anchor, grid row, grid column.
    :param threshold: drop rows whose objectness is not above it (their score obj x cls cannot
        be either); the test runs on logits, so only the survivors are decoded.
    """
    rows = []
    for raw, head in zip(maps, heads):
        _, channels, h, w = raw.shape
        a = len(head.anchors)
        p = np.asarray(raw, dtype=np.float32).reshape(a, channels // a, h * w).transpose(0, 2, 1)
        if threshold is None:
            anchor = np.repeat(np.arange(a), h * w)
            cell = np.tile(np.arange(h * w), a)
            p = p.reshape(-1, channels // a)
        else:
            logit = math.log(threshold / (1 - threshold)) if 0 < threshold < 1 else -math.inf
            anchor, cell = np.nonzero(p[:, :, 4] > logit)
            p = p[anchor, cell]
        xy = sigmoid(p[:, 0:2])
        if head.scale_x_y != 1.0:
            xy = xy * np.float32(head.scale_x_y) - np.float32((head.scale_x_y - 1.0) / 2)
        grid = np.stack((cell % w, cell // w), 1).astype(np.float32)
        centres = (xy + grid) * np.array([net_w / w, net_h / h], np.float32)
        with np.errstate(over="ignore"):
            sizes = np.exp(p[:, 2:4]) * np.asarray(head.anchors, np.float32)[anchor]
        rows.append(np.concatenate((centres, sizes, sigmoid(p[:, 4:])), 1))
    if not rows:
        return np.zeros((0, 5), np.float32)
    return np.concatenate(rows, 0).astype(np.float32, copy=False)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the IoU matrix of boxes (x1, y1, x2, y2): a is N x 4, b is M x 4."""
    a, b = np.asarray(a), np.asarray(b)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0) * np.maximum(a[:, 3] - a[:, 1], 0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    # per axis (no N x M x 2 arrays, no clip: both cost several times more in numpy)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / np.maximum(union, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS without a loop over boxes; returns kept indices, highest score first.

    Box i (in score order) survives when no surviving higher-scored box overlaps it by more than
    `threshold`. That rule fixes the survivors in score order; iterating it on all boxes at once
    reaches the same fixed point in as many steps as the longest suppression chain (a few).
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    if order.size == 0:
        return order
    sorted_boxes = np.asarray(boxes)[order]
    overlaps = np.triu(box_iou(sorted_boxes, sorted_boxes) > threshold, k=1)
    keep = np.ones(order.size, dtype=bool)
    for _ in range(order.size):
        new_keep = ~(overlaps & keep[:, None]).any(0)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float
) -> np.ndarray:
    """Class-wise NMS: boxes of different classes are moved apart so that they never overlap."""
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    span = max(float(boxes.max() - boxes.min()), 0.0) + 1
    offsets = np.asarray(classes).astype(boxes.dtype)[:, None] * boxes.dtype.type(span)
    return nms(boxes + offsets, scores, threshold)


@dataclass(frozen=True)
class Boxes:
    """Final detections as arrays: boxes (N x 4, x1 y1 x2 y2 original pixels), scores, classes."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def postprocess(
    rows: np.ndarray,
    box: Letterbox,
    threshold: float,
    nms_threshold: float,
    original_size: tuple[int, int] | None = None,
) -> Boxes:
    """Score (objectness x class probability), threshold, class-wise NMS, map back and clip.

    Each box keeps its best class (as OpenCV's samples and the oracle reference do; darknet
    itself would keep every class above the threshold).
    :param rows: decode() output.
    :param box: the letterbox placement of the image given to the network.
    :param original_size: map boxes to this (width, height) instead of the letterboxed image's.
    """
    rows = np.asarray(rows, dtype=np.float32)
    scores = rows[:, 4:5] * rows[:, 5:]
    cls = scores.argmax(1) if len(rows) else np.zeros(0, np.int64)
    score = scores[np.arange(len(rows)), cls]
    index = np.nonzero(score > threshold)[0]
    score, cls = score[index], cls[index]
    if score.size > MAX_CANDIDATES:
        top = np.argsort(-score, kind="stable")[:MAX_CANDIDATES]
        index, cls, score = index[top], cls[top], score[top]
    xywh = rows[index, :4]
    # network-input pixels -> letterboxed image pixels -> original pixels
    width, height = original_size or (box.width, box.height)
    sx = np.float32(box.new_width / width)
    sy = np.float32(box.new_height / height)
    x1 = (xywh[:, 0] - xywh[:, 2] / 2 - box.dx) / sx
    y1 = (xywh[:, 1] - xywh[:, 3] / 2 - box.dy) / sy
    x2 = (xywh[:, 0] + xywh[:, 2] / 2 - box.dx) / sx
    y2 = (xywh[:, 1] + xywh[:, 3] / 2 - box.dy) / sy
    corners = np.stack((x1, y1, x2, y2), 1).astype(np.float32, copy=False)
    keep = batched_nms(corners, score, cls, nms_threshold)
    corners = corners[keep]
    limit = np.array([width, height, width, height], dtype=np.float32)
    corners = np.minimum(np.maximum(corners, 0), limit)
    return Boxes(corners, score[keep], cls[keep].astype(np.int64))
