"""JSON API and operations endpoints: detect, health, readiness, metrics, version, headers, CORS."""

from __future__ import annotations

import pytest
from detector import config as config_module
from detector.app import create_app
from detector.app import find_release
from svc_helpers import ALLOWED_ORIGIN
from svc_helpers import post_file


def test_detect_returns_the_documented_json(client, dog_jpeg):
    response = post_file(client, "/api/v1/detect", dog_jpeg)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"model", "width", "height", "threshold", "detections", "timing_ms"}
    assert (body["model"], body["width"], body["height"]) == ("yolov3-tiny", 768, 576)
    assert body["threshold"] == 0.25  # the server's; a request may raise it (test_options.py)
    assert {"dog", "bicycle", "car"} <= {d["label"] for d in body["detections"]}
    for det in body["detections"]:
        assert set(det) == {"label", "class_id", "score", "box"}
        x1, y1, x2, y2 = det["box"]
        assert 0.25 <= det["score"] <= 1 and x1 < x2 and y1 < y2
    assert body["timing_ms"]["inference"] > 0


def test_detect_finds_the_cup_in_the_coffee_photo(client, coffee_jpeg):
    body = post_file(client, "/api/v1/detect", coffee_jpeg).get_json()
    assert (body["width"], body["height"]) == (600, 400)
    assert "cup" in {d["label"] for d in body["detections"]}


def test_detect_accepts_a_raw_image_body(client, coffee_jpeg):
    response = client.post("/api/v1/detect", data=coffee_jpeg, content_type="image/jpeg")
    assert response.status_code == 200
    assert "cup" in {d["label"] for d in response.get_json()["detections"]}


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["ready"] is True and ready.get_json()["warmup_ms"] > 0


def test_readiness_is_503_with_a_reason_when_the_weights_are_missing(tmp_path):
    app = create_app({"weights_dir": str(tmp_path)})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert "fetch-weights" in response.get_json()["error"]
    detect = post_file(app.test_client(), "/api/v1/detect", b"\xff\xd8\xff")
    assert detect.status_code == 503 and "error" in detect.get_json()


def test_metrics_count_requests_and_inference(client, coffee_jpeg):
    post_file(client, "/api/v1/detect", coffee_jpeg)
    client.get("/status_check")
    text = client.get("/metrics").data.decode()
    counted = 'detector_http_requests_total{code="200",endpoint="/api/v1/detect",method="POST"}'
    assert counted in text
    assert "detector_http_request_duration_seconds_bucket" in text
    assert 'detector_inference_seconds_count{model="yolov3-tiny"}' in text


def test_version_and_release_headers(client):
    response = client.get("/version")
    body = response.get_json()
    assert body["release"] == "test-release"
    assert body["model"] == "yolov3-tiny"
    assert response.headers["X-Detector-Release"] == "test-release"
    assert response.headers["X-Detector-Host"] == body["host"]
    assert client.get("/status_check").headers["X-Detector-Release"] == "test-release"


def test_request_id_is_echoed_or_generated(client):
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id;<x>"}).headers[
        "X-Request-ID"
    ]
    assert len(generated) == 32 and generated != "bad id"


def test_release_is_read_from_the_install_path(tmp_path, monkeypatch):
    release_dir = tmp_path / "opt" / "detector" / "releases" / "20260501T100200Z-ab12cd3"
    release_dir.mkdir(parents=True)
    monkeypatch.chdir(release_dir)
    assert find_release(config_module.Config()) == "20260501T100200Z-ab12cd3"
    assert find_release(config_module.Config(release="pinned")) == "pinned"


@pytest.mark.parametrize(
    ("origin", "allowed"), [(ALLOWED_ORIGIN, True), ("https://evil.example", False), (None, False)]
)
def test_cors_allows_only_configured_origins(client, origin, allowed):
    headers = {"Origin": origin} if origin else {}
    response = client.get("/status_check", headers=headers)
    expected = origin if allowed else None
    assert response.headers.get("Access-Control-Allow-Origin") == expected
    assert response.status_code == 200


def test_cors_preflight_for_the_upload(client):
    response = client.options(
        "/",
        headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_unknown_path_and_wrong_method_are_json(client):
    missing = client.get("/nope")
    assert missing.status_code == 404 and "error" in missing.get_json()
    wrong = client.get("/api/v1/detect")
    assert wrong.status_code == 405 and "POST" in wrong.get_json()["error"]


def test_factory_reads_detector_config_and_environment(tmp_path, monkeypatch):
    toml = tmp_path / "detector.toml"
    toml.write_text(
        'release = "from-toml"\nmax_upload_bytes = 1234\ncors_origins = ["https://a.example"]\n'
    )
    monkeypatch.setenv("DETECTOR_CONFIG", str(toml))
    monkeypatch.setenv("DETECTOR_RELEASE", "from-env")
    app = create_app()
    assert app.config["MAX_CONTENT_LENGTH"] == 1234
    assert app.config["DETECTOR_RELEASE"] == "from-env"
    assert app.config["DETECTOR"].cors_origins == ("https://a.example",)


def test_factory_takes_a_config_object():
    app = create_app(config_module.Config(release="obj", max_upload_bytes=99))
    assert (app.config["DETECTOR_RELEASE"], app.config["MAX_CONTENT_LENGTH"]) == ("obj", 99)


def test_factory_rejects_unknown_settings():
    with pytest.raises(config_module.ConfigError, match="unknown setting"):
        create_app({"no_such_setting": 1})


def test_responses_are_not_sniffed(client):
    assert client.get("/healthz").headers["X-Content-Type-Options"] == "nosniff"
