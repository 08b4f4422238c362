"""Optional API keys: 401 JSON without a key on detection endpoints, open pages, no logged key."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from detector import auth
from detector.app import create_app
from detector.config import Config
from detector.config import ConfigError
from detector.config import from_mapping
from detector.config import load
from svc_helpers import ROOT
from svc_helpers import jpeg_bytes
from svc_helpers import require_weights
from svc_helpers import sample_image
from svc_live import LiveServer
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from deploy import health

KEY = "first-key-0123456789abcdef"
OTHER_KEY = "second-key-fedcba9876543210"
WRONG = "not-a-key-0000000000000000"
# (url, image field, shape of the errors): every endpoint that runs the model
DETECTION = [
    ("/api/v1/detect", "file", "app"),
    ("/?detections=1", "file", "app"),
    ("/v1/vision/detection", "image", "deepstack"),
]
OPEN = ["/", "/status_check", "/healthz", "/readyz", "/version", "/metrics"]


@pytest.fixture(scope="module")
def small_jpeg() -> bytes:
    return jpeg_bytes(sample_image("coffee").resize((160, 120)))


def keyed_app(service_config, **extra):
    return create_app({**service_config, "api_keys": [KEY, OTHER_KEY], **extra})


def post(client, url, field, image, headers=None, environ=None, **fields):
    """POST the image as multipart field `field` plus text fields."""
    boundary, body = encode_multipart({field: FileStorage(io.BytesIO(image), "a.jpg"), **fields})
    return client.post(
        url,
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
        headers=headers or {},
        environ_base=environ or {},
    )


def check_401(response, shape: str) -> str:
    assert response.status_code == 401, response.data[:200]
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="detector"'
    body = json.loads(response.data)
    if shape == "deepstack":
        assert set(body) == {"success", "error"} and body["success"] is False
    else:
        assert list(body) == ["error"]
    return body["error"]


@pytest.mark.parametrize(("url", "field", "shape"), DETECTION)
def test_keys_off_by_default_detection_is_open(client, small_jpeg, url, field, shape):
    assert Config().api_keys == ()
    assert post(client, url, field, small_jpeg).status_code == 200


@pytest.mark.parametrize(("url", "field", "shape"), DETECTION)
@pytest.mark.parametrize(
    "presented",
    [
        {},
        {"headers": {"Authorization": f"Bearer {WRONG}"}},
        {"headers": {"X-API-Key": WRONG}},
        {"api_key": WRONG},
        {"headers": {"Authorization": f"Basic {KEY}"}},  # only the Bearer scheme carries a key
        {"headers": {"Authorization": f"Bearer {KEY[:-1]}"}},  # a prefix is not the key
    ],
    ids=["none", "wrong-bearer", "wrong-header", "wrong-field", "basic", "prefix"],
)
def test_missing_or_wrong_key_is_401(service_config, small_jpeg, url, field, shape, presented):
    client = keyed_app(service_config).test_client()
    message = check_401(post(client, url, field, small_jpeg, **presented), shape)
    assert KEY not in message and WRONG not in message


@pytest.mark.parametrize(("url", "field", "shape"), DETECTION)
@pytest.mark.parametrize(
    "presented",
    [
        {"headers": {"Authorization": f"Bearer {KEY}"}},
        {"headers": {"authorization": f"bearer {OTHER_KEY}"}},
        {"headers": {"X-API-Key": KEY}},
        {"api_key": OTHER_KEY},
    ],
    ids=["bearer", "bearer-second-key", "x-api-key", "form-field"],
)
def test_each_accepted_form_gets_200(service_config, small_jpeg, url, field, shape, presented):
    client = keyed_app(service_config).test_client()
    response = post(client, url, field, small_jpeg, **presented)
    assert response.status_code == 200, response.data[:200]
    assert "detections" in response.get_json() or "predictions" in response.get_json()


@pytest.mark.parametrize("url", OPEN)
def test_open_endpoints_stay_open_with_keys_on(service_config, url):
    response = keyed_app(service_config).test_client().get(url)
    assert response.status_code == 200, (url, response.data[:200])


def test_query_string_keys_are_not_read(service_config, small_jpeg):
    """A key in the URL would be written to access logs: it is never accepted."""
    client = keyed_app(service_config).test_client()
    check_401(post(client, f"/api/v1/detect?api_key={KEY}", "file", small_jpeg), "app")


def test_cors_preflight_needs_no_key(service_config):
    client = keyed_app(service_config, cors_origins=["https://page.example"]).test_client()
    response = client.options(
        "/api/v1/detect",
        headers={"Origin": "https://page.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "X-API-Key" in response.headers["Access-Control-Allow-Headers"]


@pytest.mark.parametrize(
    ("exempt", "environ", "headers", "status"),
    [
        (True, {"REMOTE_ADDR": ""}, {}, 200),  # the unix socket, straight (fab's smoke check)
        (True, {"REMOTE_ADDR": ""}, {"X-Forwarded-For": "203.0.113.9"}, 401),  # via nginx
        (True, {"REMOTE_ADDR": ""}, {"X-Real-IP": "203.0.113.9"}, 401),
        (True, {"REMOTE_ADDR": ""}, {"Forwarded": "for=203.0.113.9"}, 401),
        (True, {"REMOTE_ADDR": "127.0.0.1"}, {}, 401),  # loopback TCP is not the socket
        (True, {"REMOTE_ADDR": "::1"}, {}, 401),
        (False, {"REMOTE_ADDR": ""}, {}, 401),  # exemption off: the socket needs a key too
    ],
    ids=["socket", "socket+xff", "socket+real-ip", "socket+forwarded", "lo4", "lo6", "off"],
)
def test_local_exemption(service_config, small_jpeg, exempt, environ, headers, status):
    client = keyed_app(service_config, api_keys_local_exempt=exempt).test_client()
    response = post(client, "/api/v1/detect", "file", small_jpeg, headers, environ)
    assert response.status_code == status


def test_matches_checks_every_key():
    digests = tuple(auth.digest(k) for k in (KEY, OTHER_KEY))
    assert auth.matches(KEY, digests) and auth.matches(OTHER_KEY, digests)
    assert not auth.matches(WRONG, digests) and not auth.matches("", digests)
    assert not auth.matches(KEY + "x", digests) and not auth.matches(KEY.upper(), digests)


@pytest.mark.parametrize("bad", ["short", " padded-key-0123456789 ", "tab\tin-the-key-0123456"])
def test_bad_keys_are_refused_without_showing_them(bad):
    with pytest.raises(ConfigError) as caught:
        from_mapping({"api_keys": ["good-key-0123456789abc", bad]})
    assert bad.strip() not in str(caught.value) and "entry 2" in str(caught.value)


def test_keys_never_in_repr_and_read_from_toml(tmp_path):
    path = tmp_path / "detector.toml"
    path.write_text(f'api_keys = ["{KEY}", "{OTHER_KEY}"]\napi_keys_local_exempt = true\n')
    config = load(path, environ={})
    assert config.api_keys == (KEY, OTHER_KEY) and config.api_keys_local_exempt is True
    assert KEY not in repr(config)


def test_the_gate_reads_a_key_refusal_as_routed_with_keys_on(service_config, small_jpeg):
    """deploy/health.key_required accepts exactly the service's own 401 from the release."""
    client = keyed_app(service_config).test_client()
    response = post(client, "/api/v1/detect", "file", small_jpeg)
    headers = {k.lower(): v for k, v in response.headers.items()}
    served = headers["x-detector-release"]
    assert health.key_required(response.status_code, headers, served, served)
    assert not health.key_required(response.status_code, headers, served, "other-release")
    assert not health.key_required(401, {}, served, served)  # nginx's own 401 has no challenge
    assert not health.key_required(200, headers, served, served)


