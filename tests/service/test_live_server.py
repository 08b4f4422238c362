"""A real `detector serve` (gunicorn, 2 workers x 2 threads): no mix-ups under concurrency."""

from __future__ import annotations

import base64
import io
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from svc_helpers import ROOT
from svc_helpers import jpeg_bytes
from svc_helpers import require_weights
from svc_helpers import sample_image
from svc_live import LiveServer

pytestmark = pytest.mark.slow
ARTIFACTS = ROOT / "test-artifacts"


def distinct_images() -> dict[str, bytes]:
    """Different uploads with different sizes and contents (each its own detections)."""
    images = {}
    for name in ("coffee", "astronaut", "chelsea", "rocket"):
        image = sample_image(name)
        images[name] = jpeg_bytes(image)
        images[name + "-half"] = jpeg_bytes(image.resize((image.width // 2, image.height // 2)))
    dog = Path(ROOT.parent / "shared" / "testdata" / "dog.jpg")
    if dog.is_file():
        images["dog"] = dog.read_bytes()
    return images


@pytest.fixture(scope="module")
def server():
    """One live server for this module, stopped by PID at the end."""
    require_weights()
    ARTIFACTS.mkdir(exist_ok=True)
    # More admitted detections than the default (1 per worker, sizing.admitted): this module
    # checks that concurrent requests never mix results up, not admission (test_bounds_live.py).
    live = LiveServer(
        workers=2,
        threads=2,
        env={"DETECTOR_MAX_INFLIGHT": "16"},
        log_path=ARTIFACTS / "live-server.log",
    )
    live.start()
    yield live
    live.stop()


def detect(url: str, data: bytes) -> dict:
    response = httpx.post(url + "/api/v1/detect", files={"file": ("x.jpg", data)}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_concurrent_requests_get_their_own_results(server):
    images = distinct_images()
    expected = {name: detect(server.url, data) for name, data in images.items()}
    jobs = [name for name in images for _ in range(3)]
    random.Random(7).shuffle(jobs)

    def run(name: str) -> tuple[str, dict, tuple[int, int]]:
        with httpx.Client(timeout=60) as client:
            api = client.post(server.url + "/api/v1/detect", files={"file": ("x", images[name])})
            page = client.post(server.url + "/", files={"file": ("x", images[name])})
        assert api.status_code == 200 and page.status_code == 200
        drawn = base64.b64decode(page.json()["image"].split(", ", 1)[1])
        return name, api.json(), Image.open(io.BytesIO(drawn)).size

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(run, jobs))
    assert len(results) == len(jobs)
    for name, body, drawn_size in results:
        want = expected[name]
        assert (body["width"], body["height"]) == (want["width"], want["height"]), name
        assert body["detections"] == want["detections"], name
        assert drawn_size == (want["width"], want["height"]), name


def test_both_workers_serve_and_metrics_add_up_across_them(server):
    data = jpeg_bytes(sample_image("coffee"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: detect(server.url, data), range(8)))
    assert len(server.worker_pids()) == 2
    text = httpx.get(server.url + "/metrics", timeout=10).text
    match = re.search(
        r'detector_http_requests_total\{code="200",endpoint="/api/v1/detect",method="POST"\} (\S+)',
        text,
    )
    assert match and float(match.group(1)) >= 8
    assert "detector_inference_seconds_bucket" in text


def test_headers_and_health_through_gunicorn(server):
    response = httpx.get(server.url + "/readyz", headers={"X-Request-ID": "live-1"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "live-1"
    assert response.headers["X-Detector-Release"]
    assert response.headers["X-Detector-Host"]
    assert httpx.get(server.url + "/status_check", timeout=10).text == "GET request received"


def test_oversized_body_is_413_json_through_gunicorn(server):
    big = b"\xff\xd8\xff" + b"\0" * (20 * 1024 * 1024 + 10)
    response = httpx.post(
        server.url + "/api/v1/detect",
        content=big,
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 413
    assert "error" in response.json()


def test_access_log_has_request_id_and_latency(server):
    httpx.get(server.url + "/healthz", headers={"X-Request-ID": "log-probe-42"}, timeout=10)
    line = r'"GET /healthz HTTP/1.1" 200 \d+B \d+ms rid=log-probe-42'
    deadline = time.monotonic() + 10  # gunicorn logs the request after it sent the answer
    while not re.search(line, log := (ARTIFACTS / "live-server.log").read_text()):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.05)


def test_unix_socket_bind_serves_and_cleans_up(tmp_path):
    require_weights()
    socket_path = tmp_path / "blue.sock"
    live = LiveServer(workers=1, threads=2, uds=socket_path).start()
    try:
        with live.client() as client:
            response = client.post(
                live.url + "/api/v1/detect",
                files={"file": ("c.jpg", jpeg_bytes(sample_image("coffee")))},
            )
        assert response.status_code == 200
        assert "cup" in {d["label"] for d in response.json()["detections"]}
    finally:
        live.stop()
    assert not socket_path.exists()
