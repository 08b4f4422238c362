"""The openvino engine against torch and the OpenCV oracle; its IR cache; `detector prepare`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from detector import cli
from detector.machine import cpu_count
from detector.model import load_detector
from detector.model import openvino_cache
from detector.model.cfg import parse_cfg
from detector.model.darknet import Darknet
from detector.model.engines import bf16_flag
from detector.model.weights import load_fused
from model_helpers import COCO_NAMES
from model_helpers import PHOTOS_WITH_OBJECTS
from model_helpers import TINY_CFG
from model_helpers import Oracle
from model_helpers import mismatches
from model_helpers import oracle_letterbox
from PIL import Image

pytest.importorskip("openvino", reason="openvino not installed (pip install openvino)")

SMALL = (128, 128)  # cache tests: tiny at a small input converts in about a second
NEEDS_BF16 = pytest.mark.skipif(
    bf16_flag() is None, reason="CPU has neither amx_bf16 nor avx512_bf16 (no native bf16)"
)


@pytest.fixture(scope="module")
def build(tiny_weights):
    """A builder of the fused fp32 yolov3-tiny model, counting its calls (= conversions)."""

    def make():
        make.calls += 1
        with torch.device("meta"):
            model = Darknet(parse_cfg(TINY_CFG))
        load_fused(model, tiny_weights)
        return model

    make.calls = 0
    return make


@pytest.fixture(scope="module")
def detectors(tiny_weights, tmp_path_factory):
    """Real yolov3-tiny detectors at 416 by (engine, precision), sharing one cache."""
    cache, loaded = tmp_path_factory.mktemp("ov-cache"), {}

    def get(engine: str, precision: str):
        if (engine, precision) not in loaded:
            loaded[engine, precision] = load_detector(
                TINY_CFG, tiny_weights, COCO_NAMES, engine=engine, precision=precision,
                threads=2, cache_dir=cache,
            )  # fmt: skip
        return loaded[engine, precision]

    return get


def _maps(detector, x):
    return [np.asarray(m) for m in detector.infer(x)]


def test_fp32_raw_maps_match_torch(detectors, skimage_photos):
    x, _ = oracle_letterbox(skimage_photos["coffee"], 416)
    ours, torch_maps = _maps(detectors("openvino", "fp32"), x), _maps(detectors("torch", "fp32"), x)
    assert [m.shape for m in ours] == [(1, 255, 13, 13), (1, 255, 26, 26)]
    for got, want in zip(ours, torch_maps):
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-4)  # float32 summation order


@NEEDS_BF16
def test_bf16_raw_maps_stay_near_fp32(detectors, skimage_photos):
    x, _ = oracle_letterbox(skimage_photos["coffee"], 416)
    ours, fp32 = _maps(detectors("openvino", "bf16"), x), _maps(detectors("torch", "fp32"), x)
    for got, want in zip(ours, fp32):
        # logits of std ~3: bf16 keeps 8 bits of mantissa through 13 convs (measured max ~0.3)
        np.testing.assert_allclose(got, want, atol=0.6, rtol=0.05)
        assert np.abs(got - want).mean() < 0.05


@pytest.mark.parametrize(
    "precision", [pytest.param("fp32"), pytest.param("bf16", marks=NEEDS_BF16)]
)
@pytest.mark.parametrize("photo", PHOTOS_WITH_OBJECTS)
def test_detections_match_live_oracle(
    detectors, tiny_weights, skimage_photos, coco_names, precision, photo
):
    rgb = skimage_photos[photo]
    want = Oracle(TINY_CFG, tiny_weights, coco_names).detect(rgb)
    ours = detectors("openvino", precision).detect(Image.fromarray(rgb))
    assert want, f"the oracle finds nothing in {photo}"
    assert mismatches(ours, want, rgb.shape[1], rgb.shape[0]) == []


def test_concurrent_calls_from_request_threads_agree(detectors, skimage_photos):
    detector = detectors("openvino", "fp32")
    x = oracle_letterbox(skimage_photos["coffee"], 416)[0]
    expected = _maps(detector, x)
    results, errors = [], []

    def run():
        try:
            for _ in range(3):
                results.append(_maps(detector, x))
        except Exception as exc:  # reported below, with the thread's failure
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 9
    for maps in results:
        for got, want in zip(maps, expected):
            np.testing.assert_array_equal(got, want)


def test_miss_then_hit(tmp_path, tiny_weights, build):
    before = build.calls
    first = openvino_cache.prepare(TINY_CFG, tiny_weights, SMALL, "fp32", tmp_path, build)
    assert first.how.startswith("converted in ") and build.calls == before + 1
    second = openvino_cache.prepare(TINY_CFG, tiny_weights, SMALL, "fp32", tmp_path, build)
    assert second.how == f"cached {first.how.split('cached ')[1]}" and build.calls == before + 1
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert entry.name.startswith("fp32-") and oct(entry.stat().st_mode & 0o777) == "0o755"
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["fields"]["weights_sha256"] == openvino_cache.file_sha256(tiny_weights)
    assert manifest["fields"]["openvino"] == openvino_cache.version()
    assert manifest["sha256"]["model.bin"] == openvino_cache.file_sha256(entry / "model.bin")


def _entry(root):
    (entry,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    return entry


@pytest.mark.parametrize(
    ("damage", "logged"),
    [
        (lambda e: (e / "model.bin").write_bytes(b"\0" * 64), "model.bin fails its sha256"),
        (lambda e: (e / "manifest.json").unlink(), "is unreadable"),
        (lambda e: (e / "manifest.json").write_text("{"), "is unreadable"),
        (lambda e: e.chmod(0o777), "writable by group or others (mode 777)"),
        (lambda e: (e / "model.xml").chmod(0o666), "writable by group or others (mode 666)"),
        (lambda e: (e / "extra.bin").write_bytes(b"x"), "other files than its manifest"),
    ],
    ids=["corrupt-bin", "no-manifest", "bad-manifest", "dir-writable", "xml-writable", "extra"],
)
def test_a_bad_entry_is_rebuilt_with_a_log_line(
    tmp_path, tiny_weights, build, caplog, damage, logged
):
    openvino_cache.prepare(TINY_CFG, tiny_weights, SMALL, "fp32", tmp_path, build)
    damage(_entry(tmp_path))
    before = build.calls
    with caplog.at_level(logging.WARNING, logger="detector.model.openvino_cache"):
        again = openvino_cache.prepare(TINY_CFG, tiny_weights, SMALL, "fp32", tmp_path, build)
    assert again.how.startswith("converted in ") and build.calls == before + 1
    assert logged in caplog.text and "rebuilding" in caplog.text
    third = openvino_cache.prepare(TINY_CFG, tiny_weights, SMALL, "fp32", tmp_path, build)
    assert third.how.startswith("cached ")  # the rebuilt entry is whole again


def test_each_input_of_the_key_makes_its_own_entry(tmp_path, tiny_weights, build, monkeypatch):
    def key(cfg=TINY_CFG, weights=tiny_weights, shape=SMALL, precision="fp32"):
        return openvino_cache.cache_key(openvino_cache.cache_fields(cfg, weights, shape, precision))

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG.read_text() + "\n# same layers, other file\n")
    weights = tmp_path / "tiny.weights"
    data = bytearray(tiny_weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    keys = [key(), key(cfg=cfg), key(weights=weights), key(shape=(160, 160)), key(precision="bf16")]
    monkeypatch.setattr(openvino_cache, "version", lambda: "2099.1.0")
    keys.append(key())
    assert len(set(keys)) == len(keys)


def test_an_entry_of_another_openvino_version_is_not_used(tmp_path, tiny_weights, build, caplog):
    first = openvino_cache.prepare(TINY_CFG, tiny_weights, SMALL, "fp32", tmp_path, build)
    entry = _entry(tmp_path)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["fields"]["openvino"] = "2025.0.0"  # same directory name, other converter
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="detector.model.openvino_cache"):
        again = openvino_cache.prepare(TINY_CFG, tiny_weights, SMALL, "fp32", tmp_path, build)
    assert "is for other inputs, rebuilding" in caplog.text
    assert again.how.startswith("converted in ") and first.how.startswith("converted in ")


def test_an_unwritable_cache_runs_uncached(tmp_path, tiny_weights, build):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    got = openvino_cache.prepare(TINY_CFG, tiny_weights, SMALL, "fp32", blocked / "c", build)
    assert "not cached (cannot write the openvino cache" in got.how
    assert "set openvino_cache_dir" in got.how and got.model is not None


def test_int8_is_looked_up_not_built_without_a_quantizer(tmp_path, tiny_weights, build):
    assert openvino_cache.prepare(TINY_CFG, tiny_weights, SMALL, "int8", tmp_path, build) is None


def test_conversion_sends_no_telemetry(tmp_path):
    code = (
        "from detector.model.openvino_cache import convert\n"
        "from detector.model.cfg import parse_cfg\n"
        "from detector.model.darknet import Darknet\n"
        f"convert(Darknet(parse_cfg({str(TINY_CFG)!r})), (64, 64))\n"
        "from openvino_telemetry.main import Telemetry\n"
        "print('consent', Telemetry().consent)\n"
    )
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("CI", None)  # openvino-telemetry's own CI switch must not be what turns it off
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "consent False"


def test_pinned_bf16_on_a_cpu_without_it_is_refused(tiny_weights, monkeypatch, tmp_path):
    monkeypatch.setattr("detector.model.loader.bf16_flag", lambda: None)
    with pytest.raises(ValueError, match="openvino bf16 needs a CPU with amx_bf16 or avx512_bf16"):
        load_detector(
            TINY_CFG, tiny_weights, COCO_NAMES, engine="openvino", precision="bf16",
            cache_dir=tmp_path,
        )  # fmt: skip


def test_auto_times_openvino_and_says_why(tiny_weights, tmp_path):
    detector = load_detector(
        TINY_CFG, tiny_weights, COCO_NAMES, precision="fp32", threads=1, size=128,
        memory_mb=64_000, cache_dir=tmp_path,
    )  # fmt: skip
    reason = detector.engine_reason
    assert reason.startswith(f"auto: {detector._engine.label} ") and " at load (" in reason
    assert "openvino-fp32" in reason and "torch-fp32" in reason and "opencv" in reason
    assert "OpenVINO fits: 1 worker(s)" in reason and "no int8 model prepared" in reason


def test_cli_prepare_builds_once_then_reports_unchanged(
    tiny_weights, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DETECTOR_WEIGHTS_DIR", str(tiny_weights.parent))
    monkeypatch.setenv("DETECTOR_OPENVINO_CACHE_DIR", str(tmp_path))
    args = ["prepare", "--model", "yolov3-tiny", "--size", "128", "--precision", "fp32"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out.strip()
    assert first.startswith("yolov3-tiny openvino-fp32: built: converted in ")
    assert cli.main(args) == 0
    assert (
        capsys.readouterr()
        .out.strip()
        .startswith(f"yolov3-tiny openvino-fp32: unchanged: cached {tmp_path}/fp32-")
    )


def test_cli_detect_uses_every_core_not_the_serving_share(tiny_weights, monkeypatch, tmp_path):
    image = tmp_path / "grey.jpg"
    Image.new("RGB", (64, 48), (127, 127, 127)).save(image)
    monkeypatch.setenv("DETECTOR_WEIGHTS_DIR", str(tiny_weights.parent))
    monkeypatch.setenv("DETECTOR_THREADS", "1")  # what a host's serving config holds (2 workers)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        args = ["detect", str(image), "--engine", "torch", "--precision", "fp32", "--json"]
        assert cli.main(args) == 0
        assert torch.get_num_threads() == cpu_count()
    finally:
        torch.set_num_threads(before)


def test_auto_leaves_out_an_openvino_that_fails_to_load(tiny_weights, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Exception from src/inference/src/core.cpp: no CPU plugin")

    monkeypatch.setattr("detector.model.loader.openvino_engine.load_engine", broken)
    detector = load_detector(
        TINY_CFG, tiny_weights, COCO_NAMES, precision="fp32", threads=1, size=128,
        memory_mb=64_000, cache_dir=tmp_path,
    )  # fmt: skip
    assert detector.engine in ("torch", "opencv")
    assert "openvino-fp32 left out: it failed to load (Exception from src/inference" in (
        detector.engine_reason
    )
    with pytest.raises(RuntimeError, match="no CPU plugin"):
        load_detector(
            TINY_CFG, tiny_weights, COCO_NAMES, engine="openvino", precision="fp32",
            cache_dir=tmp_path,
        )  # fmt: skip
