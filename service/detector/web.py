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
    drawn = draw_detections(result.image, detections, in_place=True)
    encoded = base64.b64encode(encode_jpeg(drawn)).decode("ascii")
    body = {"name": RESULT_NAME, "image": DATA_URL_PREFIX + encoded}
    if request.args.get("detections") in ("1", "true", "yes"):
        body["model"] = detector.name
        body["width"], body["height"] = result.image.size
        body["threshold"] = options.threshold
        body["detections"] = [d.to_dict() for d in detections]
        body["timing_ms"] = result.timing_ms
    return Response(json.dumps(body), mimetype="application/json")


@bp.get("/status_check")
def status_check():
    """Answer the page's liveness poll exactly as the original did."""
    return Response("GET request received", mimetype="text/plain")
