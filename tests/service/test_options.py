"""Per-request options on /api/v1/detect and the seed's POST /: threshold, classes, cap."""

from __future__ import annotations

import json

import pytest
from detector.app import create_app
from detector.detection import Detection
from detector.options import MAX_DETECTIONS_LIMIT
from detector.options import Options
from detector.options import apply_options
from detector.options import parse_options
from svc_helpers import jpeg_bytes
from svc_helpers import post_file
from svc_helpers import sample_image

FLOOR = 0.05  # low server threshold: the camera photo then has persons and cars above it
LABELS = ["person", "bicycle", "car", "traffic light"]


@pytest.fixture(scope="module")
def camera_jpeg() -> bytes:
    """scikit-image's camera man photo (tiny at 0.05 finds persons and cars)."""
    return jpeg_bytes(sample_image("camera"))


@pytest.fixture
def low_client(service_config):
    """A client of an app whose score threshold (the floor) is FLOOR."""
    return create_app({**service_config, "threshold": FLOOR}).test_client()


def _detect(client, data: bytes, query: str = "", **fields):
    """POST the image to /api/v1/detect with query args and form fields; return the response."""
    return post_file(client, "/api/v1/detect" + query, data, **fields)


def _labels(response) -> list[str]:
    return [d["label"] for d in response.get_json()["detections"]]


def test_no_options_reports_the_floor_and_all_detections(low_client, camera_jpeg):
    response = _detect(low_client, camera_jpeg)
    assert response.status_code == 200
    body = response.get_json()
    assert body["threshold"] == FLOOR
    assert {"person", "car"} <= set(_labels(response))
    scores = [d["score"] for d in body["detections"]]
    assert scores == sorted(scores, reverse=True)


def test_threshold_equals_a_server_configured_at_that_threshold(
    service_config, low_client, camera_jpeg
):
    """Filtering after class-wise NMS gives exactly what the model gives at that threshold."""
    asked = _detect(low_client, camera_jpeg, threshold="0.3")
    configured = _detect(
        create_app({**service_config, "threshold": 0.3}).test_client(), camera_jpeg
    )
    assert asked.status_code == configured.status_code == 200
    assert asked.get_json()["threshold"] == 0.3
    assert asked.get_json()["detections"] == configured.get_json()["detections"]
    all_ = _detect(low_client, camera_jpeg).get_json()["detections"]
    assert 0 < len(asked.get_json()["detections"]) < len(all_)
    assert all(d["score"] > 0.3 for d in asked.get_json()["detections"])


def test_threshold_below_the_floor_is_raised_to_it(low_client, camera_jpeg):
    plain = _detect(low_client, camera_jpeg).get_json()
    lower = _detect(low_client, camera_jpeg, "?threshold=0.01").get_json()
    assert lower["threshold"] == FLOOR
    assert lower["detections"] == plain["detections"]


def test_classes_comma_separated_repeated_and_any_case(low_client, camera_jpeg):
    only_person = _detect(low_client, camera_jpeg, classes="person")
    assert set(_labels(only_person)) == {"person"}
    comma = _detect(low_client, camera_jpeg, "?classes=Person,%20car")
    repeated = _detect(low_client, camera_jpeg, "?classes=person&classes=CAR")
    both = _detect(low_client, camera_jpeg)
    assert set(_labels(comma)) == {"person", "car"}
    assert comma.get_json()["detections"] == repeated.get_json()["detections"]
    wanted = [d for d in both.get_json()["detections"] if d["label"] in ("person", "car")]
    assert comma.get_json()["detections"] == wanted


def test_max_detections_keeps_the_best(low_client, camera_jpeg):
    full = _detect(low_client, camera_jpeg).get_json()["detections"]
    cut = _detect(low_client, camera_jpeg, "?max_detections=2", classes="car").get_json()
    cars = [d for d in full if d["label"] == "car"]
    assert len(cars) > 2
    assert cut["detections"] == cars[:2]


