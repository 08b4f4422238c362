"""int8 with NNCF on real yolov3-tiny: calibration photos, quantize_int8, the gate's verdict."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from detector import calibration
from detector.model.gate import gate_path
from detector.model.gate import load_report
from detector.model.gate import run_gate
from detector.model.preprocess import letterbox
from PIL import Image

ov = pytest.importorskip("openvino", reason="openvino not installed (int8 needs it)")
nncf = pytest.importorskip("nncf", reason="nncf not installed (int8 needs it)")
from detector.model.quantize import QuantizeOptions  # noqa: E402
from detector.model.quantize import head_convs  # noqa: E402
from detector.model.quantize import quantize_and_gate  # noqa: E402
from detector.model.quantize import quantize_int8  # noqa: E402

SMALL = (160, 160)  # keeps NNCF's statistics pass short


def convert(model: torch.nn.Module, shape: tuple[int, int]):
    """Convert the fused torch model with OpenVINO's own converter (static 1x3xHxW input)."""
    x = torch.zeros(1, 3, shape[1], shape[0])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python code
        return ov.convert_model(model, example_input=x, input=[1, 3, shape[1], shape[0]])


def compiled(model):
    """Return engine(x) -> raw maps for an OpenVINO model on 2 CPU threads."""
    config = {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()

    def run(x: np.ndarray) -> list[np.ndarray]:
        request.infer({0: np.ascontiguousarray(x)})
        return [request.get_output_tensor(i).data.copy() for i in range(len(model.outputs))]

    return run


def fake_quantizes(model) -> int:
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())


@pytest.fixture(scope="module")
def fused_tiny(tiny_detectors):
    """The fp32 torch engine of the real yolov3-tiny (its .model: the fused module), head specs."""
    detector = tiny_detectors("torch", "fp32")
    return detector._engine, detector.heads


@pytest.fixture(scope="module")
def tiny_ov(fused_tiny):
    """Converted fp32 OpenVINO models of yolov3-tiny, by input shape."""
    cache = {}

    def get(shape):
        if shape not in cache:
            cache[shape] = convert(fused_tiny[0].model, shape)
        return cache[shape]

    return get


@pytest.fixture(scope="module")
def int8_small(tiny_ov):
    """yolov3-tiny quantized at SMALL on the first 8 calibration inputs."""
    inputs = calibration.calibration_inputs(calibration.calibration_images()[:8], SMALL)
    return quantize_int8(tiny_ov(SMALL), inputs)


def test_calibration_and_gate_photos_are_disjoint_and_licensed():
    assert not set(calibration.CALIBRATION) & set(calibration.EVALUATION)
    shipped = {p.stem for p in calibration.PHOTO_DIR.glob("*.jpg")}
    assert shipped == set(calibration.CALIBRATION) | set(calibration.EVALUATION)
    assert shipped == set(calibration.LICENCES)
    licences = (calibration.PHOTO_DIR / "LICENSES.md").read_text()
    for name in shipped:
        assert f"| {name}.jpg |" in licences
    calib = {name.split("-")[0] for name, _ in calibration.calibration_images()}
    gate = {name.split("-")[0] for name, _ in calibration.evaluation_images()}
    assert calib == set(calibration.CALIBRATION) and gate == set(calibration.EVALUATION)
    assert len(calibration.calibration_images()) == 4 * len(calibration.CALIBRATION)


def test_shipped_photos_are_the_skimage_samples(tmp_path):
    pytest.importorskip("skimage.data", reason="scikit-image (test extra) not installed")
    calibration.export_photos(tmp_path)
    for name in calibration.LICENCES:
        ours = np.asarray(Image.open(calibration.PHOTO_DIR / f"{name}.jpg"), dtype=np.float32)
        again = np.asarray(Image.open(tmp_path / f"{name}.jpg"), dtype=np.float32)
        assert ours.shape == again.shape and max(ours.shape[:2]) <= calibration.MAX_SIDE
        assert np.abs(ours - again).mean() < 1.0, name  # same image (JPEG coders may differ)


def test_missing_photo_names_the_fix(tmp_path):
    with pytest.raises(calibration.CalibrationError, match="python -m detector.calibration"):
        calibration.calibration_images(tmp_path)


