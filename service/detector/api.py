"""JSON API and operations endpoints: /api/v1/detect, health, metrics, version, /openapi.json."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import jsonify

from . import __version__
from . import metrics
from . import openapi
from .errors import ApiError
from .options import apply_options
from .options import request_options
from .uploads import detect_upload

bp = Blueprint("api", __name__)


@bp.post("/api/v1/detect")
def detect():
    """Return the detections for the uploaded image as JSON.

    Options (query args or form fields, checked before inference): `threshold`, `classes`,
    `max_detections`; see detector.options. The reply's `threshold` is the one applied.
    """
    detector = current_app.extensions["detector"].get()
    options = request_options(detector)
    result = detect_upload(draft=True)
    width, height = result.size
    return jsonify(
        model=detector.name,
        width=width,
        height=height,
        threshold=options.threshold,
        detections=[d.to_dict() for d in apply_options(result.detections, options)],
        timing_ms=result.timing_ms,
    )


@bp.get("/healthz")
def healthz():
    """Say the process is alive (no model needed)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Say whether the model is loaded and warmed up (503 until it is)."""
    holder = current_app.extensions["detector"]
    try:
        detector = holder.get()  # loads on the first call outside gunicorn
    except ApiError as exc:
        response = jsonify(ready=False, error=exc.message)
        response.status_code = 503
        return response
    return jsonify(
        ready=True, model=detector.name, engine=detector.engine, warmup_ms=holder.warmup_ms
    )


@bp.get("/metrics")
def metrics_text():
    """Expose Prometheus metrics of all workers."""
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/version")
def version():
    """Report the package version, release id, host and model."""
    app = current_app
    holder = app.extensions["detector"]
    info = {
        "version": __version__,
        "release": app.config["DETECTOR_RELEASE"],
        "host": app.config["DETECTOR_HOST"],
        "model": app.config["DETECTOR"].model,
    }
    if holder.ready:
        detector = holder.get()
        info.update(
            model=detector.name,
            engine=detector.engine,
            precision=detector.precision,
            engine_reason=detector.engine_reason,
            input_size=detector.input_size,
        )
    return jsonify(info)


@bp.get("/openapi.json")
def openapi_document():
    """Serve the OpenAPI 3.1 document of this server's endpoints."""
    return jsonify(openapi.document(current_app))
