"""The watchdog in a real `detector serve`: a detection past its bound recycles the worker."""

from __future__ import annotations

import time

import httpx
from svc_helpers import jpeg_bytes
from svc_helpers import require_weights
from svc_helpers import sample_image
from svc_live import LiveServer


def _new_worker(live: LiveServer, old: int, timeout: float = 90) -> int:
    """Wait until the master has replaced worker `old` and the replacement serves /readyz."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = live.worker_pids()
        if pids and old not in pids:
            try:
                if httpx.get(live.url + "/readyz", timeout=10).status_code == 200:
                    return pids[0]
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"worker {old} was not replaced by a serving one within {timeout} s")


def test_a_detection_past_the_bound_recycles_the_worker_and_service_goes_on(tmp_path):
    """detection_limit_s below what a real detection takes: the watchdog fires on real work.

    The request in flight still gets its answer (graceful exit), the worker exits, gunicorn
    forks a replacement that serves, the log says why, and the metric counts it.
    """
    require_weights()
    photo = jpeg_bytes(sample_image("coffee"))
    log = tmp_path / "serve.log"
    env = {"DETECTOR_DETECTION_LIMIT_S": "0.005", "DETECTOR_GRACEFUL_TIMEOUT_S": "10"}
    with LiveServer(workers=1, threads=3, env=env, log_path=log) as live:
        (first,) = live.worker_pids()
        with httpx.Client(timeout=60) as client:
            answer = client.post(live.url + "/api/v1/detect", files={"file": ("a.jpg", photo)})
            assert answer.status_code == 200, answer.text
            assert any(d["label"] == "cup" for d in answer.json()["detections"])
            second = _new_worker(live, first)
            assert second != first
            assert client.get(live.url + "/status_check").status_code == 200
            metrics = client.get(live.url + "/metrics").text
        recycled = [
            line for line in metrics.splitlines() if line.startswith("detector_watchdog_recycles")
        ]
        assert recycled and float(recycled[0].split()[-1]) >= 1, metrics
    text = log.read_text()
    assert f"past detection_limit_s=0.005 s; worker {first} stops taking requests" in text
    assert "[CRITICAL] watchdog: a detection has run" in text  # gunicorn's error log
