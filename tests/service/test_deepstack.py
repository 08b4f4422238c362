"""DeepStack-compatible `POST /v1/vision/detection`: the real deepstack-python client, errors."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from svc_helpers import MAX_PIXELS
from svc_helpers import MAX_UPLOAD_BYTES
from svc_helpers import jpeg_bytes
from svc_helpers import post_file
from svc_helpers import require_weights
from svc_helpers import sample_image
from svc_live import LiveServer
from test_bad_input import REFUSED
from test_bad_input import post

URL = "/v1/vision/detection"
KEY = "deepstack-contract-key-0123456789"
PREDICTION_KEYS = {"label", "confidence", "x_min", "y_min", "x_max", "y_max"}


def check_deepstack_error(response, status: int) -> str:
    """A refusal in DeepStack's shape: the status and exactly {"success": false, "error": ...}."""
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/json"
    body = json.loads(response.data)
    assert set(body) == {"success", "error"}
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"] and "Traceback" not in body["error"]
    return body["error"]


def check_predictions(predictions: list, size: tuple[int, int]) -> None:
    """Every prediction has DeepStack's keys, integer boxes inside the image, 0..1 confidence."""
    width, height = size
    for pred in predictions:
        assert set(pred) == PREDICTION_KEYS
        for name in ("x_min", "y_min", "x_max", "y_max"):
            assert type(pred[name]) is int, (name, pred)
        assert 0 <= pred["x_min"] <= pred["x_max"] <= width
        assert 0 <= pred["y_min"] <= pred["y_max"] <= height
        assert 0.0 < pred["confidence"] <= 1.0


@pytest.fixture(scope="module")
def coffee() -> bytes:
    return jpeg_bytes(sample_image("coffee"))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """`detector serve` on 127.0.0.1 with API keys on, set in a TOML file as in production."""
    require_weights()
    pytest.importorskip("deepstack.core", reason="deepstack-python (test group) not installed")
    directory = tmp_path_factory.mktemp("deepstack")
    config = directory / "detector.toml"
    config.write_text(f'api_keys = ["{KEY}"]\nthreshold = 0.25\n')
    config.chmod(0o600)
    server = LiveServer(workers=1, threads=2, env={"DETECTOR_CONFIG": str(config)})
    with server:
        yield server


def client_for(live, **kwargs):
    """The real client Home Assistant's deepstack_object builds (deepstack.core.DeepstackObject)."""
    from deepstack.core import DeepstackObject

    return DeepstackObject(ip="127.0.0.1", port=live.port, timeout=60, **kwargs)


def test_real_client_detects_with_the_key(live, coffee):
    predictions = client_for(live, api_key=KEY).detect(coffee)
    check_predictions(predictions, Image.open(io.BytesIO(coffee)).size)
    assert "cup" in {p["label"] for p in predictions}
    assert all(p["confidence"] >= 0.45 for p in predictions)  # the client's default


