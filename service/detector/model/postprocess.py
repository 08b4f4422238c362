"""Decode [yolo] maps, threshold, class-wise NMS and map boxes back: vectorized torch, fp32."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

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


def decode(
    maps: Sequence[torch.Tensor],
    heads: Sequence[HeadSpec],
    net_w: int,
    net_h: int,
    threshold: float | None = None,
) -> torch.Tensor:
    """Turn raw head maps (1 x A*(5+C) x H x W) into rows [cx, cy, w, h, obj, cls...].

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
        p = raw.float().reshape(a, channels // a, h * w).transpose(1, 2)  # A x HW x (5+C)
        if threshold is None:
            anchor = torch.arange(a).repeat_interleave(h * w)
            cell = torch.arange(h * w).repeat(a)
            p = p.reshape(-1, channels // a)
        else:
            logit = math.log(threshold / (1 - threshold)) if 0 < threshold < 1 else -math.inf
            anchor, cell = torch.nonzero(p[:, :, 4] > logit, as_tuple=True)
            p = p[anchor, cell]
        xy = torch.sigmoid(p[:, 0:2])
        if head.scale_x_y != 1.0:
            xy = xy * head.scale_x_y - (head.scale_x_y - 1.0) / 2
        grid = torch.stack((cell % w, torch.div(cell, w, rounding_mode="floor")), 1)
        centres = (xy + grid) * torch.tensor([net_w / w, net_h / h])
        sizes = torch.exp(p[:, 2:4]) * torch.tensor(head.anchors, dtype=torch.float32)[anchor]
        rows.append(torch.cat((centres, sizes, torch.sigmoid(p[:, 4:])), 1))
    return torch.cat(rows, 0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the IoU matrix of boxes (x1, y1, x2, y2): a is N x 4, b is M x 4."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS without a loop over boxes; returns kept indices, highest score first.

    Box i (in score order) survives when no surviving higher-scored box overlaps it by more than
    `threshold`. That rule fixes the survivors in score order; iterating it on all boxes at once
    reaches the same fixed point in as many steps as the longest suppression chain (a few).
    """
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    sorted_boxes = boxes[order]
    overlaps = torch.triu(box_iou(sorted_boxes, sorted_boxes) > threshold, diagonal=1)
    keep = torch.ones(order.numel(), dtype=torch.bool)
    for _ in range(order.numel()):
        suppressed = (overlaps & keep[:, None]).any(0)
        new_keep = ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Class-wise NMS: boxes of different classes are moved apart so that they never overlap."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    span = (boxes.max() - boxes.min()).clamp(min=0) + 1
    offsets = classes.to(boxes.dtype)[:, None] * span
    return nms(boxes + offsets, scores, threshold)


@dataclass(frozen=True)
class Boxes:
    """Final detections as tensors: boxes (N x 4, x1 y1 x2 y2 original pixels), scores, classes."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor


def postprocess(
    rows: torch.Tensor,
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
    scores = rows[:, 4:5] * rows[:, 5:]
    score, cls = scores.max(1)
    index = torch.nonzero(score > threshold).squeeze(1)
    score, cls = score[index], cls[index]
    if score.numel() > MAX_CANDIDATES:
        top = torch.topk(score, MAX_CANDIDATES).indices
        index, cls, score = index[top], cls[top], score[top]
    xywh = rows[index, :4]
    # network-input pixels -> letterboxed image pixels -> original pixels
    width, height = original_size or (box.width, box.height)
    sx = box.new_width / width
    sy = box.new_height / height
    x1 = (xywh[:, 0] - xywh[:, 2] / 2 - box.dx) / sx
    y1 = (xywh[:, 1] - xywh[:, 3] / 2 - box.dy) / sy
    x2 = (xywh[:, 0] + xywh[:, 2] / 2 - box.dx) / sx
    y2 = (xywh[:, 1] + xywh[:, 3] / 2 - box.dy) / sy
    corners = torch.stack((x1, y1, x2, y2), 1)
    keep = batched_nms(corners, score, cls, nms_threshold)
    corners = corners[keep]
    limit = torch.tensor([width, height, width, height], dtype=corners.dtype)
    corners = torch.minimum(corners.clamp(min=0), limit)
    return Boxes(corners, score[keep], cls[keep])
