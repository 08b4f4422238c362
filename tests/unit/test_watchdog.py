"""The detection watchdog: a job that never returns recycles its worker (real threads, signals)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from detector.errors import ApiError
from detector.limits import WATCHDOG_EXIT_CODE
from detector.limits import Gate
from detector.limits import Runner
from detector.limits import Watchdog


def _blocking(release: threading.Event):
    """A detection job that never returns until the test releases it."""

    def job(deadline):
        release.wait(30)
        return "late"

    return job


def test_a_job_blocked_past_the_bound_fires_the_watchdog_once():
    fired: list[float] = []
    overrun = threading.Event()
    dog = Watchdog(0.3, lambda seconds: (fired.append(seconds), overrun.set()))
    runner = Runner(2, watchdog=dog)
    gate = Gate(2)
    release = threading.Event()
    try:
        with pytest.raises(ApiError) as info:
            runner.run(gate, 0.1, _blocking(release))  # the request answers at its deadline
        assert info.value.status == 503
        assert gate.inflight == 1  # the stuck job still holds its slot
        assert overrun.wait(5), "the watchdog did not fire for a job blocked past 0.3 s"
        assert fired[0] >= 0.3 and dog.fired
        with pytest.raises(ApiError):  # a second stuck job: no second recycle
            runner.run(gate, 0.1, _blocking(release))
        time.sleep(0.5)
        assert len(fired) == 1
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while gate.inflight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate.inflight == 0  # released jobs give their slots back


def test_jobs_within_the_bound_never_fire_it():
    fired: list[float] = []
    dog = Watchdog(0.5, fired.append)
    runner = Runner(2, watchdog=dog)
    gate = Gate(2)
    for _ in range(20):
        assert runner.run(gate, 5, lambda deadline: time.sleep(0.02) or "ok") == "ok"
    time.sleep(0.7)  # longer than the bound, with nothing running
    assert fired == [] and not dog.fired


def test_a_job_that_raises_leaves_the_watchdog_quiet():
    fired: list[float] = []
    dog = Watchdog(0.2, fired.append)
    runner = Runner(1, watchdog=dog)

    def boom(deadline):
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        runner.run(Gate(1), 5, boom)
    time.sleep(0.4)
    assert fired == []


RECYCLED = textwrap.dedent(
    """
    import signal, sys, threading
    from detector import limits

    # gunicorn's worker: SIGTERM = stop accepting, let in-flight requests finish, then exit.
    signal.signal(signal.SIGTERM, lambda *_: print("graceful exit requested", flush=True))
    limits.arm_watchdog(0.3, 0.5)
    try:
        limits.Runner(1).run(limits.Gate(1), 0.2, lambda deadline: threading.Event().wait())
    except Exception as exc:
        print("answered:", exc, flush=True)
    threading.Event().wait(20)  # the stuck detection keeps the process alive ...
    print("not cut off", flush=True)
    """
)


def test_an_armed_worker_asks_for_a_graceful_exit_then_is_cut_off():
    result = subprocess.run(
        [sys.executable, "-c", RECYCLED], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == WATCHDOG_EXIT_CODE, result.stdout + result.stderr
    assert "answered: detection took longer than 0.2 s" in result.stdout
    assert "graceful exit requested" in result.stdout
    assert "not cut off" not in result.stdout  # cut off after the grace, not after 20 s
    assert "watchdog: a detection has run" in result.stderr
    assert "past detection_limit_s=0.3 s" in result.stderr
