"""gunicorn settings for the detector: sizing, timeouts, logging and per-worker model loading.

Used by `detector serve` and usable directly:
`gunicorn -c python:detector.gunicorn_conf 'detector.app:create_app()'`. Values come from the
same config as the app (DETECTOR_CONFIG + DETECTOR_* overrides), so the unit file stays thin.

Sizing rule (config.workers / config.worker_threads = 0 means "apply the rule"):
- workers = min(CPUs, (available memory - 512 MB) / memory per worker), at least 1. A worker
  holds one copy of the model: measured peak RSS with the torch engine about 300 MB for
  yolov3-tiny and 550 MB for yolov3-416 (bench/model_bench.py), budgeted 400 and 700 MB.
  The OpenCV engine needs far more (about 1.9 GB for yolov3): `auto` in each worker takes it
  only when workers x its footprint fit the machine (model/engines.py), so this budget holds.
  CPU-bound inference gains nothing from more processes than cores.
- threads per worker = 2 (gthread): one request runs inference while another is read,
  decoded or answered (health checks, /status_check, /metrics never wait behind a model call).
- torch intra-op threads per worker = CPUs / workers (runtime.torch_threads), so workers
  never oversubscribe the cores.
Measured on 2 (shared) cores with yolov3-tiny, 4 clients: 2 workers x 1 thread beat 1 worker x
2 threads by 1.5-3x (bench/serving_bench.py): the OpenCV engine runs one forward pass at a time
per process (cv2.dnn.Net is not thread-safe) and post-processing holds the GIL, so inference
parallelism comes from workers; the second thread only keeps light requests from queueing.

Preload: off. torch's OpenMP/intra-op thread pools are not fork-safe (a pool created in the
master hangs or misbehaves in forked children), and copy-on-write would not share the weights
for long anyway (reference counts touch the pages). Each worker imports the app after the fork
and loads the model in `post_worker_init`, before it accepts a request, so /readyz is true on
every worker that serves. Cost: one model load per worker start (tiny ~1 s).

Timeouts: `timeout` 60 s is above the page's 25 s client timeout and a cold yolov3 inference;
`graceful_timeout` 30 s lets in-flight requests finish on reload/stop; `max_requests` with
jitter recycles workers slowly so leaks cannot grow without bound.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from detector import config as _config
from detector.machine import cpu_count
from detector.machine import memory_available_mb

RESERVE_MB = 512
WORKER_MEMORY_MB = {"yolov3-tiny": 400, "yolov3": 700}
DEFAULT_WORKER_MEMORY_MB = 1000
DEFAULT_THREADS = 2
ALLOW_PUBLIC_ENV = "DETECTOR_ALLOW_PUBLIC_BIND"
_CREATED_METRICS_DIR = "_DETECTOR_CREATED_METRICS_DIR"


def size_workers(
    cores: int, memory_mb: int, model: str, workers: int = 0, threads: int = 0
) -> tuple[int, int]:
    """Apply the sizing rule of this module's docstring; non-zero arguments win."""
    if not workers:
        per_worker = WORKER_MEMORY_MB.get(model, DEFAULT_WORKER_MEMORY_MB)
        by_memory = (memory_mb - RESERVE_MB) // per_worker
        workers = max(1, min(cores, by_memory))
    return workers, threads or DEFAULT_THREADS


def check_bind(bind: str, allow_public: bool = False) -> None:
    """Refuse an address other than a unix socket or loopback unless allow_public is set."""
    if allow_public or bind.startswith("unix:"):
        return
    host = bind.rsplit(":", 1)[0] if ":" in bind else bind
    host = host.strip("[]")
    if host == "localhost" or host == "::1" or host.startswith("127."):
        return
    raise ValueError(
        f"refusing to listen on {bind}: gunicorn serves only a unix socket or loopback behind "
        "nginx; pass --allow-public to override"
    )


_settings = _config.load()
_workers, _threads = size_workers(
    cpu_count(),
    memory_available_mb(),
    _settings.model,
    _settings.workers,
    _settings.worker_threads,
)

wsgi_app = "detector.app:create_app()"
bind = [_settings.bind]
workers = _workers
threads = _threads
worker_class = "gthread"
preload_app = False
timeout = 60
graceful_timeout = 30
keepalive = 5
max_requests = 2000
max_requests_jitter = 200
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = "-"
errorlog = "-"
loglevel = "info"
access_log_format = (
    '%(h)s "%(r)s" %(s)s %(B)sB %(M)sms rid=%({x-request-id}o)s '
    'fwd="%({x-forwarded-for}i)s" ua="%(a)s"'
)
proc_name = "detector"
# No control socket: blue/green instances and tests would share $HOME/.gunicorn/gunicorn.ctl.
control_socket_disable = True


def on_starting(server) -> None:
    """Check the bind, export the worker count and prepare the shared metrics directory."""
    for address in server.cfg.bind:
        check_bind(address, os.environ.get(ALLOW_PUBLIC_ENV) == "1")
    # The app sizes torch threads from the worker count; workers inherit this environment.
    os.environ["DETECTOR_WORKERS"] = str(server.cfg.workers)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            stale.unlink()
    else:
        directory = tempfile.mkdtemp(prefix="detector-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        os.environ[_CREATED_METRICS_DIR] = directory


def when_ready(server) -> None:
    """Log where the service listens and how it is sized."""
    server.log.info(
        "detector listening on %s: %d workers x %d threads (each loads the model first)",
        ", ".join(server.cfg.bind),
        server.cfg.workers,
        server.cfg.threads,
    )


def post_worker_init(worker) -> None:
    """Load and warm up the model before this worker accepts requests; exit if that fails."""
    holder = worker.wsgi.extensions["detector"]
    try:
        holder.get()
    except Exception as exc:
        worker.log.error("worker %s cannot load the model: %s", worker.pid, exc)
        raise SystemExit(3) from exc  # gunicorn's WORKER_BOOT_ERROR: the arbiter stops
    worker.log.info("worker %s ready (warm-up %.0f ms)", worker.pid, holder.warmup_ms)


def child_exit(server, worker) -> None:
    """Drop the dead worker's live metrics."""
    from detector.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)


def on_exit(server) -> None:
    """Remove a metrics directory this server created."""
    directory = os.environ.get(_CREATED_METRICS_DIR)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
