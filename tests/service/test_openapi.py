"""/openapi.json: a valid OpenAPI 3.1 document; every endpoint's real responses conform to it."""

from __future__ import annotations

import dataclasses
import io
from urllib.parse import parse_qsl
from urllib.parse import urlsplit

import httpx
import openapi_core
import openapi_spec_validator as spec_validator
import pytest
from detector import __version__
from detector.app import create_app
from detector.config import Config
from openapi_core.datatypes import RequestParameters
from PIL import Image
from svc_helpers import MAX_PIXELS
from svc_helpers import MAX_UPLOAD_BYTES
from svc_helpers import ROOT
from svc_helpers import jpeg_bytes
from svc_helpers import require_weights
from svc_helpers import sample_image
from svc_live import LiveServer
from werkzeug.datastructures import Headers
from werkzeug.datastructures import ImmutableMultiDict

KEY = "openapi-test-key-0123456789"
HAS_KEYS = "api_keys" in {f.name for f in dataclasses.fields(Config)}
# Reachable only before the model is loaded, which gunicorn workers do before serving: checked
# in process (test_readyz_503_conforms), not live.
NOT_LIVE = {("/readyz", "get", 503)}


class OpenAPIRequest:
    """An httpx request as openapi-core's Request protocol."""

    def __init__(self, request: httpx.Request) -> None:
        url = request.url
        self.host_url = f"{url.scheme}://{url.netloc.decode()}"
        self.path = url.path
        self.method = request.method.lower()
        self.body = request.read() or None
        self.content_type = request.headers.get("content-type", "").lower()
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qsl(url.query.decode(), keep_blank_values=True)),
            header=Headers(request.headers.multi_items()),
            cookie=ImmutableMultiDict(),
        )


class OpenAPIResponse:
    """An httpx response as openapi-core's Response protocol."""

    def __init__(self, response: httpx.Response) -> None:
        self.data = response.content
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "")
        self.headers = Headers(response.headers.multi_items())


def png(width: int, height: int) -> bytes:
    """A plain PNG of width x height (small file, many pixels)."""
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class Case:
    """One request and the status it must get."""

    method: str
    path: str
    status: int
    files: dict | None = None
    data: dict | None = None
    content: bytes | None = None
    headers: dict | None = None


def open_cases(photo: bytes) -> list[Case]:
    """Valid and invalid requests for every endpoint of a server without keys."""
    big = b"\0" * (MAX_UPLOAD_BYTES + 1024)
    bomb = png(2100, 2000)  # > MAX_PIXELS
    assert 2100 * 2000 > MAX_PIXELS
    cases = [Case("get", p, 200) for p in ("/", "/status_check", "/healthz", "/readyz")]
    cases += [Case("get", p, 200) for p in ("/metrics", "/version", "/openapi.json")]
    for path, field, extra in (
        ("/api/v1/detect", "file", {"threshold": "0.3", "classes": "cup", "max_detections": "1"}),
        ("/?detections=1", "file", {"classes": "cup,person", "orientation": "1"}),
        ("/", "file", {}),
        ("/v1/vision/detection", "image", {"min_confidence": "0.5", "classes": "cup"}),
    ):
        cases += [
            Case("post", path, 200, files={field: ("a.jpg", photo, "image/jpeg")}),
            Case("post", path, 200, files={field: ("a.jpg", photo, "image/jpeg")}, data=extra),
            Case("post", path, 400, data={"other": "x"}),
            Case("post", path, 400, files={field: ("a.jpg", b"", "image/jpeg")}),
            Case("post", path, 415, files={field: ("a.txt", b"hello, world", "text/plain")}),
            Case("post", path, 413, files={field: ("a.jpg", big, "image/jpeg")}),
            Case("post", path, 422, files={field: ("a.png", bomb, "image/png")}),
        ]
        bad = {"threshold": "2"} if field == "file" else {"min_confidence": "abc"}
        files = {field: ("a.jpg", photo, "image/jpeg")}
        cases.append(Case("post", path, 400, files=files, data=bad))
    cases.append(
        Case(
            "post",
            "/api/v1/detect?classes=unicorn",
            400,
            content=photo,
            headers={"Content-Type": "image/jpeg"},
        )
    )
    cases.append(
        Case(
            "post",
            "/api/v1/detect?max_detections=2",
            200,
            content=photo,
            headers={"Content-Type": "image/jpeg"},
        )
    )
    return cases


def keyed_cases(photo: bytes) -> list[Case]:
    """Requests to a server with API keys and a deadline no detection meets: 401, then 503."""
    cases = [Case("get", "/readyz", 200), Case("get", "/healthz", 200)]
    for path, field in (
        ("/api/v1/detect", "file"),
        ("/", "file"),
        ("/v1/vision/detection", "image"),
    ):
        files = {field: ("a.jpg", photo, "image/jpeg")}
        cases.append(Case("post", path, 401, files=files))
        cases.append(Case("post", path, 401, files=files, headers={"X-API-Key": "wrong" * 4}))
        cases.append(Case("post", path, 503, files=files, headers={"X-API-Key": KEY}))
    cases.append(
        Case(
            "post",
            "/v1/vision/detection",
            503,
            files={"image": ("a.jpg", photo, "image/jpeg")},
            data={"api_key": KEY},
        )
    )
    cases.append(
        Case(
            "post",
            "/api/v1/detect",
            503,
            content=photo,
            headers={"Content-Type": "image/jpeg", "Authorization": f"Bearer {KEY}"},
        )
    )
    return cases


