"""Per-request bounds in the app: deadline, decode memory, admission, refused formats."""

from __future__ import annotations

import io
import struct
import threading
import time

import pytest
from detector.app import create_app
from detector.errors import ApiError
from detector.limits import Gate
from detector.limits import MemoryBudget
from PIL import Image
from prometheus_client import REGISTRY
from svc_helpers import ALLOWED_ORIGIN
from svc_helpers import post_file

ENDPOINTS = ("/", "/api/v1/detect")


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def big(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A large image that compresses well (a gradient): small upload, 2 MP to decode."""
    return Image.linear_gradient("L").resize((width, height)).convert(mode)


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_request_past_its_deadline_gets_503_with_the_reason(service_config, url):
    app = create_app({**service_config, "request_deadline_s": 0.01})
    response = post_file(app.test_client(), url, png(big(1600, 1200)), "big.png")
    assert response.status_code == 503
    assert response.get_json()["error"].startswith("detection took longer than 0.01 s")
    assert int(response.headers["Retry-After"]) >= 1


def test_work_past_its_deadline_stops_before_inference_and_frees_its_slot(service_config):
    app = create_app({**service_config, "request_deadline_s": 0.01})
    gate: Gate = app.extensions["bounds"].gate
    inferences = (
        REGISTRY.get_sample_value("detector_inference_seconds_count", {"model": "yolov3-tiny"}) or 0
    )
    response = post_file(app.test_client(), "/api/v1/detect", png(big(1600, 1200)), "big.png")
    assert response.status_code == 503
    for _ in range(100):
        if gate.inflight == 0:
            break
        time.sleep(0.05)
    assert gate.inflight == 0
    after = REGISTRY.get_sample_value("detector_inference_seconds_count", {"model": "yolov3-tiny"})
    assert (after or 0) == inferences


def test_the_default_deadline_lets_a_normal_request_through(client, coffee_jpeg):
    assert client.application.config["DETECTOR"].request_deadline_s == 30
    assert post_file(client, "/api/v1/detect", coffee_jpeg).status_code == 200


@pytest.mark.parametrize("url", ENDPOINTS)
def test_an_image_too_costly_to_decode_is_422_naming_the_memory(service_config, url):
    app = create_app({**service_config, "decode_memory_mb": 20})
    data = png(big(2000, 1500, "RGBA"))  # RGBA + its RGB copy: ~28 MB to decode in full
    response = post_file(app.test_client(), url, data, "big.png")
    if url == "/":
        assert response.status_code == 422
        assert "more than the 20 MB an upload may use" in response.get_json()["error"]
    else:  # decoded reduced to what the network needs: fits
        assert response.status_code == 200


def _ico() -> bytes:
    """An icon file (a PNG behind an ICO directory entry)."""
    inner = png(Image.new("RGB", (16, 16), (0, 0, 255)))
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + inner


@pytest.mark.parametrize("url", ENDPOINTS)
def test_icons_are_refused_by_name(client, url):
    response = post_file(client, url, _ico(), "favicon.ico")
    assert response.status_code == 415
    assert response.get_json()["error"].startswith("ICO (icon) files are not accepted")


def test_a_busy_service_answers_503_with_retry_after_at_once(service_config, coffee_jpeg):
    app = create_app({**service_config, "max_inflight": 1})
    gate: Gate = app.extensions["bounds"].gate
    gate.enter()
    gate.leave(2.4)  # a detection took 2.4 s: average 0.8 * 1 + 0.2 * 2.4 = 1.28 s
    gate.enter()  # one detection in progress elsewhere
    try:
        started = time.perf_counter()
        response = post_file(app.test_client(), "/api/v1/detect", coffee_jpeg)
        elapsed = time.perf_counter() - started
    finally:
        gate.leave(1.0)
    assert response.status_code == 503
    assert "busy" in response.get_json()["error"]
    assert response.headers["Retry-After"] == "2"  # 1.28 s rounded up
    assert elapsed < 1.0
    assert post_file(app.test_client(), "/api/v1/detect", coffee_jpeg).status_code == 200
    assert gate.inflight == 0


def test_the_gate_counts_across_shared_counters():
    counts = [0, 0, 0]
    first, second = Gate(2, counts, 0), Gate(2, counts, 1)
    first.enter()
    second.enter()
    with pytest.raises(ApiError) as busy:
        first.enter()
    assert busy.value.status == 503 and busy.value.retry_after >= 1
    counts[1] = 0  # the master zeroes a dead worker's slot
    first.enter()
    assert counts == [2, 0, 0]


def test_the_memory_budget_makes_a_large_decode_wait_for_another():
    budget = MemoryBudget(100)
    budget.reserve(70, time.monotonic() + 1)
    got = []

    def second():
        budget.reserve(60, time.monotonic() + 5)
        got.append(time.monotonic())

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.2)
    assert not got  # 70 + 60 > 100: it waits
    released = time.monotonic()
    budget.release(70)
    waiter.join(5)
    assert got and got[0] >= released
    with pytest.raises(ApiError, match="busy decoding"):
        budget.reserve(50, time.monotonic() + 0.1)


def test_a_page_on_another_origin_can_read_retry_after(client):
    """The upload page waits Retry-After before retrying a 503/429: CORS must expose it."""
    response = client.get("/status_check", headers={"Origin": ALLOWED_ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    exposed = [h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")]
    assert "Retry-After" in exposed
