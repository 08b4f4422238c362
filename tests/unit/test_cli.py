"""The `detector` command line, run for real in a subprocess on the real yolov3-tiny weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights"
SHARED = ROOT.parent / "shared"
needs_weights = pytest.mark.skipif(
    not (WEIGHTS / "yolov3-tiny.weights").is_file(),
    reason="weights/yolov3-tiny.weights is missing: run `make weights`",
)
FAST = ["--engine", "torch", "--inference-threads", "1", "--weights-dir", str(WEIGHTS)]


def detector(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `detector ARGS` (this interpreter's package) and capture its output."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    environment.update(env or {})
    cmd = [sys.executable, "-m", "detector.cli", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=300
    )


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.fixture(scope="module")
def coffee(tmp_path_factory) -> Path:
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the sample photo")
    path = tmp_path_factory.mktemp("samples") / "coffee.jpg"
    Image.fromarray(data.coffee()).save(path, quality=95)
    return path


@needs_weights
def test_json_on_a_sample_photo(coffee):
    done = detector("detect", str(coffee), "--json", *FAST)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["model"], result["width"], result["height"]) == ("yolov3-tiny", 600, 400)
    assert [d["label"] for d in result["detections"]] == ["cup"]
    cup = result["detections"][0]
    assert set(cup) == {"label", "class_id", "score", "box"} and cup["class_id"] == 41
    assert 0.25 < cup["score"] <= 1 and len(cup["box"]) == 4
    assert {"decode", "inference", "total"} <= set(result["timing_ms"])


@needs_weights
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/testdata is absent (exists in CI only)")
def test_json_on_dog_matches_the_reference():
    done = detector("detect", str(SHARED / "testdata" / "dog.jpg"), "--json", *FAST)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    labels = {d["label"] for d in result["detections"]}
    assert {"dog", "bicycle", "car"} <= labels
    reference = json.loads((SHARED / "reference" / "yolov3-tiny.json").read_text())
    expected = next(r for r in reference if r["image"] == "dog.jpg")
    assert (result["width"], result["height"]) == (expected["width"], expected["height"])
    assert len(result["detections"]) == len(expected["detections"])
    for ref in expected["detections"]:
        best = max(
            (d for d in result["detections"] if d["label"] == ref["label"]),
            key=lambda d: _iou(d["box"], ref["box"]),
        )
        assert _iou(best["box"], ref["box"]) > 0.9
        assert abs(best["score"] - ref["score"]) < 0.03


@needs_weights
def test_table_and_annotated_images(coffee, tmp_path):
    other = tmp_path / "wide.png"
    with Image.open(coffee) as photo:
        photo.resize((900, 300)).save(other)
    out = tmp_path / "out"
    done = detector("detect", str(coffee), str(other), "--out", str(out), *FAST)
    assert done.returncode == 0, done.stderr
    assert f"{coffee}: 1 object(s), 600x400, yolov3-tiny" in done.stdout
    assert "cup" in done.stdout and "score" in done.stdout
    for name, size in (("coffee", (600, 400)), ("wide", (900, 300))):
        with Image.open(out / f"{name}.detections.jpg") as drawn:
            assert drawn.format == "JPEG" and drawn.size == size
    single = tmp_path / "single.jpg"
    done = detector("detect", str(coffee), "--out", str(single), "--json", *FAST)
    assert done.returncode == 0, done.stderr
    with Image.open(single) as drawn:
        assert drawn.size == (600, 400)


@needs_weights
def test_custom_model_triple(coffee, tmp_path):
    data = ROOT / "service" / "detector" / "data"
    custom = [
        "--cfg",
        str(data / "yolov3-tiny.cfg"),
        "--weights",
        str(WEIGHTS / "yolov3-tiny.weights"),
        "--names",
        str(data / "coco.names"),
    ]
    done = detector("detect", str(coffee), "--json", "--engine", "torch", *custom)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == "yolov3-tiny" and result["detections"][0]["label"] == "cup"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["detect", "no-such.jpg"], "image no-such.jpg does not exist"),
        (["detect", "README.md", *FAST], "README.md: file is not an image (got text/plain)"),
        (["detect", "README.md", "--model", "yolov9"], "unknown model 'yolov9'"),
        (
            ["detect", "README.md", "--model", "yolov3", "--weights-dir", "/nonexistent"],
            "run `detector fetch-weights yolov3 --dest /nonexistent`",
        ),
        (["detect", "README.md", "--threshold", "2"], "threshold must be between 0 and 1"),
        (["fetch-weights", "yolov9"], "unknown model 'yolov9'"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message):
    if "--engine" in args and not (WEIGHTS / "yolov3-tiny.weights").is_file():
        pytest.skip("weights/yolov3-tiny.weights is missing: run `make weights`")
    done = detector(*args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detector: error: "), done.stderr
    assert message in lines[0]


def test_debug_shows_the_traceback():
    done = detector("--debug", "fetch-weights", "yolov9")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "unknown model 'yolov9'" in done.stderr


def test_serve_forwards_its_arguments():
    pytest.importorskip("detector.server", reason="detector.server (the web service) is absent")
    done = detector("serve", "--help")
    assert done.returncode == 0, done.stderr
    assert "--bind" in done.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "detector.cli", "--version"],
        ["-m", "detector.cli", "detect", "--version"],
        ["-m", "detector.cli", "fetch-weights", "--version"],
        ["-m", "detector.cli", "serve", "--version"],
        ["-m", "detector", "--version"],
        ["-m", "detector.server", "--version"],
    ],
)
def test_version_on_every_entry_point(command):
    from detector import __version__

    done = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"detector {__version__}\n"


@needs_weights
def test_detect_reads_the_service_config_file(coffee, tmp_path):
    """--config FILE: the service's TOML, then DETECTOR_* overrides, then flags (config.load)."""
    config = tmp_path / "detector.toml"
    config.write_text(
        f'model = "yolov3-tiny"\nweights_dir = "{WEIGHTS}"\nengine = "torch"\nthreshold = 0.9\n',
        encoding="utf-8",
    )
    run = ["detect", str(coffee), "--json", "--inference-threads", "1", "--config", str(config)]
    strict = detector(*run)
    assert strict.returncode == 0, strict.stderr
    assert json.loads(strict.stdout)["detections"] == []  # the file's threshold 0.9 applied
    env = detector(*run, env={"DETECTOR_THRESHOLD": "0.3"})
    assert [d["label"] for d in json.loads(env.stdout)["detections"]] == ["cup"]
    flag = detector(*run, "--threshold", "0.3")
    assert [d["label"] for d in json.loads(flag.stdout)["detections"]] == ["cup"]
    config.write_text(config.read_text(encoding="utf-8") + "bogus = 1\n", encoding="utf-8")
    bad = detector(*run)
    assert bad.returncode == 1
    assert bad.stderr == f"detector: error: unknown setting(s) in {config}: bogus\n"


