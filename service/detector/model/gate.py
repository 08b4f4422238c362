"""The int8 accuracy gate: int8 detections must agree with fp32 ones on photos not calibrated on."""

from __future__ import annotations

import json
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import numpy as np
from PIL import Image

from ..detection import Detection
from .postprocess import HeadSpec
from .postprocess import box_iou
from .postprocess import decode
from .postprocess import postprocess
from .preprocess import letterbox

REPORT_FORMAT = 1
# An engine for the gate: letterboxed 1x3xHxW float32 array -> raw [yolo] maps (numpy arrays).
Engine = Callable[[np.ndarray], Sequence]


@dataclass(frozen=True)
class Criteria:
    """When int8 is accepted: the share of fp32 detections it reproduces, and no new FP."""

    iou_min: float = 0.8  # a match: same class, IoU >= this ...
    score_tol: float = 0.05  # ... and |score difference| <= this
    min_agreement: float = 0.95  # matched / fp32 detections must reach this
    fp_score: float = 0.5  # an int8 detection above this that fp32 does not have fails the gate
    threshold: float = 0.25  # fp32 detections counted: those the service returns
    nms_threshold: float = 0.45


@dataclass(frozen=True)
class GateReport:
    """The gate's verdict and its evidence; stored as JSON next to the int8 model."""

    passed: bool
    agreement: float  # matched / total (0.0 when total is 0)
    matched: int
    total: int  # fp32 detections above the threshold on the gate images
    new_false_positives: list = field(default_factory=list)  # dicts: image, class_id, score, box
    unmatched: list = field(default_factory=list)  # fp32 detections int8 did not reproduce
    images: list = field(default_factory=list)  # dicts: name, matched, total
    criteria: dict = field(default_factory=dict)
    reason: str = ""
    meta: dict = field(default_factory=dict)  # calibration set, quantize options, versions

    def to_dict(self) -> dict:
        """Return the JSON shape (with its format number)."""
        return {"format": REPORT_FORMAT, **asdict(self)}

    def save(self, path: str | Path) -> None:
        """Write the report as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict) -> GateReport:
        """Return the report from to_dict()'s shape; ValueError when it is not one."""
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise ValueError(f"not a gate report of format {REPORT_FORMAT}")
        data = {k: v for k, v in data.items() if k != "format"}
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"gate report has unexpected fields: {exc}") from None


def gate_path(model_xml: str | Path) -> Path:
    """Return where the gate report of an int8 model lives: <stem>.gate.json beside it."""
    model_xml = Path(model_xml)
    return model_xml.with_name(f"{model_xml.stem}.gate.json")


def load_report(path: str | Path) -> GateReport | None:
    """Return the stored report, or None when it is missing or unreadable (= not passed)."""
    try:
        return GateReport.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _as_dict(image: str, d: Detection) -> dict:
    return {
        "image": image,
        "class_id": d.class_id,
        "score": round(float(d.score), 4),
        "box": [round(float(v), 1) for v in d.box],
    }