def test_nginx_marks_every_proxied_request():
    """The local exemption relies on nginx setting X-Forwarded-For in every proxying server."""
    template = (ROOT / "ansible/roles/nginx/templates/detector.conf.j2").read_text()
    servers = re.split(r"\nserver \{", template)[1:]
    assert servers
    for server in servers:
        if "proxy_pass" in server:
            assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in server


def test_ansible_renders_the_keys_into_the_private_config():
    template = (ROOT / "ansible/roles/detector/templates/detector.toml.j2").read_text()
    assert "api_keys = {{ detector_api_keys | list | to_json }}" in template
    tasks = (ROOT / "ansible/roles/detector/tasks/config.yml").read_text()
    render = tasks.split("- name: Render detector config", 1)[1]
    assert 'mode: "0640"' in render and "owner: root" in render and "diff: false" in render


@pytest.fixture(scope="module")
def live_socket(tmp_path_factory):
    """`detector serve` on a unix socket (as under systemd) with keys on and its log captured."""
    require_weights()
    directory = tmp_path_factory.mktemp("keys")
    config = directory / "detector.toml"
    config.write_text(f'api_keys = ["{KEY}", "{OTHER_KEY}"]\napi_keys_local_exempt = true\n')
    config.chmod(0o600)
    log = directory / "serve.log"
    server = LiveServer(
        workers=1,
        threads=2,
        env={"DETECTOR_CONFIG": str(config)},
        log_path=log,
        uds=directory / "s",
    )
    with server:
        yield server, log


def test_live_socket_keys_and_logs(live_socket, small_jpeg):
    """Through gunicorn: each form works, proxied requests need a key, no key reaches the log."""
    server, log = live_socket
    files = {"file": ("a.jpg", small_jpeg, "image/jpeg")}
    proxied = {"X-Forwarded-For": "203.0.113.9"}  # what nginx adds to every request
    url = server.url + "/api/v1/detect"
    with server.client() as http:
        codes = {
            "socket-direct": http.post(url, files=files).status_code,
            "proxied-none": http.post(url, files=files, headers=proxied).status_code,
            "proxied-wrong": http.post(
                url, files=files, headers={**proxied, "Authorization": f"Bearer {WRONG}"}
            ).status_code,
            "proxied-bearer": http.post(
                url, files=files, headers={**proxied, "Authorization": f"Bearer {KEY}"}
            ).status_code,
            "proxied-header": http.post(
                url, files=files, headers={**proxied, "X-API-Key": OTHER_KEY}
            ).status_code,
            "proxied-field": http.post(
                server.url + "/v1/vision/detection",
                files={"image": ("a.jpg", small_jpeg)},
                data={"api_key": KEY},
                headers=proxied,
            ).status_code,
        }
        # A raw image body refused for its missing key must not poison the kept-alive connection.
        # (gunicorn itself skips a small unread rest; 300 KB it does not: "Server disconnected")
        raw = http.post(
            url,
            content=small_jpeg + bytes(300_000),
            headers={**proxied, "Content-Type": "image/jpeg"},
        ).status_code
        codes["raw-then-next"] = (raw, http.get(server.url + "/healthz").status_code)
    server.stop()  # flush and close the log
    assert codes == {
        "raw-then-next": (401, 200),
        "socket-direct": 200,
        "proxied-none": 401,
        "proxied-wrong": 401,
        "proxied-bearer": 200,
        "proxied-header": 200,
        "proxied-field": 200,
    }
    text = Path(log).read_text(errors="replace")
    assert text.count("POST /api/v1/detect") >= 5, text[-2000:]  # the access log was captured
    for secret in (KEY, OTHER_KEY, WRONG):
        assert secret not in text
