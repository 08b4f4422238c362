"""Read an uploaded image from a request, decode it, orient it and run the detector on it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from flask import current_app
from flask import request
from PIL import Image

from . import metrics
from .errors import ApiError
from .imaging import ImageError
from .imaging import decode_image

FIELD = "file"


@dataclass
class Result:
    """One request's image (decoded, upright) and what the model found in it."""

    image: Image.Image
    size: tuple[int, int]  # original (oriented) size; image may be smaller with draft
    detections: list
    timing_ms: dict


def read_upload() -> bytes:
    """Return the uploaded bytes: multipart field `file`, or a raw image/* body.

    :raise ApiError 400: no `file` field (naming the fields that were sent) or an empty file
    """
    if request.mimetype.startswith("image/") or request.mimetype == "application/octet-stream":
        data = request.get_data(cache=False)
    else:
        upload = request.files.get(FIELD)
        if upload is None:
            sent = sorted(set(request.files) | set(request.form))
            hint = f"; got {', '.join(sent)}" if sent else ""
            raise ApiError(400, f"missing file: send the image as multipart field '{FIELD}'{hint}")
        data = upload.read()
    if not data:
        raise ApiError(400, "the uploaded file is empty; choose an image file")
    return data


def detect_upload(*, draft: bool = False) -> Result:
    """Decode the request's image, apply the page's orientation and run the detector.

    :param draft: let a big JPEG decode at reduced scale (boxes still come back in original
        pixels); off when the image is drawn on and returned.
    :raise ApiError: 400 no or empty file, 415 not an image, 422 too many pixels
    """
    app = current_app
    config = app.config["DETECTOR"]
    holder = app.extensions["detector"]
    data = read_upload()
    detector = holder.get()
    started = time.perf_counter()
    try:
        decoded = decode_image(
            data,
            max_pixels=config.max_pixels,
            target=detector.input_size if draft else None,
            orientation=request.form.get("orientation"),
        )
    except ImageError as exc:
        raise ApiError(exc.status, str(exc)) from exc
    decoded_at = time.perf_counter()
    detections = detector.detect(decoded.image, original_size=decoded.size)
    done = time.perf_counter()
    metrics.INFERENCE.labels(detector.name).observe(done - decoded_at)
    for det in detections:
        metrics.DETECTIONS.labels(det.label).inc()
    timing = {
        "decode": round((decoded_at - started) * 1000, 1),
        "inference": round((done - decoded_at) * 1000, 1),
    }
    return Result(image=decoded.image, size=decoded.size, detections=detections, timing_ms=timing)
