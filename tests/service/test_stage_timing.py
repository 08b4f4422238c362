"""Per-stage timing of a detection: timing_ms, the Server-Timing header and the stage metrics."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import REGISTRY
from svc_helpers import post_file

STAGES = ["upload", "decode", "wait", "preprocess", "inference", "postprocess"]


def parse_server_timing(value: str) -> dict[str, float]:
    """Return {name: dur} of a Server-Timing header value such as `a;dur=1.0, b;dur=2.5`."""
    result = {}
    for part in value.split(","):
        name, _, dur = part.strip().partition(";dur=")
        result[name] = float(dur)
    return result


@pytest.mark.parametrize("url", ["/api/v1/detect", "/?detections=1"])
def test_the_reply_and_the_server_timing_header_break_a_detection_into_stages(
    client, coffee_jpeg, url
):
    response = post_file(client, url, coffee_jpeg)
    assert response.status_code == 200
    timing = response.get_json()["timing_ms"]
    assert set(timing) == set(STAGES)  # jsonify sorts the keys
    assert all(isinstance(ms, float) and ms >= 0 for ms in timing.values())
    assert timing["inference"] > 0
    header = parse_server_timing(response.headers["Server-Timing"])
    assert list(header) == [*STAGES, "total"]
    assert {name: header[name] for name in STAGES} == timing
    # The stages run one after the other inside the request: the total covers them (each
    # stage is rounded to 0.1 ms).
    assert header["total"] >= sum(timing.values()) - 0.05 * len(STAGES)


def test_light_endpoints_carry_no_server_timing(client):
    assert "Server-Timing" not in client.get("/healthz").headers


def test_time_spent_waiting_for_the_inference_lock_is_wait_not_inference(app, coffee_jpeg):
    """A detection queued behind another one's inference reports and counts that as `wait`."""
    bounds = app.extensions["bounds"]
    client = app.test_client()

    def inference_sum() -> float:
        labels = {"model": "yolov3-tiny"}
        return REGISTRY.get_sample_value("detector_inference_seconds_sum", labels) or 0.0

    def stage_count(stage: str) -> float:
        labels = {"stage": stage}
        return REGISTRY.get_sample_value("detector_stage_seconds_count", labels) or 0.0

    before_sum, before_waits = inference_sum(), stage_count("wait")
    replies = []
    bounds.infer_lock.acquire()  # another detection is inferring
    try:
        worker = threading.Thread(
            target=lambda: replies.append(post_file(client, "/api/v1/detect", coffee_jpeg))
        )
        worker.start()
        for _ in range(200):  # until the request is admitted (decoding or at the lock)
            if bounds.gate.inflight:
                break
            time.sleep(0.01)
        time.sleep(0.5)  # the held lock: the request cannot pass it meanwhile
    finally:
        bounds.infer_lock.release()
    worker.join(60)
    assert replies and replies[0].status_code == 200
    timing = replies[0].get_json()["timing_ms"]
    held_ms = timing["preprocess"] + timing["inference"] + timing["postprocess"]
    assert timing["wait"] > held_ms  # the 0.5 s queued went to `wait`...
    assert (inference_sum() - before_sum) * 1000 < timing["wait"]  # ...not to the histogram
    assert stage_count("wait") == before_waits + 1
