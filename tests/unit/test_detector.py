"""load_detector and Detector: engines, auto choice, input size, errors, timing, threads."""

from __future__ import annotations

import threading

import pytest
from detector.detection import Detection
from detector.model import CfgError
from detector.model import WeightsError
from detector.model import load_detector
from detector.model.engines import bf16_flag
from detector.model.preprocess import letterbox
from model_helpers import COCO_NAMES
from model_helpers import TINY_CFG
from PIL import Image


def test_auto_chooses_a_measured_engine(tiny_weights):
    # fp32 pinned: no CPU flag decides it, and 64 GB hold one OpenCV (and OpenVINO) worker, so
    # every engine is timed.
    detector = load_detector(
        TINY_CFG, tiny_weights, COCO_NAMES, threads=2, precision="fp32", memory_mb=64_000
    )
    assert detector.engine in ("torch", "opencv", "openvino")
    reason = detector.engine_reason
    assert reason.startswith("auto: ") and "opencv" in reason and "torch-fp32" in reason
    assert "OpenCV fits: 1 worker(s)" in reason
    assert detector.name == "yolov3-tiny" and detector.input_size == 416
    assert len(detector.class_names) == 80 and detector.class_names[0] == "person"


def test_pinned_engine_reason(tiny_detectors):
    detector = tiny_detectors("opencv")
    assert detector.engine == "opencv" and "as configured" in detector.engine_reason
    torch_detector = tiny_detectors("torch", "fp32")
    assert torch_detector.engine == "torch" and torch_detector.precision == "fp32"


@pytest.mark.skipif(bf16_flag() is None, reason="CPU has neither amx_bf16 nor avx512_bf16")
def test_auto_precision_uses_bf16_where_the_cpu_has_it(tiny_weights):
    detector = load_detector(TINY_CFG, tiny_weights, COCO_NAMES, engine="torch", threads=2)
    assert detector.precision == "bf16" and bf16_flag() in detector.engine_reason


def test_detect_result_and_timing(tiny_detectors, skimage_photos):
    detector = tiny_detectors("torch")
    detections = detector.detect(Image.fromarray(skimage_photos["coffee"]))
    assert [d.label for d in detections] == ["cup"]
    assert isinstance(detections[0], Detection) and isinstance(detections[0].score, float)
    assert set(detector.last_timing) == {"preprocess", "inference", "postprocess"}
    assert all(v >= 0 for v in detector.last_timing.values())


def test_original_size_scales_boxes(tiny_detectors, skimage_photos):
    """A caller that decoded at half size (JPEG draft) gets boxes in full-size pixels."""
    detector = tiny_detectors("opencv")
    image = Image.fromarray(skimage_photos["coffee"])  # 600 x 400
    reduced = detector.detect(image)
    mapped = detector.detect(image, original_size=(1200, 800))
    assert [d.label for d in mapped] == [d.label for d in reduced]
    for a, b in zip(mapped, reduced):
        assert a.box == pytest.approx(tuple(2 * v for v in b.box), rel=1e-5)


@pytest.mark.parametrize("engine", ["torch", "opencv"])
def test_size_override(tiny_weights, skimage_photos, engine):
    detector = load_detector(TINY_CFG, tiny_weights, COCO_NAMES, engine=engine, size=608)
    assert detector.input_size == 608 and detector.input_shape == (608, 608)
    x, _ = letterbox(Image.fromarray(skimage_photos["coffee"]), 608, 608)
    assert [tuple(m.shape) for m in detector.infer(x)] == [(1, 255, 19, 19), (1, 255, 38, 38)]


def test_concurrent_detect_gives_the_same_answer(tiny_detectors, skimage_photos):
    image = Image.fromarray(skimage_photos["stereo_motorcycle"])
    for engine in ("torch", "opencv"):
        detector = tiny_detectors(engine)
        expected = detector.detect(image)
        results = []

        def run(detector=detector, results=results):
            results.append(detector.detect(image))

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [expected] * 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"engine": "onnx"}, "engine must be one of auto, torch, opencv, openvino, got 'onnx'"),
        ({"precision": "fp16"}, "precision must be one of auto, fp32, bf16, int8"),
        ({"size": 400}, "size must be a positive multiple of 32, got 400"),
    ],
)
def test_bad_arguments(tiny_weights, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_detector(TINY_CFG, tiny_weights, COCO_NAMES, **kwargs)


def test_names_must_match_classes(tiny_weights, tmp_path):
    names = tmp_path / "two.names"
    names.write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="has 2 class names but .* has classes=80"):
        load_detector(TINY_CFG, tiny_weights, names)


@pytest.mark.parametrize("engine", ["torch", "opencv"])
def test_weights_for_another_cfg_are_refused(tmp_path, engine):
    cfg = tmp_path / "mini.cfg"
    cfg.write_text(
        "[net]\nwidth=64\nheight=64\n\n[convolutional]\nfilters=255\nsize=1\nactivation=linear\n"
        "\n[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=80\nnum=3\n"
    )
    weights = tmp_path / "mini.weights"
    weights.write_bytes(b"\0\0\0\0\2\0\0\0" + b"\0" * 12 + b"\0" * 4 * 100)
    with pytest.raises(WeightsError, match="file too short"):
        load_detector(cfg, weights, COCO_NAMES, engine=engine)


def test_bad_cfg_is_refused(tmp_path, tiny_weights):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(TINY_CFG.read_text().replace("[upsample]", "[upsampel]"))
    with pytest.raises(CfgError, match=r"bad.cfg:\d+: \[upsampel\].*unknown section"):
        load_detector(cfg, tiny_weights, COCO_NAMES)
