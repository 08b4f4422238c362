"""Every error becomes a JSON body `{"error": "..."}` with its status code, never a traceback."""

from __future__ import annotations

import logging

from flask import Flask
from flask import jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import RequestEntityTooLarge

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a view reports to the client with a status code and one sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str):
    """Return the JSON error response every failure path uses."""
    response = jsonify(error=message)
    response.status_code = status
    return response


def register(app: Flask) -> None:
    """Install the error handlers on the app."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge):
        limit = app.config.get("MAX_CONTENT_LENGTH") or 0
        return error_response(
            413, f"upload is larger than the limit of {limit} bytes ({limit / 1e6:.1f} MB)"
        )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        response = error_response(exc.code or 500, _describe(exc))
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal error; the server log has the details")


def _describe(exc: HTTPException) -> str:
    """Return a one-sentence message for a werkzeug HTTP error."""
    if exc.code == 404:
        return "no such page; see /api/v1/detect, /healthz, /readyz, /metrics, /version"
    if exc.code == 405:
        return f"method not allowed; use {', '.join(exc.valid_methods or [])}"
    text = (exc.description or exc.name or "error").strip()
    return text.splitlines()[0]
