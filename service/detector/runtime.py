"""One detector per process: loaded once (lazily or by the gunicorn worker hook) and warmed up."""

from __future__ import annotations

import logging
import threading
import time

from PIL import Image

from . import sizing
from .config import Config
from .errors import ApiError
from .machine import cpu_count

log = logging.getLogger(__name__)

# Loaded detectors of this process, keyed by everything that changes the model. Several apps in
# one process (tests) share them; gunicorn workers each build their own after the fork.
_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()


def worker_count(config: Config) -> int:
    """Return the processes that load the model on this machine: config.workers, else 1.

    Under gunicorn config.workers is never 0 here: gunicorn_conf exports the sized worker count
    as DETECTOR_WORKERS before forking, and each worker reads its config after the fork.
    """
    return config.workers or 1


def torch_threads(config: Config) -> int:
    """Return the intra-op threads per process: config.threads, else the sizing rule's."""
    sized = sizing.size(
        cpu_count(), 0, config.model, workers=worker_count(config), threads=config.threads
    )
    return sized.torch_threads


class ModelHolder:
    """Loads the configured detector on first use, thread-safely, and records the warm-up."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._detector = None
        self.warmup_ms: float | None = None
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        """True once the model is loaded and one warm-up inference has run."""
        return self._detector is not None and self.warmup_ms is not None

    def get(self):
        """Return the loaded detector, loading and warming it up on the first call."""
        if self._detector is None:
            with self._lock:
                if self._detector is None:
                    try:
                        self._load()
                    except Exception as exc:
                        self.error = f"model {self.config.model!r} could not be loaded: {exc}"
                        log.exception("model load failed")
                        raise ApiError(503, self.error) from exc
                    self.error = None
        return self._detector

    def _load(self) -> None:
        from .manifest import load_configured
        from .manifest import resolve_model

        cfg = self.config
        spec = resolve_model(cfg)
        threads = torch_threads(cfg)
        key = (
            str(spec.cfg),
            str(spec.weights),
            str(spec.names),
            spec.name,
            cfg.engine,
            cfg.precision,
            worker_count(cfg),
            cfg.size,
            threads,
            cfg.threshold,
            cfg.nms_threshold,
            cfg.openvino_cache_dir,
        )
        with _CACHE_LOCK:
            detector = _CACHE.get(key)
            if detector is None:
                started = time.perf_counter()
                detector = load_configured(cfg, workers=worker_count(cfg), threads=threads)
                log.info(
                    "loaded %s (%s engine, %s, %d threads) in %.0f ms: %s",
                    spec.name,
                    detector.engine,
                    detector.precision,
                    threads,
                    (time.perf_counter() - started) * 1000,
                    detector.engine_reason,
                )
                _CACHE[key] = detector
        started = time.perf_counter()
        detector.detect(Image.new("RGB", (640, 480), (127, 127, 127)))
        self.warmup_ms = round((time.perf_counter() - started) * 1000, 1)
        self._detector = detector
