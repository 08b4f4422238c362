"""DeepStack / CodeProject.AI compatible detection: `POST /v1/vision/detection`.

The shape follows the DeepStack server (johnolafenwa/DeepStack, server/response/response.go and
server/middlewares/middlewares.go at 2121de07): multipart `image`, optional `min_confidence`
(default 0.40, server/server.go) and `api_key` form fields; 200
`{"success": true, "predictions": [{"label", "confidence", "x_min", "y_min", "x_max", "y_max"}],
"duration"}` with integer pixel boxes; errors `{"success": false, "error": "..."}` with 400 for
bad input and 401 for a wrong key, as DeepStack answers. Clients checked: deepstack-python 0.9
(PyPI; `deepstack.core.process_image` posts `image`, `api_key`, `min_confidence` and raises on
any status but 200) and Home Assistant's deepstack_object integration 4.6.0
(robmarkcole/HASS-Deepstack-object e59ac294, deepstack-python 0.8, sends min_confidence 0.1 and
filters by its own targets). Every bound of the JSON API applies (detect_upload): upload size,
pixels, decode memory, admission and the deadline.
"""

from __future__ import annotations

import json
import time

from flask import Blueprint
from flask import current_app
from flask import jsonify

from .detection import Detection
from .options import apply_options
from .options import parse_options
from .options import request_values
from .uploads import detect_upload

bp = Blueprint("deepstack", __name__)

FIELD = "image"
THRESHOLD_FIELD = "min_confidence"
DEFAULT_MIN_CONFIDENCE = 0.40  # DeepStack's when the field is absent; never below the floor


def prediction(det: Detection, size: tuple[int, int]) -> dict:
    """Return one detection in DeepStack's shape: integer pixel box clipped to the image."""
    width, height = size
    x1, y1, x2, y2 = (round(float(v)) for v in det.box)
    x1, x2 = (min(max(v, 0), width) for v in (x1, x2))
    y1, y2 = (min(max(v, 0), height) for v in (y1, y2))
    return {
        "label": det.label,
        "confidence": round(float(det.score), 4),
        "x_min": x1,
        "y_min": y1,
        "x_max": max(x1, x2),
        "y_max": max(y1, y2),
    }


@bp.post("/v1/vision/detection")
def detection():
    """Detect objects in the `image` field and answer as DeepStack does."""
    started = time.perf_counter()
    detector = current_app.extensions["detector"].get()
    values = request_values()
    if values.get(THRESHOLD_FIELD) in (None, [""]):  # absent or empty: DeepStack's default
        values[THRESHOLD_FIELD] = [str(DEFAULT_MIN_CONFIDENCE)]
    options = parse_options(
        values,
        floor=float(detector.threshold),
        labels=list(detector.class_names),
        threshold_field=THRESHOLD_FIELD,
    )
    result = detect_upload(draft=True, field=FIELD)
    predictions = [prediction(d, result.size) for d in apply_options(result.detections, options)]
    duration = round((time.perf_counter() - started) * 1000, 1)
    return jsonify(success=True, predictions=predictions, duration=duration)


@bp.after_request
def _deepstack_errors(response):
    """Give this blueprint's errors DeepStack's shape: `{"success": false, "error": ...}`."""
    if response.status_code < 400 or not response.is_json:
        return response
    body = response.get_json(silent=True)
    if isinstance(body, dict) and "error" in body and "success" not in body:
        response.set_data(json.dumps({"success": False, "error": body["error"]}))
    return response
