"""max_requests in a real `detector serve`: 503 answers do not bring a worker's recycling closer."""

from __future__ import annotations

import time

import httpx
import pytest
from svc_helpers import jpeg_bytes
from svc_helpers import require_weights
from svc_helpers import sample_image
from svc_live import LiveServer

pytestmark = pytest.mark.slow


def test_503_answers_do_not_count_towards_max_requests_but_other_requests_do(tmp_path):
    """A worker that answers many 503s keeps serving; max_requests answered requests recycle it.

    A deadline far below a detection's duration makes every detection a 503 (past its deadline,
    or busy while an earlier one still runs); the watchdog's bound stays high.
    """
    require_weights()
    env = {
        "DETECTOR_MAX_REQUESTS": "4",
        "DETECTOR_MAX_REQUESTS_JITTER": "0",
        "DETECTOR_REQUEST_DEADLINE_S": "0.001",
        "DETECTOR_DETECTION_LIMIT_S": "600",
    }
    image = jpeg_bytes(sample_image("coffee"))
    with LiveServer(workers=1, threads=2, env=env, log_path=tmp_path / "serve.log") as live:
        (worker,) = live.worker_pids()
        with live.client() as client:
            for _ in range(12):  # three times max_requests
                response = client.post(
                    live.url + "/api/v1/detect", files={"file": ("coffee.jpg", image)}
                )
                assert response.status_code == 503, response.text
        assert live.worker_pids() == [worker]
        for _ in range(4):  # max_requests answered requests (fresh connections: no keep-alive)
            assert httpx.get(live.url + "/healthz", timeout=30).status_code == 200
        deadline = time.monotonic() + 90
        while worker in live.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = (tmp_path / "serve.log").read_text()
        assert worker not in live.worker_pids(), log[-2000:]
        assert "Autorestarting worker after current request" in log
