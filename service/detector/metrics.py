"""Prometheus metrics, shared by all gunicorn workers through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import REGISTRY
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client import multiprocess
from prometheus_client import values

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The value class is picked when prometheus_client is imported; if that happened before the
# server set the directory (same process, e.g. the CLI imported it), pick again.
if os.environ.get(MULTIPROC_ENV) and values.ValueClass is values.MutexValue:
    values.ValueClass = values.get_value_class()

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 25.0)

REQUESTS = Counter(
    "detector_http_requests_total",
    "HTTP requests by endpoint, method and status code",
    ["endpoint", "method", "code"],
)
LATENCY = Histogram(
    "detector_http_request_duration_seconds",
    "HTTP request latency by endpoint",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE = Histogram(
    "detector_inference_seconds",
    "Time per image holding the inference lock: letterbox, forward pass, post-processing",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGES = Histogram(
    "detector_stage_seconds",
    "Time of one detection request by stage: upload (receiving and parsing the request), decode, "
    "wait (for the worker's inference lock), preprocess, inference (forward pass), postprocess",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
DETECTIONS = Counter("detector_detections_total", "Objects detected, by label", ["label"])
WATCHDOG_RECYCLES = Counter(
    "detector_watchdog_recycles_total",
    "Workers that recycled themselves because a detection ran past detection_limit_s",
)


def observe_request(endpoint: str, method: str, code: int, seconds: float) -> None:
    """Count one finished request and its latency."""
    REQUESTS.labels(endpoint, method, str(code)).inc()
    LATENCY.labels(endpoint).observe(seconds)


def render() -> tuple[bytes, str]:
    """Return the exposition text of all workers (or of this process) and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Drop the live-only files of a dead worker (gunicorn child_exit hook)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)
