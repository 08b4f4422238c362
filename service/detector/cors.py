"""CORS for the allowlisted origins in config.cors_origins (the original page lived elsewhere)."""

from __future__ import annotations

from flask import Flask
from flask import request

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Content-Type, X-Request-ID, Authorization, X-API-Key"  # keys: auth.py
EXPOSE_HEADERS = "X-Request-ID, X-Detector-Release, X-Detector-Host, Retry-After"


def register(app: Flask, origins: tuple[str, ...]) -> None:
    """Answer cross-origin requests only from `origins` ("*" allows any origin)."""
    allowed = {o.rstrip("/") for o in origins}

    @app.after_request
    def _cors(response):
        origin = request.headers.get("Origin")
        response.vary.add("Origin")
        if not origin or not allowed or ("*" not in allowed and origin not in allowed):
            return response
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        return response
