"""The OpenAPI 3.1 document of the service's HTTP endpoints, served at /openapi.json."""

from __future__ import annotations

import json
from pathlib import Path

from flask import Flask

from . import __version__
from .deepstack import DEFAULT_MIN_CONFIDENCE
from .options import MAX_DETECTIONS_LIMIT

OPENAPI_VERSION = "3.1.0"
COMPONENTS = Path(__file__).resolve().parent / "data" / "openapi-components.json"
_REF = "#/components/schemas/"
DETECTION_ERRORS = {
    "400": "Missing, empty or undecodable file, or a bad option (the message names the field).",
    "401": "API keys are on and the request has no valid key.",
    "413": "The upload is larger than max_upload_bytes.",
    "415": "The file is not an image.",
    "422": "The image has too many pixels or is too costly to decode.",
    "503": "Busy (admission full, decode memory taken) or past the request deadline.",
}
_SECURITY = [{}, {"bearer": []}, {"apiKeyHeader": []}]  # keys are optional (off by default)


_TIMING = {"Server-Timing": {"$ref": "#/components/headers/ServerTiming"}}


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _text(media: str, description: str) -> dict:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


def _errors(statuses: dict, schema: str = "Error") -> dict:
    """Return the error responses of a detection endpoint (503 with Retry-After)."""
    responses = {}
    for status, text in statuses.items():
        headers = None
        if status == "503":
            headers = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        elif status == "401":
            headers = {"WWW-Authenticate": {"$ref": "#/components/headers/WWWAuthenticate"}}
        responses[status] = _json(_ref(schema), text, headers)
    return responses


def _option_fields(labels: list[str] | None) -> dict:
    """Return the per-request option fields (same names in the query and in the form)."""
    known = ", ".join(labels) if labels else "the configured model's class names"
    return {
        "threshold": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "Score threshold. A value below the server's configured threshold "
            "(the floor) is raised to it; the reply's `threshold` is the one applied.",
        },
        "classes": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Keep only these labels (comma-separated and/or repeated; case "
            f"does not matter). Unknown labels are a 400. Labels: {known}.",
        },
        "max_detections": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_DETECTIONS_LIMIT,
            "description": "Keep at most this many detections, highest score first.",
        },
    }


def _as_form(fields: dict) -> dict:
    """Return the fields as multipart parts: text, each holding its value as the query would."""
    parts = {}
    for name, schema in fields.items():
        if schema.get("type") in ("number", "integer"):
            kind = "a whole number" if schema["type"] == "integer" else "a number"
            bounds = f"{schema.get('minimum', 0)}..{schema.get('maximum', 1)}"
            description = f"Text holding {kind} in {bounds}. {schema.get('description', '')}"
            parts[name] = {"type": "string", "description": description.strip()}
        else:
            parts[name] = schema
    return parts


def _query(fields: dict) -> list[dict]:
    return [
        {"name": name, "in": "query", "required": False, "schema": schema, "explode": True}
        for name, schema in fields.items()
    ]


def _upload_body(file_field: str, fields: dict, raw: bool, extra: dict | None = None) -> dict:
    """Return a multipart request body with the image field and the option fields."""
    properties = {
        file_field: {"type": "string", "contentMediaType": "application/octet-stream"},
        **(extra or {}),
        **_as_form(fields),
    }
    content = {
        "multipart/form-data": {
            "schema": {"type": "object", "required": [file_field], "properties": properties}
        }
    }
    if raw:  # the bytes of the image as the whole body
        content.update({"image/*": {}, "application/octet-stream": {}})  # 3.1: any bytes
    return {"required": True, "content": content}


