"""auto's engine choice (CPU flag, memory budget), fused loading, precision and thread settings."""

from __future__ import annotations

import os
import subprocess
import sys

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
from detector.model.engines import opencv_fits
from detector.model.engines import opencv_footprint_mb
from detector.model.engines import openvino_fits
from detector.model.engines import openvino_footprint_mb
from detector.model.engines import plan
from detector.model.loader import default_threads
from detector.model.weights import load_fused
from detector.model.weights import load_weights
from detector.runtime import ModelHolder
from detector.runtime import torch_threads
from model_helpers import COCO_NAMES
from model_helpers import TINY_CFG

YOLOV3_BYTES = 248_007_048
TINY_BYTES = 35_434_956


def test_auto_skips_opencv_and_openvino_when_workers_do_not_fit(tiny_weights):
    # 4 workers x (~550 MB OpenCV + 34 MB torch) is more than 1500 MB - 512 MB reserve, and
    # 4 x (~330 MB OpenVINO-fp32 + 34 MB) too.
    detector = load_detector(
        TINY_CFG, tiny_weights, COCO_NAMES, precision="fp32", threads=1, workers=4, memory_mb=1500
    )
    assert detector.engine == "torch" and detector.precision == "fp32"
    reason = detector.engine_reason
    assert reason.startswith("auto: torch-fp32, the only candidate (")
    assert "OpenCV not tried: 4 worker(s)" in reason and "1500 MB RAM" in reason
    assert "not timed" not in reason and " ms" not in reason


def test_plan_without_openvino_takes_torch_bf16_from_the_cpu_flag_untimed():
    specs, reason = plan("auto", "bf16", "amx_bf16", TINY_BYTES, 1, 64_000, openvino=False)
    assert specs == [("torch", "bf16")]
    assert reason == "auto: torch-bf16 chosen by CPU flag, not timed (OpenVINO not installed)"


def test_plan_times_every_engine_that_runs_the_precision_and_fits():
    specs, reason = plan("auto", "fp32", None, TINY_BYTES, 1, 64_000, openvino=True)
    assert specs == [("torch", "fp32"), ("openvino", "fp32"), ("opencv", "fp32")]
    assert "OpenVINO fits: 1 worker(s)" in reason and "OpenCV fits: 1 worker(s)" in reason
    assert "no int8 model prepared (detector prepare)" in reason
    specs, reason = plan("auto", "bf16", "amx_bf16", TINY_BYTES, 1, 64_000, openvino=True)
    assert specs == [("torch", "bf16"), ("openvino", "bf16")]
    assert "OpenCV not tried: it has no bf16" in reason


def test_plan_takes_int8_only_when_its_gate_passed():
    passed = (True, "accepted: 20/20 fp32 detections matched")
    specs, reason = plan("auto", "bf16", "amx_bf16", TINY_BYTES, 1, 64_000, True, passed)
    assert ("openvino", "int8") in specs and "int8 gate accepted: 20/20" in reason
    rejected = (False, "rejected: 6/11 fp32 detections matched")
    specs, reason = plan("auto", "bf16", "amx_bf16", TINY_BYTES, 1, 64_000, True, rejected)
    assert ("openvino", "int8") not in specs
    assert "int8 not tried: its gate rejected: 6/11" in reason
    assert plan("auto", "int8", None, TINY_BYTES, 1, 64_000, True)[0] == [("openvino", "int8")]
    with pytest.raises(ValueError, match="int8 needs the openvino engine"):
        plan("auto", "int8", None, TINY_BYTES, 1, 64_000, openvino=False)


def test_plan_keeps_a_pinned_engine():
    assert plan("openvino", "bf16", None, TINY_BYTES, 8, 1000, True) == (
        [("openvino", "bf16")],
        "openvino-bf16 as configured (engine=openvino)",
    )


def test_openvino_budget_from_measured_footprints():
    # measured yolov3-416 workers from a warm cache: fp32 973 MB, bf16 728 MB peak RSS
    assert 950 < openvino_footprint_mb(YOLOV3_BYTES, "fp32") < 1000
    assert 700 < openvino_footprint_mb(YOLOV3_BYTES, "bf16") < 750
    assert openvino_fits(YOLOV3_BYTES, 2, "bf16", 2560)[0] is True
    fits, words = openvino_fits(YOLOV3_BYTES, 4, "fp32", 2048)
    assert not fits and words.startswith("4 worker(s) x ~")


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
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, int8"):
        from_mapping({"precision": value})


@pytest.mark.parametrize(
    ("engine", "precision", "runs"),
    [("torch", "int8", "fp32, bf16"), ("opencv", "bf16", "fp32"), ("opencv", "int8", "fp32")],
)
def test_engine_precision_pairs_that_do_not_exist_are_refused(engine, precision, runs):
    with pytest.raises(ConfigError) as info:
        from_mapping({"engine": engine, "precision": precision})
    assert str(info.value) == (
        f"engine {engine} has no precision {precision!r} (it runs {runs}); set precision to one"
        f" of auto, {runs} or pick another engine"
    )
    with pytest.raises(ValueError, match=f"engine {engine} has no precision {precision!r}"):
        load_detector(TINY_CFG, "unused.weights", COCO_NAMES, engine=engine, precision=precision)


@pytest.mark.parametrize(
    ("engine", "precision"),
    [("openvino", "int8"), ("openvino", "bf16"), ("auto", "int8"), ("opencv", "fp32")],
)
def test_engine_precision_pairs_that_exist(engine, precision):
    settings = from_mapping({"engine": engine, "precision": precision})
    assert (settings.engine, settings.precision) == (engine, precision)


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
    # more tiny OpenCV (~0.59 GB) or OpenVINO (~0.37 GB) workers than RAM holds
    workers = memory_total_mb() // 300 + 1
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
        # This machine's RAM cannot hold that many OpenCV/OpenVINO workers: torch fp32, untimed.
        assert (detector.engine, detector.precision) == ("torch", "fp32")
        assert f"OpenCV not tried: {workers} worker(s)" in detector.engine_reason
        assert torch.get_num_threads() == max(1, cpu_count() // workers)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("omp_threads", "policy"), [("1", "ACTIVE"), ("2", "PASSIVE"), (None, "PASSIVE")]
)
def test_omp_wait_policy_follows_the_threads_per_process(omp_threads, policy):
    # a serving worker with one thread (the unit's OMP_NUM_THREADS=1) vs the CLI (every core)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if omp_threads:
        env["OMP_NUM_THREADS"] = omp_threads
    code = "import os, detector.model; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == policy
