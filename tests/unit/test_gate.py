"""The int8 accuracy gate: matching rules on constructed detections, the report and its JSON."""

from __future__ import annotations

import json

import pytest
from detector.detection import Detection
from detector.model.gate import Criteria
from detector.model.gate import GateReport
from detector.model.gate import compare
from detector.model.gate import gate_path
from detector.model.gate import load_report
from detector.model.gate import run_gate

BOX = (100.0, 100.0, 200.0, 200.0)  # 100 x 100


def det(score: float, box=BOX, class_id: int = 0) -> Detection:
    return Detection(str(class_id), class_id, score, box)


def shifted(dx: float) -> tuple:
    """BOX moved right by dx: IoU = (100 - dx) / (100 + dx)."""
    return (BOX[0] + dx, BOX[1], BOX[2] + dx, BOX[3])


def test_exact_match_counts():
    assert compare([det(0.7)], [det(0.7)])[:2] == (1, 1)


def test_iou_at_the_limit_matches_and_just_below_does_not():
    at_limit = 100 / 9  # IoU (100 - dx) / (100 + dx) = 0.8 exactly
    assert compare([det(0.7)], [det(0.7, shifted(at_limit - 0.01))])[:2] == (1, 1)
    matched, total, unmatched, _ = compare([det(0.7)], [det(0.7, shifted(at_limit + 0.2))])
    assert (matched, total) == (0, 1)
    assert unmatched == [det(0.7)]


def test_score_just_outside_the_tolerance_does_not_match():
    assert compare([det(0.70)], [det(0.749)])[:2] == (1, 1)
    assert compare([det(0.70)], [det(0.751)])[:2] == (0, 1)
    assert compare([det(0.70)], [det(0.649)])[:2] == (0, 1)


def test_other_class_does_not_match():
    assert compare([det(0.7, class_id=1)], [det(0.7, class_id=2)])[:2] == (0, 1)


def test_one_int8_detection_matches_one_fp32_detection_only():
    matched, total, _, _ = compare([det(0.7), det(0.69)], [det(0.7)])
    assert (matched, total) == (1, 2)


def test_near_threshold_boxes_count_once_and_match_below_the_threshold():
    # fp32 0.27 (counted), int8 0.23 (under 0.25 but within 0.05): a match, not a miss
    assert compare([det(0.27)], [det(0.23)])[:2] == (1, 1)
    # fp32 0.23 is not counted; int8 0.27 is no false positive either (below 0.5)
    assert compare([det(0.23)], [det(0.27)]) == (0, 0, [], [])


def test_new_false_positive_above_half():
    far = (400.0, 400.0, 500.0, 500.0)
    _, _, _, new = compare([det(0.7)], [det(0.7), det(0.51, far)])
    assert new == [det(0.51, far)]
    _, _, _, new = compare([det(0.7)], [det(0.7), det(0.49, far)])
    assert new == []


def test_false_positive_rule_needs_fp32_near_the_same_score():
    # int8 0.60 where fp32 has the box at 0.30: the score jump makes it a new false positive
    assert compare([det(0.30)], [det(0.60)])[3] == [det(0.60)]
    # fp32 0.46 (>= 0.5 - 0.05) explains an int8 0.53 on the same box
    assert compare([det(0.46)], [det(0.53)])[3] == []
    # same box and score, other class: unexplained
    assert compare([det(0.6, class_id=1)], [det(0.6, class_id=2)])[3] == [det(0.6, class_id=2)]


def test_criteria_change_the_verdict():
    loose = Criteria(iou_min=0.5, score_tol=0.2)
    assert compare([det(0.7)], [det(0.85, shifted(20))], loose)[:2] == (1, 1)
    assert compare([det(0.7)], [det(0.85, shifted(20))])[:2] == (0, 1)


class Maps:
    """A real tiny detector's engine that counts its calls (reference == candidate)."""

    def __init__(self, engine) -> None:
        self.engine, self.calls = engine, 0

    def __call__(self, x):
        self.calls += 1
        return self.engine(x)


def test_identical_engines_agree_fully(tiny_detectors, skimage_photos):
    from PIL import Image

    detector = tiny_detectors("torch", "fp32")
    engine = Maps(detector._engine)
    images = [("coffee", Image.fromarray(skimage_photos["coffee"]))]
    report = run_gate(engine, engine, detector.heads, detector.input_shape, images)
    assert report.passed and report.agreement == 1.0 and report.total >= 1
    assert report.matched == report.total and report.new_false_positives == []
    assert report.images == [{"name": "coffee", "matched": report.total, "total": report.total}]
    assert engine.calls == 2
    assert report.reason.startswith("accepted:")


def test_nothing_to_compare_is_rejected(tiny_detectors):
    from PIL import Image

    detector = tiny_detectors("torch", "fp32")
    blank = [("grey", Image.new("RGB", (320, 240), (127, 127, 127)))]
    report = run_gate(detector._engine, detector._engine, detector.heads, (416, 416), blank)
    assert (report.passed, report.total) == (False, 0)
    assert "finds nothing to compare" in report.reason


def test_report_round_trip(tmp_path):
    report = GateReport(
        passed=False,
        agreement=0.5,
        matched=1,
        total=2,
        new_false_positives=[{"image": "a", "class_id": 2, "score": 0.6, "box": [1, 2, 3, 4]}],
        images=[{"name": "a", "matched": 1, "total": 2}],
        criteria={"iou_min": 0.8},
        reason="rejected: ...",
        meta={"quantize_options": {"preset": "mixed"}},
    )
    path = gate_path(tmp_path / "model.xml")
    assert path == tmp_path / "model.gate.json"
    report.save(path)
    assert load_report(path) == report
    assert json.loads(path.read_text())["format"] == 1


@pytest.mark.parametrize(
    "content", [None, "not json", '{"format": 99, "passed": true}', '{"format": 1, "x": 1}']
)
def test_missing_or_bad_report_reads_as_not_passed(tmp_path, content):
    path = tmp_path / "model.gate.json"
    if content is not None:
        path.write_text(content)
    assert load_report(path) is None
