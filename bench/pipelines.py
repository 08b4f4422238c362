"""The model benchmark's rows: one end-to-end pipeline each (JPEG bytes in, detections out)."""

from __future__ import annotations

import io
import time

# Rows of this project: "<engine>-<precision>" through the public load_detector(), plus "auto".
# Peers: OpenCV DNN and OpenVINO used directly as their samples show, and a plain torch port.
PEERS = {
    "opencv-dnn-direct": "OpenCV DNN directly (cv2 decode + blob + NMSBoxesBatched)",
    "ov-direct-fp32": "OpenVINO directly, fp32 (INFERENCE_PRECISION_HINT=f32)",
    "ov-direct-bf16": "OpenVINO directly, bf16 (INFERENCE_PRECISION_HINT=bf16)",
    "ov-direct-int8": "OpenVINO directly, int8 (NNCF PTQ, 7 photos)",
    "torch-unfused": "torch fp32 unfused (BN layers, NCHW, full decode)",
}


def label(row: str) -> str:
    """Return the table label of a row."""
    if row in PEERS:
        return PEERS[row]
    return "detector auto" if row == "auto" else f"detector {row.replace('-', ' ', 1)}"


def project_pipeline(spec: dict):
    """Load this project's detector for a row; return (run(jpeg) -> forward s, engine, reason)."""
    from detector import imaging
    from detector.model import load_detector

    engine, _, precision = spec["row"].partition("-")
    det = load_detector(
        spec["cfg"],
        spec["weights"],
        spec["names"],
        engine=engine,
        precision=precision or "auto",
        size=spec["size"],
        threads=spec["threads"],
        name=spec["model"],
    )

    def run(data: bytes) -> float:
        decoded = imaging.decode_image(data, max_pixels=200_000_000, target=det.input_size)
        det.detect(decoded.image, original_size=decoded.size)
        return det.last_timing["inference"] / 1000

    return run, f"{det.engine}-{det.precision}", det.engine_reason


def unfused_pipeline(spec: dict):
    """A straightforward torch port: full decode, BN as separate layers, NCHW fp32, no_grad."""
    import torch
    from detector.model.cfg import parse_cfg
    from detector.model.darknet import Darknet
    from detector.model.postprocess import HeadSpec
    from detector.model.postprocess import decode
    from detector.model.postprocess import postprocess
    from detector.model.preprocess import letterbox
    from detector.model.weights import load_weights
    from PIL import Image
    from PIL import ImageOps

    torch.set_num_threads(spec["threads"])
    cfg = parse_cfg(spec["cfg"])
    model = Darknet(cfg).eval()
    load_weights(model, spec["weights"])
    heads = [HeadSpec(cfg.layers[i].anchors, cfg.layers[i].classes) for i in cfg.yolo_indices]
    size = spec["size"]

    def run(data: bytes) -> float:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        x, box = letterbox(image, size, size)
        x = torch.from_numpy(x.copy())  # plain NCHW
        start = time.perf_counter()
        with torch.no_grad():
            maps = [m.numpy() for m in model(x)]
        forward = time.perf_counter() - start
        postprocess(decode(maps, heads, size, size), box, 0.25, 0.45)
        return forward

    return run


def opencv_pipeline(spec: dict):
    """OpenCV DNN as its tutorials use it: imdecode, letterbox, blobFromImage, NMSBoxesBatched."""
    import cv2
    import numpy as np

    cv2.setNumThreads(spec["threads"])
    net = cv2.dnn.readNetFromDarknet(spec["cfg"], spec["weights"])
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    outputs = net.getUnconnectedOutLayersNames()
    size = spec["size"]

    def run(data: bytes) -> float:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        scale = min(size / w, size / h)
        nw, nh = int(w * scale), int(h * scale)
        dx, dy = (size - nw) // 2, (size - nh) // 2
        canvas = np.full((size, size, 3), 127, np.uint8)
        canvas[dy : dy + nh, dx : dx + nw] = cv2.resize(image, (nw, nh))
        blob = cv2.dnn.blobFromImage(canvas, 1 / 255.0, (size, size), swapRB=True, crop=False)
        start = time.perf_counter()
        net.setInput(blob)
        rows = np.concatenate(net.forward(outputs))
        forward = time.perf_counter() - start
        scores = rows[:, 5:]
        classes = scores.argmax(1)
        best = scores[np.arange(len(rows)), classes]
        keep = best > 0.25
        xywh = rows[keep, :4] * size
        xywh[:, 0] = (xywh[:, 0] - xywh[:, 2] / 2 - dx) / scale
        xywh[:, 1] = (xywh[:, 1] - xywh[:, 3] / 2 - dy) / scale
        xywh[:, 2:] /= scale
        cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), best[keep].tolist(), classes[keep].tolist(), 0.25, 0.45
        )
        return forward

    return run


def build(spec: dict):
    """Return (run, engine label, auto's reason) for the row named in `spec`."""
    row = spec["row"]
    if row == "opencv-dnn-direct":
        return opencv_pipeline(spec), "opencv-dnn", ""
    if row == "torch-unfused":
        return unfused_pipeline(spec), "torch-unfused", ""
    if row.startswith("ov-direct-"):
        from bench import openvino_peer

        precision = row.rsplit("-", 1)[1]
        return openvino_peer.pipeline(spec, precision), f"openvino-direct-{precision}", ""
    return project_pipeline(spec)
