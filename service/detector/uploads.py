"""Read an uploaded image from a request, then decode it and detect within the request's bounds."""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from dataclasses import field

from flask import current_app
from flask import g
from flask import request
from PIL import Image
from werkzeug.exceptions import RequestEntityTooLarge

from . import metrics
from .config import Config
from .errors import ApiError
from .imaging import MB
from .imaging import ImageError
from .imaging import check_cost
from .imaging import check_drawable
from .imaging import decode_cost
from .imaging import decode_image
from .imaging import open_image
from .imaging import reduce_factor
from .limits import DeadlineExceeded
from .limits import Gate
from .limits import MemoryBudget
from .limits import Runner

FIELD = "file"
STAGES = ("preprocess", "inference", "postprocess")  # Detector.last_timing's, in that order


@dataclass
class Result:
    """One request's image (decoded, upright) and what the model found in it."""

    image: Image.Image
    size: tuple[int, int]  # original (oriented) size; image may be smaller with draft
    detections: list
    timing_ms: dict  # ms by stage: upload (the request up to the image bytes), decode, wait
    # (for the inference lock), STAGES (see _detect)


@dataclass
class Bounds:
    """What bounds this process's detections: admission, decode memory, deadline runner."""

    gate: Gate
    budget: MemoryBudget
    runner: Runner
    deadline_s: float
    infer_lock: threading.Lock = field(default_factory=threading.Lock)  # one inference at a time

    @classmethod
    def for_config(cls, config: Config, workers: int, threads: int) -> Bounds:
        """Build the bounds of one process (one gunicorn worker) from its settings."""
        return cls(
            gate=Gate.for_process(config.max_inflight, workers),
            budget=MemoryBudget(config.decode_memory_mb * MB),
            runner=Runner(threads),
            deadline_s=config.request_deadline_s,
        )


def read_upload(field: str = FIELD) -> bytes:
    """Return the uploaded bytes: multipart field `field` (`file`), or a raw image/* body.

    :raise ApiError 400: no such field (naming the fields that were sent) or an empty file
    :raise RequestEntityTooLarge: a chunked raw body longer than the upload limit (413)
    """
    if request.mimetype.startswith("image/") or request.mimetype == "application/octet-stream":
        data = request.get_data(cache=False)
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        if request.content_length is None and limit and len(data) >= limit:
            # a chunked body is cut at the limit: 413, not an error about its first bytes
            raise RequestEntityTooLarge()
    else:
        upload = request.files.get(field)
        if upload is None:
            sent = sorted(set(request.files) | set(request.form))
            hint = f"; got {', '.join(sent)}" if sent else ""
            raise ApiError(400, f"missing file: send the image as multipart field '{field}'{hint}")
        data = upload.read()
    if not data:
        raise ApiError(400, "the uploaded file is empty; choose an image file")
    return data


def detect_upload(*, draft: bool = False, field: str = FIELD) -> Result:
    """Decode the request's image, apply the page's orientation and run the detector.

    :param draft: decode a big image reduced to what the network needs (boxes still come back
        in original pixels); off when the image is drawn on and returned.
    :param field: the multipart field holding the image (`file`; DeepStack clients: `image`)
    :raise ApiError: 400 no or empty file, 415 not an image, 422 too many pixels, too costly
        to decode or (drawn) too long a side for a JPEG, 503 busy or past the request deadline
    """
    app = current_app
    config = app.config["DETECTOR"]
    bounds: Bounds = app.extensions["bounds"]
    started = g.get("started") or time.perf_counter()  # the request's start (app.py)
    data = read_upload(field)
    upload_s = time.perf_counter() - started  # routing, reading and parsing the body
    metrics.STAGES.labels("upload").observe(upload_s)
    detector = app.extensions["detector"].get()
    orientation = request.form.get("orientation")
    result = bounds.runner.run(
        bounds.gate, bounds.deadline_s, _detect, bounds, config, detector, data, draft, orientation
    )
    result.timing_ms = {"upload": round(upload_s * 1000, 1), **result.timing_ms}
    g.timing_ms = result.timing_ms  # app.py sends them as the Server-Timing header
    return result


def _hold(budget: MemoryBudget, image: Image.Image, reserved: int) -> None:
    """Give back what decoding took beyond the image, and the image's bytes once it is freed.

    The drawn reply (/) keeps the full-size image while it draws and encodes it, after the
    detection has left the admission gate: a second upload decoded meanwhile took one worker
    to +548 MB (three clients on jpeg-progressive, 50 MP). Pillow stores RGB in 4 bytes a pixel.
    """
    held = min(reserved, 4 * image.width * image.height)
    budget.release(reserved - held)
    weakref.finalize(image, budget.release, held)


def _detect(deadline, bounds, config, detector, data, draft, orientation) -> Result:
    """Decode within the worker's memory budget, then detect (runs on a Runner thread)."""
    started = time.perf_counter()
    target = detector.input_size
    try:
        opened = open_image(data, max_pixels=config.max_pixels)
        if not draft:  # the image comes back drawn, as a JPEG
            check_drawable(opened)
        cost = decode_cost(opened, target if draft else None, orientation=2)
        check_cost(opened, decode_cost(opened, target if draft else None), bounds.budget.capacity)
        bounds.budget.reserve(cost, deadline)
        try:
            decoded = decode_image(
                data,
                max_pixels=config.max_pixels,
                target=target if draft else None,
                orientation=orientation,
                budget=bounds.budget.capacity,
                opened=opened,
            )
        except BaseException:
            bounds.budget.release(cost)
            raise
        _hold(bounds.budget, decoded.image, cost)
    except ImageError as exc:
        raise ApiError(exc.status, str(exc)) from exc
    image = decoded.image
    factor = reduce_factor(image.size, target)
    if factor > 1:  # detect on what the letterbox needs; the full image is kept for drawing
        image = image.reduce(factor)
    # Inference is CPU-bound and uses the worker's cores: a second one waits instead of halving
    # the speed of both. Past the deadline the client has had its 503: give up.
    reduced_at = time.perf_counter()
    left = deadline - time.monotonic()
    if left <= 0 or not bounds.infer_lock.acquire(timeout=left):
        raise DeadlineExceeded()
    locked_at = time.perf_counter()
    try:
        detections = detector.detect(image, original_size=decoded.size)
        stages = dict(detector.last_timing)  # this call's: every detect() here holds the lock
    finally:
        bounds.infer_lock.release()
    done = time.perf_counter()
    metrics.INFERENCE.labels(detector.name).observe(done - locked_at)  # the lock wait apart
    for det in detections:
        metrics.DETECTIONS.labels(det.label).inc()
    timing = {"decode": reduced_at - started, "wait": locked_at - reduced_at}
    for stage in STAGES:
        timing[stage] = stages.get(stage, 0.0) / 1000
    for stage, seconds in timing.items():
        metrics.STAGES.labels(stage).observe(seconds)
    timing_ms = {stage: round(seconds * 1000, 1) for stage, seconds in timing.items()}
    return Result(
        image=decoded.image, size=decoded.size, detections=detections, timing_ms=timing_ms
    )
