"""The Flask application factory: config, blueprints, errors, CORS, metrics and headers."""

from __future__ import annotations

import io
import logging
import re
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from flask import Flask
from flask import Request
from flask import g
from flask import request

from . import __version__
from . import auth
from . import config as config_module
from . import cors
from . import errors
from . import metrics
from .runtime import ModelHolder
from .runtime import worker_count
from .sizing import DETECTIONS_PER_WORKER
from .uploads import Bounds

log = logging.getLogger(__name__)

RELEASES_DIR = "releases"  # /opt/detector/releases/<id>/ (see DESIGN.md)
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class InMemoryRequest(Request):
    """Keep uploaded files in memory (bounded by MAX_CONTENT_LENGTH): uploads never touch disk."""

    def _get_file_stream(
        self, total_content_length, content_type, filename=None, content_length=None
    ):
        return io.BytesIO()


def create_app(config: config_module.Config | Mapping | None = None) -> Flask:
    """Build the app from a Config, a mapping of settings, or DETECTOR_CONFIG + environment.

    The model is loaded once per process on first use; `detector serve` loads it in each
    gunicorn worker before the worker takes requests (see gunicorn_conf.post_worker_init).
    """
    if config is None:
        config = config_module.load()
    elif isinstance(config, Mapping):
        config = config_module.from_mapping(dict(config))
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.update(
        DETECTOR=config,
        DETECTOR_RELEASE=find_release(config),
        DETECTOR_HOST=socket.gethostname(),
        MAX_CONTENT_LENGTH=config.max_upload_bytes,
    )
    app.extensions["detector"] = ModelHolder(config)
    threads = config.worker_threads or DETECTIONS_PER_WORKER + 1
    app.extensions["bounds"] = Bounds.for_config(config, worker_count(config), threads)
    errors.register(app)
    _register_request_hooks(app)
    cors.register(app, config.cors_origins)
    auth.register(app, config)  # API keys on the detection endpoints, when configured

    from . import api
    from . import deepstack
    from . import web

    app.register_blueprint(web.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(deepstack.bp)
    return app


def find_release(config: config_module.Config) -> str:
    """Return config.release, else the <id> of the releases/<id>/ we run from, else dev-<ver>."""
    if config.release:
        return config.release
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for path in (start, *start.parents):
            if path.parent.name == RELEASES_DIR:
                return path.name
    return f"dev-{__version__}"


def _register_request_hooks(app: Flask) -> None:
    """Tag each request with an id, time it, and add the release, host and timing headers."""
    release = app.config["DETECTOR_RELEASE"]
    host = app.config["DETECTOR_HOST"]

    @app.before_request
    def _start():
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers["X-Detector-Release"] = release
        response.headers["X-Detector-Host"] = host
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        started = g.get("started")
        if started is not None:
            seconds = time.perf_counter() - started
            rule = request.url_rule.rule if request.url_rule else "unmatched"
            metrics.observe_request(rule, request.method, response.status_code, seconds)
            stages = g.get("timing_ms")
            if stages is not None:
                response.headers["Server-Timing"] = server_timing(stages, seconds * 1000)
        return response


def server_timing(stages: Mapping[str, float], total_ms: float) -> str:
    """Return a Server-Timing header value: each stage's ms, then the app's total.

    E.g. `upload;dur=0.4, decode;dur=3.6, ..., total;dur=21.3` (W3C Server Timing); browsers'
    developer tools and load tests read it without parsing the body.
    """
    parts = [f"{name};dur={ms:.1f}" for name, ms in stages.items()]
    parts.append(f"total;dur={total_ms:.1f}")
    return ", ".join(parts)
