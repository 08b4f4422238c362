"""Per-request bounds: admission (busy = 503 now), decode memory, a deadline, and a watchdog."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.sharedctypes import RawArray

from .errors import ApiError
from .sizing import admitted

MAX_WORKER_SLOTS = 256  # in-flight counters shared by the workers of one gunicorn master
WATCHDOG_EXIT_CODE = 70  # a worker that had to be cut off after its graceful exit (EX_SOFTWARE)
log = logging.getLogger(__name__)

# Set in each gunicorn worker by gunicorn_conf.post_fork: the master's shared counters and this
# worker's index in them. Without gunicorn (tests, `flask run`) each process counts alone.
# gunicorn_conf.post_worker_init also arms this worker's watchdog (arm_watchdog).
_shared: dict = {}


class DeadlineExceeded(Exception):
    """Raised by a job that finds its request's deadline passed (Runner answers 503)."""


def share(counts, slot: int, capacity: int) -> None:
    """Make this process count its detections in `counts[slot]` against a host-wide capacity."""
    _shared.update(counts=counts, slot=slot, capacity=capacity)


def shared_counts():
    """Return a zeroed counter array to share between a gunicorn master's workers."""
    return RawArray("i", MAX_WORKER_SLOTS)


class Gate:
    """Admit at most `capacity` detections at once over all workers of one service.

    Each worker only writes its own counter (under a thread lock); the sum over all workers is
    read without a cross-process lock, so two workers racing may admit one extra request. The
    master zeroes a dead worker's counter (gunicorn_conf.child_exit): a killed worker leaks
    nothing.
    """

    def __init__(self, capacity: int, counts=None, slot: int = 0) -> None:
        self.capacity = capacity
        self._counts = counts if counts is not None else [0]
        self._slot = slot
        self._lock = threading.Lock()
        self._seconds = 1.0  # moving average of a detection's duration, for Retry-After

    @classmethod
    def for_process(cls, max_inflight: int, workers: int) -> Gate:
        """Return the gate of this process: shared with the sibling workers under gunicorn."""
        if _shared:
            capacity = max_inflight or _shared["capacity"]
            return cls(capacity, _shared["counts"], _shared["slot"])
        return cls(max_inflight or admitted(workers))

    @property
    def inflight(self) -> int:
        """Detections admitted and not finished, over all workers."""
        return sum(self._counts)

    def retry_after(self) -> int:
        """Seconds after which a slot is likely free: the typical detection time, at least 1."""
        return max(1, math.ceil(self._seconds))

    def enter(self) -> None:
        """Take a slot or raise ApiError 503 with Retry-After right away (no queueing)."""
        with self._lock:
            if self.inflight >= self.capacity:
                wait = self.retry_after()
                raise ApiError(
                    503,
                    f"the detector is busy ({self.capacity} detections in progress); "
                    f"retry in {wait} s",
                    retry_after=wait,
                )
            self._counts[self._slot] += 1

    def leave(self, seconds: float) -> None:
        """Give the slot back and fold the detection's duration into the average."""
        with self._lock:
            self._counts[self._slot] = max(0, self._counts[self._slot] - 1)
            self._seconds = 0.8 * self._seconds + 0.2 * seconds


