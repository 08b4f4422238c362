"""gunicorn settings for the detector: sizing, timeouts, logging and per-worker model loading.

Used by `detector serve` and usable directly:
`gunicorn -c python:detector.gunicorn_conf 'detector.app:create_app()'`. Values come from the
same config as the app (DETECTOR_CONFIG + DETECTOR_* overrides), so the unit file stays thin.

Sizing: detector.sizing is the one rule (workers, request threads, torch threads); it is
applied here only when the config leaves workers at 0 (`detector serve` by hand: one color, the
host's memory). Under systemd the Ansible role runs the same rule for both colors and renders
the workers into the config and the unit.
Measured on 2 (shared) cores with yolov3-tiny, 4 clients: 2 workers x 1 thread beat 1 worker x
2 threads by 1.5-3x (bench/serving_bench.py): the OpenCV engine runs one forward pass at a time
per process (cv2.dnn.Net is not thread-safe) and post-processing holds the GIL, so inference
parallelism comes from workers; the extra threads keep light requests and 503s from queueing.

Overload fails fast: limits.Gate admits at most max_inflight detections over all workers (1
per worker: sizing.admitted) and answers the rest 503 + Retry-After at once;
`worker_connections` (accepted connections per worker) and `backlog` (the listen queue) are
small, so nothing waits minutes.
The workers share their in-flight counters through an array the master creates before forking
(one slot per worker, zeroed when the worker dies).

Preload: off. torch's OpenMP/intra-op thread pools are not fork-safe (a pool created in the
master hangs or misbehaves in forked children), and copy-on-write would not share the weights
for long anyway (reference counts touch the pages). Each worker imports the app after the fork
and loads the model in `post_worker_init`, before it accepts a request, so /readyz is true on
every worker that serves. Cost: one model load per worker start (tiny ~1 s).

Timeouts: a request's decode + inference has its own deadline (config.request_deadline_s, 503
after it; limits.Runner) since a threaded worker's `timeout` only catches a hung worker loop;
`timeout` (config worker_timeout_s, 120 s) is that watchdog. A detection still running after
detection_limit_s (default 2 x the deadline) makes its worker recycle itself (limits.arm_watchdog:
logged CRITICAL, counted in detector_watchdog_recycles_total); `graceful_timeout` (60 s) lets
in-flight requests finish on reload/stop; `max_requests` (10000 + jitter 1000) recycles workers
slowly so leaks cannot grow unbounded. 503 answers (the gate's "busy", a deadline) do not count
towards it (post_request): they hold no memory, and counted they made an overloaded worker
recycle every few seconds (measured 2026-12-02, 1 worker x 2 threads, 4 clients, 1 admitted:
~80 answers/s, mostly 503, a restart every 10-14 s; a worker boot takes 0.6-0.7 s of CPU and
1.6-2.3 s before it serves again, torch-free, on the loaded 2-core machine). One source:
these come from the config, which production renders from the Ansible defaults (a test checks
both agree), so the unit passes no flags.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from detector import config as _config
from detector import limits
from detector import sizing
from detector.machine import cpu_count
from detector.machine import memory_total_mb

ALLOW_PUBLIC_ENV = "DETECTOR_ALLOW_PUBLIC_BIND"
_CREATED_METRICS_DIR = "_DETECTOR_CREATED_METRICS_DIR"


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
_sizing = sizing.size(
    cpu_count(),
    memory_total_mb(),
    _settings.model,
    workers=_settings.workers,
    threads=_settings.threads,
    worker_threads=_settings.worker_threads,
    decode_memory_mb=_settings.decode_memory_mb,
    colors=1,  # run by hand; the Ansible role sizes both colors and sets workers
)
_counts = None  # the workers' shared in-flight counters (created in the master, on_starting)
_free_slots: list[int] = []

wsgi_app = "detector.app:create_app()"
bind = [_settings.bind]
workers = _sizing.workers
threads = _sizing.threads
worker_class = "gthread"
worker_connections = 2 * _sizing.threads  # accepted per worker; the rest wait in the backlog
backlog = 64  # the listen queue; beyond it nginx gets EAGAIN at once and answers 502/503
preload_app = False
timeout = _settings.worker_timeout_s
graceful_timeout = _settings.graceful_timeout_s
keepalive = 5
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter
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
    global _counts
    # The app sizes torch threads from the worker count; workers inherit this environment.
    os.environ["DETECTOR_WORKERS"] = str(server.cfg.workers)
    os.environ["DETECTOR_WORKER_THREADS"] = str(server.cfg.threads)
    _counts = limits.shared_counts()
    _free_slots[:] = range(limits.MAX_WORKER_SLOTS)
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


def pre_fork(server, worker) -> None:
    """Give the new worker a free slot in the shared in-flight counters (in the master)."""
    worker.detector_slot = _free_slots.pop(0)
    _counts[worker.detector_slot] = 0


def post_fork(server, worker) -> None:
    """Make the worker count its detections in its slot against the service's capacity."""
    capacity = _settings.max_inflight or sizing.admitted(server.cfg.workers)
    limits.share(_counts, worker.detector_slot, capacity)


def post_worker_init(worker) -> None:
    """Load and warm up the model before this worker accepts requests; exit if that fails."""
    holder = worker.wsgi.extensions["detector"]
    try:
        holder.get()
    except Exception as exc:
        worker.log.error("worker %s cannot load the model: %s", worker.pid, exc)
        raise SystemExit(3) from exc  # gunicorn's WORKER_BOOT_ERROR: the arbiter stops
    worker.log.info("worker %s ready (warm-up %.0f ms)", worker.pid, holder.warmup_ms)
    limit = _settings.detection_limit_s or 2 * _settings.request_deadline_s
    limits.arm_watchdog(limit, worker.cfg.graceful_timeout, worker.log)


def post_request(worker, req, environ, resp) -> None:
    """Leave a 503 answer out of the worker's count towards max_requests.

    gunicorn counts a request (`worker.nr`, checked against max_requests) before the app runs;
    this takes a 503 back off. The one 503 that reaches the bound still recycles the worker.
    """
    if resp is not None and resp.status_code == 503 and worker.nr > 0:
        worker.nr -= 1


def child_exit(server, worker) -> None:
    """Drop the dead worker's live metrics and free its in-flight slot."""
    from detector.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)
    slot = getattr(worker, "detector_slot", None)
    if slot is not None:
        _counts[slot] = 0
        _free_slots.append(slot)


def on_exit(server) -> None:
    """Remove a metrics directory this server created."""
    directory = os.environ.get(_CREATED_METRICS_DIR)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