def check(client: httpx.Client, base: str, document: dict, cases: list[Case]) -> set[tuple]:
    """Send each case, validate the response (and each accepted request) against the document.

    Cases of paths this app does not route (and so does not document) are left out: the route
    test holds the document and the app's routes equal.
    :return: the (path, method, status) triples exercised
    """
    spec = openapi_core.OpenAPI.from_dict(document)
    seen = set()
    for case in cases:
        if urlsplit(case.path).path not in document["paths"]:
            continue
        try:
            response = client.request(
                case.method.upper(),
                base + case.path,
                files=case.files,
                data=case.data,
                content=case.content,
                headers=case.headers,
            )
        except httpx.TransportError as exc:
            raise AssertionError(f"{case.method} {case.path} got no answer: {exc!r}") from exc
        what = f"{case.method.upper()} {case.path} -> {response.status_code}: {response.text[:200]}"
        assert response.status_code == case.status, what
        request = OpenAPIRequest(response.request)
        spec.validate_response(request, OpenAPIResponse(response))  # undocumented status: error
        operation = document["paths"][request.path][case.method]
        declared = set(operation["responses"][str(case.status)].get("headers", {}))
        missing = sorted(h for h in declared if h not in response.headers)  # case-insensitive
        assert not missing, f"{what}: documented headers {missing} not sent"
        if "server-timing" in response.headers:  # sent, so documented
            assert "Server-Timing" in declared, f"{what}: Server-Timing is not documented"
        if case.status < 400 or case.status in (401, 503):  # valid requests
            spec.validate_request(request)
        seen.add((request.path, case.method, case.status))
    return seen


def documented(document: dict) -> set[tuple]:
    """Return every (path, method, status) the document declares."""
    return {
        (path, method, int(status))
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
    }


@pytest.fixture(scope="module")
def photo() -> bytes:
    """The coffee photo as JPEG (tiny finds a cup)."""
    return jpeg_bytes(sample_image("coffee"))


def _settings(tmp_path, **extra) -> dict:
    require_weights()
    return {
        "model": "yolov3-tiny",
        "weights_dir": str(ROOT / "weights"),
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "max_pixels": MAX_PIXELS,
        **extra,
    }


def _keyed(tmp_path) -> dict:
    if not HAS_KEYS:
        pytest.skip("this tree has no api_keys setting (detector.auth) yet")
    # deadline no detection meets: the 503 path; the watchdog far away so nothing recycles
    return _settings(tmp_path, api_keys=[KEY], request_deadline_s=1e-9, detection_limit_s=60.0)


def _in_process(settings: dict):
    app = create_app(settings)
    return app, httpx.Client(transport=httpx.WSGITransport(app=app), timeout=60)


def test_document_is_valid_openapi_3_1_and_covers_every_route(tmp_path):
    app, client = _in_process(_settings(tmp_path))
    with client:
        client.get("http://test/readyz")
        document = client.get("http://test/openapi.json").json()
    spec_validator.validate(document)  # raises on an invalid document
    assert document["openapi"].startswith("3.1")
    assert document["info"]["version"] == __version__
    routes = {
        (rule.rule, method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations == routes
    classes = document["paths"]["/api/v1/detect"]["post"]["parameters"][1]
    assert classes["name"] == "classes"
    assert "person, bicycle, car" in classes["schema"]["description"]  # the loaded model's labels


def test_in_process_responses_conform(tmp_path, photo):
    """The same cases as the live test, through WSGI: the inner loop catches drift early."""
    app, client = _in_process(_settings(tmp_path))
    with client:
        document = client.get("http://test/openapi.json").json()
        check(client, "http://test", document, open_cases(photo))
    keyed_app, keyed_client = _in_process(_keyed(tmp_path))
    with keyed_client:
        check(keyed_client, "http://test", document, keyed_cases(photo))


def test_readyz_503_conforms(tmp_path):
    settings = {**_settings(tmp_path), "weights_dir": str(tmp_path)}  # no weights there
    app, client = _in_process(settings)
    with client:
        document = client.get("http://test/openapi.json").json()
        seen = check(client, "http://test", document, [Case("get", "/readyz", 503)])
    assert seen == NOT_LIVE


@pytest.mark.slow
def test_live_server_responses_conform_to_the_document(tmp_path, photo):
    """Every documented status of every endpoint, from a real gunicorn server, validated."""
    config = tmp_path / "detector.toml"
    config.write_text(
        f"max_upload_bytes = {MAX_UPLOAD_BYTES}\nmax_pixels = {MAX_PIXELS}\n", encoding="utf-8"
    )
    with LiveServer(workers=1, threads=4, env={"DETECTOR_CONFIG": str(config)}) as live:
        with live.client() as client:
            document = client.get(live.url + "/openapi.json").json()
            spec_validator.validate(document)
            seen = check(client, live.url, document, open_cases(photo))
    if HAS_KEYS:
        keyed = tmp_path / "keyed.toml"
        keyed.write_text(
            config.read_text(encoding="utf-8")
            + f'api_keys = ["{KEY}"]\nrequest_deadline_s = 1e-9\ndetection_limit_s = 60.0\n',
            encoding="utf-8",
        )
        with LiveServer(workers=1, threads=4, env={"DETECTOR_CONFIG": str(keyed)}) as live:
            with live.client() as client:
                seen |= check(client, live.url, document, keyed_cases(photo))
    missing = documented(document) - seen - NOT_LIVE
    if not HAS_KEYS:
        missing = {t for t in missing if t[2] not in (401, 503)}
    assert not missing, f"documented but never answered live: {sorted(missing)}"
