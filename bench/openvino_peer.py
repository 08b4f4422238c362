"""OpenVINO used directly, as its YOLO samples do: convert, quantize, compile; numpy/cv2 around.

What a user who knows OpenVINO would write instead of using this project:
- the model: this project's plain darknet port (BN layers, fp32) converted with
  `openvino.convert_model(torch_model, example_input=...)` (OpenVINO's PyTorch path; the
  openvino_notebooks YOLOv8 samples go through an ONNX export instead, which needs the `onnx`
  package that is not installed here), saved as IR with `openvino.save_model` and read back with
  `core.read_model` as the samples do, so conversion happens once, not in the timed process;
- int8: `nncf.quantize(model, nncf.Dataset(images, transform_fn), subset_size=N,
  preset=nncf.QuantizationPreset.MIXED)` as in NNCF's `post_training_quantization/openvino/yolov8`
  example, calibrated on scikit-image photos (not the timed one), saved as IR the same way;
- `core.compile_model(model, "CPU", config)` with the thread count, `PERFORMANCE_HINT=LATENCY` and,
  for fp32/bf16, `INFERENCE_PRECISION_HINT` (f32 must be asked for: on bf16 CPUs OpenVINO's
  default is bf16); int8 keeps the default hint, as the samples do;
- per image: cv2.imdecode, letterbox with cv2.resize (grey padding), BGR->RGB, HWC->CHW, /255,
  batch axis; `compiled(blob)`; numpy sigmoid/exp decoding of the [yolo] maps;
  cv2.dnn.NMSBoxesBatched.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "bf16", "int8")
CALIBRATION_PHOTOS = (  # scikit-image's bundled photos; coffee is the timed image, so not here
    "astronaut",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """Resize a BGR image into a size x size grey canvas; return it, the scale and the offsets."""
    import cv2

    h, w = image.shape[:2]
    scale = min(size / w, size / h)
    nw, nh = round(w * scale), round(h * scale)
    dx, dy = (size - nw) // 2, (size - nh) // 2
    canvas = np.full((size, size, 3), 127, np.uint8)
    canvas[dy : dy + nh, dx : dx + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, scale, dx, dy


def to_tensor(canvas: np.ndarray) -> np.ndarray:
    """BGR HWC uint8 -> RGB NCHW float32 in 0..1, as the samples' `image_to_tensor`."""
    rgb = canvas[:, :, ::-1].transpose(2, 0, 1)
    return np.expand_dims(np.ascontiguousarray(rgb, dtype=np.float32) / 255.0, 0)


def calibration_tensors(size: int) -> list[np.ndarray]:
    """Letterboxed input tensors of the calibration photos."""
    from skimage import data

    tensors = []
    for name in CALIBRATION_PHOTOS:
        rgb = getattr(data, name)()
        rgb = rgb[0] if isinstance(rgb, tuple) else rgb  # stereo_motorcycle: (left, right, disp)
        tensors.append(to_tensor(letterbox(np.ascontiguousarray(rgb[:, :, 2::-1]), size)[0]))
    return tensors


def decode_heads(
    maps: list[np.ndarray], anchors: list[list[tuple[float, float]]], size: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw [yolo] maps -> (boxes x,y,w,h in input pixels, scores, classes) above `threshold`."""
    boxes, scores, classes = [], [], []
    for raw, head in zip(maps, anchors):
        _, channels, h, w = raw.shape
        a = len(head)
        p = raw.reshape(a, channels // a, h * w).transpose(0, 2, 1)  # A x HW x (5+C)
        anchor, cell = np.nonzero(p[:, :, 4] > np.log(threshold / (1 - threshold)))
        p = 1 / (1 + np.exp(-p[anchor, cell]))
        cls = p[:, 5:].argmax(1)
        score = p[:, 4] * p[np.arange(len(p)), 5 + cls]
        keep = score > threshold
        p, anchor, cell, cls, score = p[keep], anchor[keep], cell[keep], cls[keep], score[keep]
        raw_wh = raw.reshape(a, channels // a, h * w)[anchor, 2:4, cell]
        wh = np.exp(raw_wh) * np.asarray(head, np.float32)[anchor]
        cx = (p[:, 0] + cell % w) * size / w
        cy = (p[:, 1] + cell // w) * size / h
        boxes.append(np.stack((cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, wh[:, 0], wh[:, 1]), 1))
        scores.append(score)
        classes.append(cls)
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)


def ir_path(spec: dict, precision: str) -> Path:
    """Where the converted (fp32 and bf16 share it) or quantized IR of this model is saved."""
    import openvino as ov

    digest = hashlib.sha256()
    with open(spec["weights"], "rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    key = f"{Path(spec['cfg']).stem}-{spec['size']}-{digest.hexdigest()[:16]}"
    kind = "int8" if precision == "int8" else "fp32"
    return Path(spec["cache_dir"]) / f"{key}-{kind}-ov{ov.get_version().split('-')[0]}.xml"


def build_model(spec: dict, precision: str):
    """Read (or convert, quantize and save) the darknet model's IR; return (model, anchors)."""
    import openvino as ov
    from detector.model.cfg import parse_cfg

    cfg = parse_cfg(spec["cfg"])
    anchors = [list(cfg.layers[i].anchors) for i in cfg.yolo_indices]
    core = ov.Core()
    path = ir_path(spec, precision)
    if path.is_file():
        return core.read_model(path), anchors
    fp32_path = ir_path(spec, "fp32")
    if fp32_path.is_file():
        model = core.read_model(fp32_path)
    else:
        import torch
        from detector.model.darknet import Darknet
        from detector.model.weights import load_weights

        torch_model = Darknet(cfg).eval()
        load_weights(torch_model, spec["weights"])
        size = spec["size"]
        with torch.no_grad():
            model = ov.convert_model(torch_model, example_input=torch.zeros(1, 3, size, size))
        del torch_model
        fp32_path.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, fp32_path, compress_to_fp16=False)
    if precision == "int8":
        import nncf

        images = calibration_tensors(spec["size"])
        model = nncf.quantize(
            model,
            nncf.Dataset(images, lambda item: item),
            subset_size=len(images),
            preset=nncf.QuantizationPreset.MIXED,
        )
        ov.save_model(model, path, compress_to_fp16=False)
    return model, anchors


def pipeline(spec: dict, precision: str):
    """Return run(jpeg bytes) -> forward seconds, for OpenVINO used directly at `precision`."""
    import cv2
    import openvino as ov

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    model, anchors = build_model(spec, precision)
    config = {"INFERENCE_NUM_THREADS": spec["threads"], "PERFORMANCE_HINT": "LATENCY"}
    if precision != "int8":
        config["INFERENCE_PRECISION_HINT"] = "f32" if precision == "fp32" else "bf16"
    compiled = ov.Core().compile_model(model, "CPU", config)
    outputs = list(compiled.outputs)
    size = spec["size"]

    def run(data: bytes) -> float:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        canvas, scale, dx, dy = letterbox(image, size)
        blob = to_tensor(canvas)
        start = time.perf_counter()
        result = compiled(blob)
        maps = [result[out] for out in outputs]
        forward = time.perf_counter() - start
        boxes, scores, classes = decode_heads(maps, anchors, size, 0.25)
        boxes[:, 0] = (boxes[:, 0] - dx) / scale
        boxes[:, 1] = (boxes[:, 1] - dy) / scale
        boxes[:, 2:] /= scale
        cv2.dnn.NMSBoxesBatched(boxes.tolist(), scores.tolist(), classes.tolist(), 0.25, 0.45)
        return forward

    return run