@needs_weights
def test_old_threads_flag_still_works_with_a_warning(coffee):
    done = detector("detect", str(coffee), "--json", "--engine", "torch", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert [d["label"] for d in json.loads(done.stdout)["detections"]] == ["cup"]
    assert "--threads is deprecated; use --inference-threads" in done.stderr


def test_serve_threads_flags_have_distinct_names(monkeypatch, capsys):
    server = pytest.importorskip("detector.server", reason="detector.server is absent")
    for name in ("BIND", "WORKER_THREADS", "THREADS", "CONFIG", "ALLOW_PUBLIC_BIND"):
        monkeypatch.delenv(f"DETECTOR_{name}", raising=False)  # restored after the test
    argv = ["--bind", "0.0.0.0:5000", "--request-threads", "3", "--inference-threads", "2"]
    assert server.main(argv) == 2  # refused before gunicorn starts: a public bind
    assert os.environ["DETECTOR_WORKER_THREADS"] == "3"
    assert os.environ["DETECTOR_THREADS"] == "2"
    old = server.build_parser().parse_args(["--threads", "4"])
    assert old.request_threads == 4 and old.inference_threads is None
    assert "--threads is deprecated; use --request-threads" in capsys.readouterr().err
    usage = server.build_parser().format_help()
    assert "--request-threads" in usage and "--inference-threads" in usage
