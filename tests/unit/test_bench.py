"""The benchmark's own logic: row selection, ratios and verdict, the OpenVINO peer's decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from detector.model.postprocess import HeadSpec
from detector.model.postprocess import decode

from bench import model_bench
from bench import openvino_peer
from bench import report
from bench import serving_bench

BF16_CPU = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
ALL_ENGINES = {
    "torch": ("fp32", "bf16"),
    "opencv": ("fp32",),
    "openvino": ("fp32", "bf16", "int8"),
}


def test_rows_cover_every_engine_and_precision_of_ours_and_the_peers():
    assert model_bench.engine_precisions()["torch"] == ("fp32", "bf16")
    rows = model_bench.default_rows(BF16_CPU, ALL_ENGINES)
    assert rows == [
        "openvino-fp32",
        "openvino-bf16",
        "openvino-int8",
        "torch-fp32",
        "torch-bf16",
        "opencv-fp32",
        "auto",
        "opencv-dnn-direct",
        "ov-direct-fp32",
        "ov-direct-bf16",
        "ov-direct-int8",
    ]


def test_rows_without_native_bf16_or_openvino_engine():
    engines = {"torch": ("fp32", "bf16"), "opencv": ("fp32",)}
    rows = model_bench.default_rows({"avx2"}, engines)
    assert rows == ["torch-fp32", "opencv-fp32", "auto", "opencv-dnn-direct"] + [
        "ov-direct-fp32",
        "ov-direct-int8",
    ]


def _result(row: str, walls_ms: list[float], engine: str = "x") -> dict:
    samples = [{"wall": w / 1000, "cpu": w / 1000, "forward": w / 2000} for w in walls_ms]
    return {
        "row": row,
        "model": "yolov3-416",
        "engine": engine,
        "load_s": 1.0,
        "reason": "auto: because" if row == "auto" else "",
        "peak_rss_mb": 500,
        "samples": {"1MP": samples, "12MP": []},
    }


def test_summary_takes_best_median_and_worst_of_the_rounds():
    stats = report.summarize(_result("auto", [30, 10, 20, 50])["samples"]["1MP"])
    assert (stats["best"], stats["median"], stats["worst"], stats["n"]) == (10, 25, 50, 4)
    assert stats["forward"] == pytest.approx(5)


def test_render_states_ratios_to_opencv_dnn_and_auto_against_openvino_direct():
    results = [
        _result("auto", [90, 100, 120], engine="openvino-int8"),
        _result("opencv-dnn-direct", [360, 400, 500], engine="opencv-dnn"),
        _result("ov-direct-bf16", [150, 160, 170], engine="openvino-direct-bf16"),
        _result("ov-direct-int8", [80, 95, 99], engine="openvino-direct-int8"),
        {"row": "ov-direct-fp32", "model": "yolov3-416", "error": "no answer (exit 1)"},
    ]
    text = report.render(results, ["CPU: test"])
    auto_line = next(line for line in text.splitlines() if "| detector auto |" in line)
    assert "| 0.25× | 0.25× |" in auto_line  # 90 / 360 best, 100 / 400 median
    assert "not run: no answer (exit 1)" in text
    assert "auto: because" in text
    verdict = next(line for line in text.splitlines() if line.startswith("- yolov3-416: auto"))
    assert "fastest OpenVINO used directly is ov-direct-int8 80 ms" in verdict
    assert "auto / it = 1.12 best, 1.05 median" in verdict  # 90 / 80, 100 / 95


def test_peer_decoding_matches_the_projects_decoder():
    generator = torch.Generator().manual_seed(1)
    anchors = [((81.0, 82.0), (135.0, 169.0), (344.0, 319.0)), ((23.0, 27.0), (37.0, 58.0))]
    maps = [
        (torch.randn(1, 3 * 85, 13, 13, generator=generator) * 3).numpy(),
        (torch.randn(1, 2 * 85, 26, 26, generator=generator) * 3).numpy(),
    ]
    heads = [HeadSpec(a, 80) for a in anchors]
    rows = decode(maps, heads, 416, 416, threshold=0.25)
    score = rows[:, 4] * rows[:, 5:].max(1)
    keep = score > 0.25
    expected = rows[keep, :4].copy()
    expected[:, :2] -= expected[:, 2:] / 2  # centre -> top-left, as cv2.dnn.NMSBoxes takes
    boxes, scores, classes = openvino_peer.decode_heads(maps, [list(a) for a in anchors], 416, 0.25)
    assert len(boxes) == int(keep.sum()) > 10
    np.testing.assert_allclose(boxes, expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(scores, score[keep], rtol=1e-5)
    np.testing.assert_array_equal(classes, rows[keep, 5:].argmax(1))


def test_peer_preprocessing_letterboxes_grey_and_feeds_rgb_0_to_1():
    bgr = np.zeros((100, 200, 3), np.uint8)
    bgr[:, :, 0] = 255  # blue
    canvas, scale, dx, dy = openvino_peer.letterbox(bgr, 416)
    assert (scale, dx, dy) == (2.08, 0, 104)
    tensor = openvino_peer.to_tensor(canvas)
    assert tensor.shape == (1, 3, 416, 416) and tensor.dtype == np.float32
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([127 / 255] * 3)  # padding
    assert tensor[0, :, 208, 208].tolist() == [0.0, 0.0, 1.0]  # blue is the last RGB channel


def test_serving_windows_report_median_and_spread():
    window = {"latencies": [0.1, 0.2, 0.3, 0.4], "errors": ["HTTP 503"], "wall": 2.0}
    figures = serving_bench.window_figures(window)
    assert figures == {"rps": 2.0, "p50": 200.0, "p99": 400.0, "errors": 1, "requests": 4}
    assert serving_bench.spread([33.0, 31.04, 35.2], 1) == "33.0 (31.0-35.2)"
    assert math.isnan(serving_bench.percentile([], 0.5))


@pytest.mark.slow
def test_model_bench_runs_tiny_interleaved_against_opencv_and_openvino(tiny_weights):
    text = model_bench.main(
        [
            "--models",
            "yolov3-tiny-416",
            "--rows",
            "opencv-dnn-direct,ov-direct-fp32,torch-fp32",
            "--rounds",
            "1",
            "--rounds-12mp",
            "0",
            "--warmup",
            "0",
        ]
    )
    rows = [line for line in text.splitlines() if line.startswith("| yolov3-tiny-416 |")]
    assert len(rows) == 3 and not any("not run" in line for line in rows), text
    assert "| 1.00× | 1.00× |" in rows[0]
    assert "openvino-direct-fp32" in rows[1] and "torch-fp32" in rows[2]
