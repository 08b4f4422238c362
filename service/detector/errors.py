"""Every error becomes a JSON body `{"error": "..."}` with its status code, never a traceback."""

from __future__ import annotations

import logging

from flask import Flask
from flask import jsonify
from flask import request
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import RequestEntityTooLarge

log = logging.getLogger(__name__)


# An oversized body is read and dropped up to this many times the upload limit before the 413
# is sent: a client that writes its whole body before reading (Python requests) then gets the
# JSON answer instead of a connection reset. Larger bodies are not read (a reset answers them).
DRAIN_FACTOR = 4
_CHUNK = 256 * 1024


class ApiError(Exception):
    """An error a view reports to the client with a status code and one sentence."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def error_response(status: int, message: str, retry_after: int | None = None):
    """Return the JSON error response every failure path uses (Retry-After when given)."""
    response = jsonify(error=message)
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def drain_body(limit: int) -> int:
    """Read and drop what is left of the request body, up to `limit` bytes; return the count.

    A body longer than the limit (by its Content-Length) is not read at all, and the
    connection is closed after the answer.
    """
    length = request.content_length
    if length is not None and length > limit:
        return 0
    stream = request.environ.get("wsgi.input")
    read = 0
    try:
        while stream is not None and read < limit:
            chunk = stream.read(min(_CHUNK, limit - read))
            if not chunk:
                break
            read += len(chunk)
    except (OSError, ValueError):  # the client went away: nothing left to answer
        pass
    return read


def register(app: Flask) -> None:
    """Install the error handlers on the app."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message, exc.retry_after)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge):
        limit = app.config.get("MAX_CONTENT_LENGTH") or 0
        length = request.content_length
        drain_body(DRAIN_FACTOR * limit)
        if length is not None and length <= limit:  # werkzeug's form limits, not the body's
            return error_response(
                413,
                f"the form has more than {request.max_form_parts} parts or a text field over "
                f"{request.max_form_memory_size} bytes; send the image as the field 'file' "
                "with short text fields",
            )
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
