"""The upload page and the original site's contract: `POST /` and `GET /status_check`."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlsplit

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import render_template
from flask import request

from .drawing import draw_detections
from .drawing import encode_jpeg
from .options import apply_options
from .options import request_options
from .uploads import detect_upload

bp = Blueprint("web", __name__)

# The original back end's reply, byte for byte: these keys in this order, ", " and ": " separators
# and a space after "base64,".
RESULT_NAME = "input.jpg"
DATA_URL_PREFIX = "data:image/jpeg;base64, "
_BASE64_CHUNK = 3 << 16  # a multiple of 3: the chunks' base64 joins into the whole's


@bp.get("/")
def index():
    """Serve the upload page."""
    config = current_app.config["DETECTOR"]
    response = Response(render_template("index.html", backend_url=config.backend_url))
    connect = "'self'"
    if config.backend_url:
        parts = urlsplit(config.backend_url)
        if parts.scheme and parts.netloc:
            connect += f" {parts.scheme}://{parts.netloc}"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        f"connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    return response


@bp.post("/")
def detect_and_draw():
    """Return the upload with boxes drawn, as `{"name": "input.jpg", "image": "data:..."}`.

    With `?detections=1` the reply also carries `model`, `threshold`, `detections` and
    `timing_ms` (the page asks for them; the default reply stays exactly the original's). The
    options of /api/v1/detect (`threshold`, `classes`, `max_detections`) pick the boxes drawn.
    """
    detector = current_app.extensions["detector"].get()
    options = request_options(detector)
    result = detect_upload()
    detections = apply_options(result.detections, options)
    jpeg = encode_jpeg(draw_detections(result.image, detections, in_place=True))
    extra = {}
    if request.args.get("detections") in ("1", "true", "yes"):
        extra["model"] = detector.name
        extra["width"], extra["height"] = result.image.size
        extra["threshold"] = options.threshold
        extra["detections"] = [d.to_dict() for d in detections]
        extra["timing_ms"] = result.timing_ms
    return _json_with_image(jpeg, extra)


def _json_with_image(jpeg: bytes, extra: dict) -> Response:
    """Stream `{"name": ..., "image": "data:...", **extra}` as json.dumps writes it.

    The base64 text is made 192 KiB at a time while it is sent: for a 50 MP photo, building it
    whole (bytes, str, JSON, response body) took ~250 MB of one worker's memory.
    """
    head = json.dumps({"name": RESULT_NAME, "image": DATA_URL_PREFIX})[:-2].encode()
    tail = ('"' + (", " + json.dumps(extra)[1:] if extra else "}")).encode()

    def chunks():
        yield head
        view = memoryview(jpeg)
        for at in range(0, len(view), _BASE64_CHUNK):
            yield base64.b64encode(view[at : at + _BASE64_CHUNK])
        yield tail

    response = Response(chunks(), mimetype="application/json")
    response.content_length = len(head) + 4 * -(-len(jpeg) // 3) + len(tail)
    return response


@bp.get("/status_check")
def status_check():
    """Answer the page's liveness poll exactly as the original did."""
    return Response("GET request received", mimetype="text/plain")