class MemoryBudget:
    """A weighted semaphore over bytes: concurrent decodes of one worker share `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._cond = threading.Condition()

    def reserve(self, amount: int, deadline: float) -> None:
        """Wait until `amount` bytes fit (at most until `deadline`, monotonic), then take them.

        :raise ApiError 503: the budget stayed taken by other decodes until the deadline
        """
        amount = min(amount, self.capacity)
        with self._cond:
            while self.used + amount > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self.used + amount <= self.capacity:
                        break
                    raise ApiError(
                        503,
                        "the detector is busy decoding other large images; retry shortly",
                        retry_after=1,
                    )
            self.used += amount

    def release(self, amount: int) -> None:
        """Return bytes taken by reserve()."""
        with self._cond:
            self.used = max(0, self.used - min(amount, self.capacity))
            self._cond.notify_all()


class Watchdog:
    """Call on_overrun(seconds) once when a detection has run longer than limit_s.

    A thread cannot be killed, so a detection that never returns keeps its admission slot and its
    memory for good; the only cure is a fresh process. One daemon thread sleeps until the oldest
    running detection's bound and checks again; it fires at most once.
    """

    def __init__(self, limit_s: float, on_overrun) -> None:
        self.limit_s = limit_s
        self.fired = False
        self._on_overrun = on_overrun
        self._running: dict[int, float] = {}  # token -> monotonic start
        self._tokens = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def begin(self) -> int:
        """Record a detection starting now; return its token for end()."""
        with self._cond:
            self._tokens += 1
            self._running[self._tokens] = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="detect-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
            return self._tokens

    def end(self, token: int) -> None:
        """Record that the detection of `token` returned (or raised)."""
        with self._cond:
            self._running.pop(token, None)
            self._cond.notify_all()

    def _watch(self) -> None:
        with self._cond:
            while True:
                if not self._running:
                    self._cond.wait()
                    continue
                oldest = min(self._running.values())
                left = oldest + self.limit_s - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self.fired = True
            overdue = time.monotonic() - oldest
        self._on_overrun(overdue)


def arm_watchdog(limit_s: float, graceful_s: float, logger=log) -> Watchdog:
    """Arm this gunicorn worker's watchdog: an overrun makes the worker recycle itself.

    On an overrun it logs at CRITICAL, counts detector_watchdog_recycles_total, and sends this
    process SIGTERM: gunicorn's graceful exit (the worker stops accepting, its other requests
    finish within graceful_s, the arbiter forks a replacement). The stuck thread would keep the
    interpreter from exiting, so after graceful_s (+1 s) the process ends with os._exit.
    """

    def recycle(seconds: float) -> None:
        from detector.metrics import WATCHDOG_RECYCLES  # after the fork: multiprocess values

        logger.critical(
            "watchdog: a detection has run %.2f s, past detection_limit_s=%g s; worker %d "
            "stops taking requests and exits (others finish within %g s), gunicorn replaces it",
            seconds,
            limit_s,
            os.getpid(),
            graceful_s,
        )
        WATCHDOG_RECYCLES.inc()
        cutoff = threading.Timer(graceful_s + 1.0, os._exit, (WATCHDOG_EXIT_CODE,))
        cutoff.daemon = True
        cutoff.start()
        os.kill(os.getpid(), signal.SIGTERM)

    dog = Watchdog(limit_s, recycle)
    _shared["watchdog"] = dog
    return dog


def _watched(watchdog: Watchdog | None, job, *args):
    """Run job(*args), known to the watchdog while it runs."""
    if watchdog is None:
        return job(*args)
    token = watchdog.begin()
    try:
        return job(*args)
    finally:
        watchdog.end(token)


class Runner:
    """Run detections off the request thread so the request can answer when its deadline passes.

    A detection that overruns keeps running (a thread cannot be killed) and keeps its admission
    slot until it ends, so overruns make the service say "busy" instead of piling up work; one
    that runs past the watchdog's bound makes the worker recycle itself (arm_watchdog).
    """

    def __init__(self, threads: int, watchdog: Watchdog | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="detect")
        self._watchdog = watchdog  # None: this worker's (arm_watchdog), if armed

    def run(self, gate: Gate, deadline_s: float, job, *args):
        """Admit, run job(deadline, *args) and return its result, or raise 503 after deadline_s.

        :raise ApiError 503: no slot free (with Retry-After)
        :raise ApiError 503: the detection took longer than deadline_s
        """
        gate.enter()
        started = time.monotonic()
        deadline = started + deadline_s
        try:
            watchdog = self._watchdog or _shared.get("watchdog")
            future: Future = self._pool.submit(_watched, watchdog, job, deadline, *args)
        except BaseException:
            gate.leave(0.0)
            raise
        future.add_done_callback(lambda _: gate.leave(time.monotonic() - started))
        try:
            return future.result(timeout=deadline_s)
        except (FutureTimeout, DeadlineExceeded):
            raise ApiError(
                503,
                f"detection took longer than {deadline_s:g} s; retry later or with a smaller image",
                retry_after=gate.retry_after(),
            ) from None