def test_raw_image_body_takes_options_from_the_query(low_client, camera_jpeg):
    response = low_client.post(
        "/api/v1/detect?classes=car&max_detections=1", data=camera_jpeg, content_type="image/jpeg"
    )
    assert response.status_code == 200
    assert _labels(response) == ["car"]


BAD = [
    ({"threshold": "abc"}, "threshold", "'abc'"),
    ({"threshold": "1.5"}, "threshold", "'1.5'"),
    ({"threshold": "-0.1"}, "threshold", "'-0.1'"),
    ({"threshold": "nan"}, "threshold", "'nan'"),
    ({"max_detections": "0"}, "max_detections", "'0'"),
    ({"max_detections": str(MAX_DETECTIONS_LIMIT + 1)}, "max_detections", "1001"),
    ({"max_detections": "2.5"}, "max_detections", "'2.5'"),
    ({"max_detections": "many"}, "max_detections", "'many'"),
    ({"classes": "person,unicorn"}, "classes", "'unicorn'"),
]


@pytest.mark.parametrize(("fields", "name", "value"), BAD)
@pytest.mark.parametrize("where", ["form", "query"])
def test_bad_option_is_400_json_naming_the_field(client, coffee_jpeg, fields, name, value, where):
    if where == "form":
        response = _detect(client, coffee_jpeg, **fields)
    else:
        ((key, raw),) = fields.items()
        response = _detect(client, coffee_jpeg, f"?{key}={raw}")
    assert response.status_code == 400
    assert response.is_json
    message = response.get_json()["error"]
    assert message.startswith(name) or f"{name}:" in message
    assert value in message


def test_single_valued_option_sent_twice_is_400(client, coffee_jpeg):
    response = _detect(client, coffee_jpeg, "?threshold=0.5", threshold="0.6")
    assert response.status_code == 400
    assert response.get_json()["error"] == "threshold was given 2 times; send it once"


def test_seed_page_post_draws_only_the_chosen_boxes(low_client, camera_jpeg):
    plain = post_file(low_client, "/", camera_jpeg, classes="car", max_detections="1")
    assert plain.status_code == 200
    assert list(json.loads(plain.data)) == ["name", "image"]  # the original's reply, unchanged
    detailed = post_file(low_client, "/?detections=1&threshold=0.01", camera_jpeg, classes="car")
    body = json.loads(detailed.data)
    assert body["threshold"] == FLOOR
    assert {d["label"] for d in body["detections"]} == {"car"}
    bad = post_file(low_client, "/", camera_jpeg, max_detections="0")
    assert bad.status_code == 400
    assert "max_detections" in bad.get_json()["error"]


def _det(label: str, score: float) -> Detection:
    return Detection(label, LABELS.index(label), score, (0.0, 0.0, 1.0, 1.0))


def test_apply_options_filters_sorts_and_cuts():
    found = [_det("car", 0.4), _det("person", 0.9), _det("car", 0.7), _det("bicycle", 0.3)]
    options = parse_options(
        {"threshold": ["0.35"], "classes": ["car,person"], "max_detections": ["2"]},
        floor=0.25,
        labels=LABELS,
    )
    assert options == Options(0.35, frozenset({"car", "person"}), 2)
    assert apply_options(found, options) == [found[1], found[2]]
    everything = parse_options({}, floor=0.25, labels=LABELS)
    assert everything == Options(0.25)
    assert apply_options(found, everything) == sorted(found, key=lambda d: -d.score)


def test_min_confidence_field_for_the_deepstack_endpoint():
    options = parse_options(
        {"min_confidence": ["0.6"], "threshold": ["0.9"]},
        floor=0.25,
        labels=LABELS,
        threshold_field="min_confidence",
    )
    assert options.threshold == 0.6
    with pytest.raises(Exception, match="min_confidence must be a number between 0 and 1"):
        parse_options(
            {"min_confidence": ["2"]}, floor=0.25, labels=LABELS, threshold_field="min_confidence"
        )