def test_real_client_predictions_equal_the_json_api(live, coffee):
    """Same model, same image: DeepStack's boxes are /api/v1/detect's, rounded to pixels."""
    predictions = client_for(live, api_key=KEY, min_confidence=0.1).detect(coffee)
    with live.client() as http:
        reply = http.post(
            live.url + "/api/v1/detect",
            files={"file": ("c.jpg", coffee, "image/jpeg")},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert reply.status_code == 200, reply.text
    api = reply.json()
    # min_confidence 0.1 (what Home Assistant sends) is raised to the server's floor, 0.25
    assert api["threshold"] == 0.25
    expected = sorted((d["label"], d["score"]) for d in api["detections"])
    assert sorted((p["label"], p["confidence"]) for p in predictions) == expected
    for pred in predictions:
        match = [d for d in api["detections"] if d["score"] == pred["confidence"]]
        box = [pred["x_min"], pred["y_min"], pred["x_max"], pred["y_max"]]
        assert any(all(abs(a - b) <= 1 for a, b in zip(box, d["box"])) for d in match)


def test_real_client_min_confidence_filters(live, coffee):
    everything = client_for(live, api_key=KEY, min_confidence=0.25).detect(coffee)
    strict = client_for(live, api_key=KEY, min_confidence=0.6).detect(coffee)
    assert len(strict) <= len(everything)
    assert all(p["confidence"] > 0.6 for p in strict)
    assert sorted(p["confidence"] for p in strict) == sorted(
        p["confidence"] for p in everything if p["confidence"] > 0.6
    )


@pytest.mark.parametrize("api_key", ["", "wrong-key-wrong-key-wrong"], ids=["no-key", "wrong-key"])
def test_real_client_without_the_right_key_gets_401(live, coffee, api_key):
    from deepstack.core import DeepstackException

    with pytest.raises(DeepstackException, match="status code: 401"):
        client_for(live, api_key=api_key).detect(coffee)
    with live.client() as http:  # the body DeepStack answers with
        reply = http.post(
            live.url + URL, files={"image": ("c.jpg", coffee)}, data={"api_key": api_key}
        )
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="detector"'
    assert set(reply.json()) == {"success", "error"} and reply.json()["success"] is False


# ---- the endpoint through the Flask test client (keys off) --------------------------------


def test_reply_shape_and_duration(client, coffee):
    response = post(client, URL, {"image": coffee})
    assert response.status_code == 200, response.data[:300]
    body = response.get_json()
    assert set(body) == {"success", "predictions", "duration"}
    assert body["success"] is True
    assert isinstance(body["duration"], float) and body["duration"] > 0
    check_predictions(body["predictions"], Image.open(io.BytesIO(coffee)).size)
    assert "cup" in {p["label"] for p in body["predictions"]}


def test_default_min_confidence_is_deepstacks(client, coffee):
    """No min_confidence: 0.40 as DeepStack's server; 0.1 is raised to the floor (0.25)."""
    default = post(client, URL, {"image": coffee}).get_json()["predictions"]
    low = post(client, URL, {"image": coffee, "min_confidence": "0.1"}).get_json()["predictions"]
    assert all(p["confidence"] > 0.40 for p in default)
    assert all(p["confidence"] > 0.25 for p in low)
    assert [p for p in low if p["confidence"] > 0.40] == default


def test_empty_min_confidence_means_the_default(client, coffee):
    """DeepStack's server reads an empty min_confidence as absent (0.40)."""
    default = post(client, URL, {"image": coffee}).get_json()["predictions"]
    empty = post(client, URL, {"image": coffee, "min_confidence": ""}).get_json()["predictions"]
    assert empty == default and default


def test_boxes_are_clipped_integers_on_a_tiny_image(client):
    small = jpeg_bytes(sample_image("coffee").resize((64, 48)))
    body = post(client, URL, {"image": small, "min_confidence": "0"}).get_json()
    check_predictions(body["predictions"], (64, 48))


@pytest.mark.parametrize(("case", "make", "status"), REFUSED, ids=[c[0] for c in REFUSED])
def test_bad_images_get_a_deepstack_shaped_4xx(client, case, make, status):
    check_deepstack_error(post(client, URL, {"image": make()}), status)


@pytest.mark.parametrize(
    "value",
    ["abc", "-0.1", "1.5", "nan", "inf"],
    ids=["text", "neg", "gt1", "nan", "inf"],
)
def test_bad_min_confidence_is_400_naming_the_field(client, value):
    image = jpeg_bytes(Image.new("RGB", (32, 32)))
    response = post(client, URL, {"image": image, "min_confidence": value})
    assert "min_confidence" in check_deepstack_error(response, 400)


def test_missing_image_is_400_naming_the_field(client, coffee):
    message = check_deepstack_error(post_file(client, URL, coffee), 400)  # sent as `file`
    assert "'image'" in message


def test_limits_apply(client):
    big = Image.new("1", (2500, 2000))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    assert 2500 * 2000 > MAX_PIXELS
    check_deepstack_error(post(client, URL, {"image": buf.getvalue()}), 422)
    over = b"\xff\xd8\xff" + b"\0" * (MAX_UPLOAD_BYTES + 10)
    check_deepstack_error(post(client, URL, {"image": over}), 413)


def test_get_is_405_json(client):
    response = client.get(URL)
    assert response.status_code == 405 and "POST" in response.headers["Allow"]
    assert "error" in response.get_json()