def compare(
    reference: Sequence[Detection],
    candidate: Sequence[Detection],
    criteria: Criteria = Criteria(),
) -> tuple[int, int, list[Detection], list[Detection]]:
    """Match candidate (int8) detections to reference (fp32) ones on one image.

    Both lists should hold detections down to threshold - score_tol, so that a box just under
    the threshold on one side still matches. Counted are the reference detections above the
    threshold; each is matched, highest score first, to the unused candidate of the same class
    with the highest IoU among those with IoU >= iou_min and |score diff| <= score_tol.
    A new false positive is a candidate above fp_score that no reference detection of its class
    explains (IoU >= iou_min and reference score >= fp_score - score_tol).
    :return: (matched, total, unmatched reference detections, new false positives).
    """
    c = criteria
    counted = sorted((d for d in reference if d.score > c.threshold), key=lambda d: -d.score)
    ref_boxes = np.array([d.box for d in reference], dtype=np.float64).reshape(-1, 4)
    cand_boxes = np.array([d.box for d in candidate], dtype=np.float64).reshape(-1, 4)
    counted_boxes = np.array([d.box for d in counted], dtype=np.float64).reshape(-1, 4)
    ious = box_iou(counted_boxes, cand_boxes)
    used: set[int] = set()
    unmatched = []
    for i, want in enumerate(counted):
        best, best_iou = None, -1.0
        for j, got in enumerate(candidate):
            iou = float(ious[i, j])
            if (
                j not in used
                and got.class_id == want.class_id
                and iou >= c.iou_min
                and abs(got.score - want.score) <= c.score_tol
                and iou > best_iou
            ):
                best, best_iou = j, iou
        if best is None:
            unmatched.append(want)
        else:
            used.add(best)
    explain = box_iou(cand_boxes, ref_boxes)
    new_fps = [
        got
        for j, got in enumerate(candidate)
        if got.score > c.fp_score
        and not any(
            ref.class_id == got.class_id
            and ref.score >= c.fp_score - c.score_tol
            and float(explain[j, k]) >= c.iou_min
            for k, ref in enumerate(reference)
        )
    ]
    return len(counted) - len(unmatched), len(counted), unmatched, new_fps


def detect(
    engine: Engine,
    image: Image.Image,
    heads: Sequence[HeadSpec],
    input_shape: tuple[int, int],
    threshold: float,
    nms_threshold: float,
) -> list[Detection]:
    """Run one engine on one image with the serving pre/post-processing."""
    net_w, net_h = input_shape
    x, box = letterbox(image, net_w, net_h)
    maps = [np.asarray(m) for m in engine(x)]
    result = postprocess(
        decode(maps, heads, net_w, net_h, threshold), box, threshold, nms_threshold
    )
    return [
        Detection(str(c), c, s, tuple(b))
        for b, s, c in zip(result.boxes.tolist(), result.scores.tolist(), result.classes.tolist())
    ]


def run_gate(
    reference: Engine,
    candidate: Engine,
    heads: Sequence[HeadSpec],
    input_shape: tuple[int, int],
    images: Sequence[tuple[str, Image.Image]],
    criteria: Criteria = Criteria(),
    meta: dict | None = None,
) -> GateReport:
    """Compare the candidate (int8) engine's detections with the reference (fp32) engine's.

    :param images: named RGB images none of which (nor a variant) was used for calibration.
    """
    c = criteria
    low = max(0.0, c.threshold - c.score_tol)
    matched = total = 0
    unmatched, new_fps, per_image = [], [], []
    for name, image in images:
        want = detect(reference, image, heads, input_shape, low, c.nms_threshold)
        got = detect(candidate, image, heads, input_shape, low, c.nms_threshold)
        m, t, missing, extra = compare(want, got, c)
        matched, total = matched + m, total + t
        unmatched += [_as_dict(name, d) for d in missing]
        new_fps += [_as_dict(name, d) for d in extra]
        per_image.append({"name": name, "matched": m, "total": t})
    agreement = matched / total if total else 0.0
    words = (
        f"{matched}/{total} fp32 detections matched ({agreement:.1%}, need "
        f">= {c.min_agreement:.0%} at IoU >= {c.iou_min} and score +-{c.score_tol}), "
        f"{len(new_fps)} new false positive(s) above {c.fp_score}, on {len(images)} images"
    )
    if not total:
        passed, reason = False, f"rejected: the fp32 model finds nothing to compare: {words}"
    else:
        passed = agreement >= c.min_agreement and not new_fps
        reason = f"{'accepted' if passed else 'rejected'}: {words}"
    return GateReport(
        passed=passed,
        agreement=round(agreement, 4),
        matched=matched,
        total=total,
        new_false_positives=new_fps,
        unmatched=unmatched,
        images=per_image,
        criteria=asdict(c),
        reason=reason,
        meta=dict(meta or {}),
    )