def test_photo_set_hash_changes_with_a_photo(tmp_path):
    for path in calibration.PHOTO_DIR.glob("*.jpg"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    before = calibration.photo_set_sha256(tmp_path)
    assert before == calibration.photo_set_sha256()
    (tmp_path / "clock.jpg").write_bytes(b"other")
    assert calibration.photo_set_sha256(tmp_path) != before


def test_calibration_inputs_are_the_serving_letterbox():
    images = calibration.calibration_images()[:2]
    inputs = calibration.calibration_inputs(images, (320, 256))
    for (_, image), x in zip(images, inputs):
        assert x.shape == (1, 3, 256, 320) and x.dtype == np.float32
        np.testing.assert_array_equal(x, letterbox(image, 320, 256)[0])


def test_options_are_checked():
    with pytest.raises(ValueError, match="preset must be one of"):
        QuantizeOptions(preset="fast")
    with pytest.raises(ValueError, match="subset_size"):
        QuantizeOptions(subset_size=-1)
    with pytest.raises(ValueError, match="no calibration inputs"):
        quantize_int8(object(), [])


def test_head_convs_are_the_convs_before_the_yolo_layers(tiny_ov):
    names = head_convs(tiny_ov(SMALL))
    assert len(names) == 2
    assert ".15." in names[0] and ".22." in names[1]  # cfg layers 15 and 22 feed [yolo] 16, 23


def test_quantize_int8_real_tiny(tiny_ov, fused_tiny, int8_small):
    fp32, int8 = tiny_ov(SMALL), int8_small
    assert fake_quantizes(fp32) == 0  # the fp32 model is left alone
    assert fake_quantizes(int8) >= 13  # every conv's input (13 convs in tiny)
    image = calibration.evaluation_images()[0][1]
    x, _ = letterbox(image, *SMALL)
    want = fused_tiny[0](x)
    got = compiled(int8)(x)
    for a, b in zip(want, got):
        assert a.shape == b.shape
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


def test_ignore_heads_keeps_head_weights_in_float(tiny_ov, int8_small):
    fp32 = tiny_ov(SMALL)
    inputs = calibration.calibration_inputs(calibration.calibration_images()[:4], SMALL)
    int8 = quantize_int8(fp32, inputs, QuantizeOptions(ignore_heads=True))
    ops = {op.get_friendly_name(): op for op in int8.get_ordered_ops()}
    for name in head_convs(fp32):
        weight = ops[name].input_value(1).get_node()
        data = ops[name].input_value(0).get_node()
        assert weight.get_type_name() == "Constant"  # fp32 weights, no int8 decompression
        assert weight.get_element_type() == ov.Type.f32
        assert data.get_type_name() != "FakeQuantize"
    assert fake_quantizes(int8) == fake_quantizes(int8_small) - 2


@pytest.mark.slow  # ~15 s: quantization and 2 x 12 inferences at 416
def test_gate_rejects_int8_calibrated_on_blank_images(tiny_ov, fused_tiny):
    """A deliberately broken int8 model: activation ranges taken from uniform grey inputs."""
    shape = (416, 416)
    blank = [("grey", Image.new("RGB", (416, 416), (127, 127, 127)))] * 4
    int8 = quantize_int8(tiny_ov(shape), calibration.calibration_inputs(blank, shape))
    model, heads = fused_tiny
    report = run_gate(
        model,
        compiled(int8),
        heads,
        shape,
        calibration.evaluation_images(),
    )
    assert not report.passed
    assert report.total >= 3  # the fp32 model finds the cup, the people, ...
    assert report.agreement < 0.5, report.reason
    assert report.reason.startswith("rejected:")


@pytest.mark.slow  # ~20 s: 44 calibration inputs at 416
def test_quantize_and_gate_stores_a_readable_report(tiny_ov, fused_tiny, tmp_path):
    """The real flow at 416; the verdict for tiny is measured, not assumed (README has it)."""
    shape = (416, 416)
    model, heads = fused_tiny
    int8, report = quantize_and_gate(tiny_ov(shape), model, compiled, heads, shape)
    assert fake_quantizes(int8) >= 13
    assert report.total >= 3 and 0 <= report.matched <= report.total
    assert report.passed == (report.agreement >= 0.95 and not report.new_false_positives)
    assert report.meta["calibration_images"][0] == "astronaut"
    assert report.meta["quantize_options"] == QuantizeOptions().to_dict()
    assert report.meta["nncf"] == nncf.__version__
    assert {i["name"].split("-")[0] for i in report.images} == set(calibration.EVALUATION)
    xml = tmp_path / "model.xml"
    ov.save_model(int8, xml)
    report.save(gate_path(xml))
    assert load_report(gate_path(xml)) == report
