"""auto's engine choice (CPU flag, memory budget), fused loading, precision and thread settings."""

from __future__ import annotations

import pytest
import torch
from detector.config import ConfigError
from detector.config import from_mapping
from detector.config import load
from detector.machine import cpu_count
from detector.machine import memory_total_mb
from detector.model import WeightsError
from detector.model import load_detector
from detector.model.cfg import parse_cfg
from detector.model.darknet import Darknet
from detector.model.engines import bf16_flag
from detector.model.engines import opencv_fits
from detector.model.engines import opencv_footprint_mb
from detector.model.loader import default_threads
from detector.model.weights import load_fused
from detector.model.weights import load_weights
from detector.runtime import ModelHolder
from detector.runtime import torch_threads
from model_helpers import COCO_NAMES
from model_helpers import TINY_CFG

YOLOV3_BYTES = 248_007_048
TINY_BYTES = 35_434_956


def test_auto_skips_opencv_when_workers_do_not_fit(tiny_weights):
    # 4 workers x (~550 MB OpenCV + 34 MB torch) is more than 1500 MB - 512 MB reserve.
    detector = load_detector(
        TINY_CFG, tiny_weights, COCO_NAMES, precision="fp32", threads=1, workers=4, memory_mb=1500
    )
    assert detector.engine == "torch" and detector.precision == "fp32"
    reason = detector.engine_reason
    assert reason.startswith("auto: torch-fp32, OpenCV not tried: 4 worker(s)")
    assert "1500 MB RAM" in reason and "does not fit" in reason


@pytest.mark.skipif(bf16_flag() is None, reason="CPU has neither amx_bf16 nor avx512_bf16")
def test_auto_takes_torch_bf16_from_the_cpu_flag_without_timing(tiny_weights):
    detector = load_detector(TINY_CFG, tiny_weights, COCO_NAMES, threads=1, memory_mb=64_000)
    assert (detector.engine, detector.precision) == ("torch", "bf16")
    assert "chosen by CPU flag, not timed" in detector.engine_reason
    assert "opencv" not in detector.engine_reason


def test_opencv_budget_from_measured_footprints():
    assert 500 < opencv_footprint_mb(TINY_BYTES) < 600  # measured 554 MB
    assert 1800 < opencv_footprint_mb(YOLOV3_BYTES) < 2100  # measured 1960 MB
    assert opencv_fits(YOLOV3_BYTES, 2, 4096)[0] is False
    assert opencv_fits(YOLOV3_BYTES, 1, 4096)[0] is True
    assert opencv_fits(TINY_BYTES, 2, 2048)[0] is True
    fits, words = opencv_fits(TINY_BYTES, 8, 2048)
    assert not fits and words.startswith("8 worker(s) x ~")


def test_fused_load_matches_unfused_model(tiny_weights):
    cfg = parse_cfg(TINY_CFG)
    reference = Darknet(cfg).eval()
    load_weights(reference, tiny_weights)
    with torch.device("meta"):
        fused = Darknet(cfg)
    header = load_fused(fused, tiny_weights)
    assert header.size == 20
    assert not any(p.is_meta for p in fused.parameters())
    assert all(block.bn is None for block in fused.conv_blocks())
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference.eval()(x)
        got = fused.eval()(x.contiguous(memory_format=torch.channels_last))
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, atol=1e-3, rtol=1e-4)


def test_fused_load_in_bf16_is_channels_last(tiny_weights):
    with torch.device("meta"):
        model = Darknet(parse_cfg(TINY_CFG))
    load_fused(model, tiny_weights, torch.bfloat16)
    weights = [block.conv.weight for block in model.conv_blocks()]
    assert all(w.dtype == torch.bfloat16 for w in weights)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


def test_fused_load_refuses_a_short_file(tmp_path, tiny_weights):
    short = tmp_path / "short.weights"
    short.write_bytes(tiny_weights.read_bytes()[:-4])
    with torch.device("meta"):
        model = Darknet(parse_cfg(TINY_CFG))
    with pytest.raises(WeightsError, match="file too short"):
        load_fused(model, short)


@pytest.mark.parametrize("value", ["auto", "fp32", "bf16"])
def test_precision_setting(value):
    assert from_mapping({"precision": value}).precision == value
    assert load(environ={"DETECTOR_PRECISION": value}).precision == value


@pytest.mark.parametrize("value", ["fp16", "FP32", ""])
def test_bad_precision_is_refused(value):
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16"):
        from_mapping({"precision": value})


def test_negative_threads_are_refused():
    with pytest.raises(ConfigError, match="threads must be 0"):
        from_mapping({"threads": -1})


def test_default_threads_are_cores_per_worker():
    cores = cpu_count()
    assert default_threads(1) == cores
    assert default_threads(cores) == 1
    assert default_threads(cores * 4) == 1
    assert torch_threads(from_mapping({"workers": cores})) == 1
    assert torch_threads(from_mapping({"workers": 1})) == cores
    assert torch_threads(from_mapping({"workers": cores, "threads": 3})) == 3


def test_load_applies_the_thread_rule(tiny_weights):
    before = torch.get_num_threads()
    try:
        cores = cpu_count()
        load_detector(TINY_CFG, tiny_weights, COCO_NAMES, engine="torch", workers=cores)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_service_passes_precision_and_workers_to_the_loader(tiny_weights):
    workers = memory_total_mb() // 500 + 1  # more tiny OpenCV workers (~0.55 GB) than RAM holds
    before = torch.get_num_threads()
    try:
        settings = {
            "model": "yolov3-tiny",
            "weights_dir": str(tiny_weights.parent),
            "engine": "auto",
            "precision": "fp32",
            "workers": workers,
        }
        detector = ModelHolder(from_mapping(settings)).get()
        # This machine's real RAM cannot hold that many OpenCV workers: torch fp32, untimed.
        assert (detector.engine, detector.precision) == ("torch", "fp32")
        assert f"OpenCV not tried: {workers} worker(s)" in detector.engine_reason
        assert torch.get_num_threads() == max(1, cpu_count() // workers)
    finally:
        torch.set_num_threads(before)