def _paths(labels: list[str] | None) -> dict:
    """Return every path of the service with its operations."""
    options = _option_fields(labels)
    orientation = {
        "orientation": {
            "type": "string",
            "description": "EXIF orientation 1..8 the page read, or `undefined`.",
        }
    }
    seed_query = [
        {
            "name": "detections",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": ["1", "true", "yes", "0", "false", "no"]},
            "description": "`1` adds model, size, threshold, detections and timing to the reply.",
        },
        *_query(options),
    ]
    return {
        "/": {
            "get": {
                "operationId": "page",
                "summary": "The upload page.",
                "responses": {"200": _text("text/html", "The page.")},
            },
            "post": {
                "operationId": "detectAndDraw",
                "summary": "The original site's contract: the upload with boxes drawn.",
                "security": _SECURITY,
                "parameters": seed_query,
                "requestBody": _upload_body("file", options, raw=False, extra=orientation),
                "responses": {
                    "200": _json(_ref("DrawnResult"), "The image with boxes drawn.", _TIMING),
                    **_errors(DETECTION_ERRORS),
                },
            },
        },
        "/status_check": {
            "get": {
                "operationId": "statusCheck",
                "summary": "The page's liveness poll, as the original answered it.",
                "responses": {"200": _text("text/plain", "`GET request received`.")},
            }
        },
        "/api/v1/detect": {
            "post": {
                "operationId": "detect",
                "summary": "Detect objects: multipart field `file`, or the image as the body.",
                "description": "Options go in the query or the form; a bad one is a 400 naming "
                "the field, checked before inference.",
                "security": _SECURITY,
                "parameters": _query(options),
                "requestBody": _upload_body("file", options, raw=True),
                "responses": {
                    "200": _json(_ref("DetectResult"), "What the model found.", _TIMING),
                    **_errors(DETECTION_ERRORS),
                },
            }
        },
        "/v1/vision/detection": {
            "post": {
                "operationId": "deepstackDetection",
                "summary": "DeepStack / CodeProject.AI compatible detection.",
                "security": _SECURITY,
                "requestBody": _upload_body(
                    "image",
                    {
                        "min_confidence": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 1,
                            "description": f"Default {DEFAULT_MIN_CONFIDENCE:.2f}; "
                            "never below the server's floor.",
                        },
                        "classes": options["classes"],
                        "max_detections": options["max_detections"],
                        "api_key": {"type": "string", "description": "An API key."},
                    },
                    raw=False,
                ),
                "responses": {
                    "200": _json(
                        _ref("DeepStackResult"), "Predictions in integer pixels.", _TIMING
                    ),
                    **_errors(DETECTION_ERRORS, "DeepStackError"),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is alive.",
                "responses": {"200": _json(_ref("Health"), "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "The model is loaded and warmed up.",
                "responses": {
                    "200": _json(_ref("Ready"), "Ready."),
                    "503": _json(_ref("NotReady"), "The model is not loaded."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of all workers (nginx allows it by address).",
                "responses": {"200": _text("text/plain", "Prometheus text format.")},
            }
        },
        "/version": {
            "get": {
                "operationId": "version",
                "summary": "Package version, release, host and model.",
                "responses": {"200": _json(_ref("Version"), "Versions.")},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }
        },
    }


def components() -> dict:
    """Return the schemas, headers and security schemes (data/openapi-components.json)."""
    return json.loads(COMPONENTS.read_text(encoding="utf-8"))


def document(app: Flask) -> dict:
    """Return the OpenAPI document of `app`: the documented paths the app has routes for.

    Detection endpoints need an API key only where keys are configured (off by default): each
    operation's security lists "no key" as one of its alternatives.
    """
    holder = app.extensions.get("detector")
    labels = None
    if holder is not None and holder.ready:
        labels = list(holder.get().class_names)
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    paths = {path: item for path, item in _paths(labels).items() if path in routes}
    config = app.config["DETECTOR"]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "detector",
            "version": __version__,
            "description": "YOLOv3 object detection. The server's score threshold (the floor of "
            f"every request's threshold) is {config.threshold:g}; uploads up to "
            f"{config.max_upload_bytes} bytes and {config.max_pixels} pixels. Behind nginx "
            "(production) a client may also get nginx's 429 (rate limit) or 502/503 JSON.",
        },
        "paths": paths,
        "components": components(),
    }
