"""nginx's own answers (413, 503 busy/down) carry the service's CORS headers for allowed origins.

The real site (nginx role templates) in front of a real `detector serve` on a unix socket: a
cross-origin page must be able to read nginx's busy answer and its Retry-After, or it sees a
network error instead. The service's own answers keep exactly its headers (no duplicates).
"""

from __future__ import annotations

from pathlib import Path

from detector import cors
from detector import sizing
from nginx_live import LiveNginx
from nginx_live import nginx_test
from nginx_live import prepare_site
from svc_helpers import require_weights
from svc_live import LiveServer

ORIGIN = "https://page.example"
OTHER = "https://other.example:8443"
BODY_LIMIT = 4096  # nginx's client_max_body_size here: a bigger body gets nginx's own 413


def _sizing() -> dict:
    return sizing.size(2, 8000, "yolov3-tiny", workers=1).__dict__.copy()


def _cors(response) -> tuple[list[str], str | None]:
    return response.headers.get_list("access-control-allow-origin"), response.headers.get(
        "access-control-expose-headers"
    )


def test_nginx_answers_itself_with_the_services_cors_headers(tmp_path: Path):
    require_weights()
    # The inventory lists the origins as the service reads them: a trailing "/" is dropped.
    origins = [ORIGIN + "/", OTHER]
    site = prepare_site(
        tmp_path, _sizing(), nginx_cors_origins=origins, nginx_client_max_body_size=BODY_LIMIT
    )
    socket = site["sockets"] / "blue.sock"
    env = {"DETECTOR_CORS_ORIGINS": ",".join(origins)}
    too_big = {"file": ("big.jpg", b"\xff\xd8\xff" + b"\0" * (2 * BODY_LIMIT))}
    nginx = LiveNginx(site["dir"], site["port"], site["cert"])
    try:
        with LiveServer(workers=1, threads=2, uds=socket, env=env):
            nginx.start()
            with nginx.client(timeout=30) as client:
                served = client.get(nginx.url + "/healthz", headers={"Origin": ORIGIN})
                refused = client.post(
                    nginx.url + "/api/v1/detect", files=too_big, headers={"Origin": OTHER}
                )
                stranger = client.post(
                    nginx.url + "/api/v1/detect",
                    files=too_big,
                    headers={"Origin": "https://x.test"},
                )
        # The service is gone: nginx's own 503 JSON (upstream down or full: the same answer).
        with nginx.client(timeout=30) as client:
            answers = {
                origin: client.post(
                    nginx.url + "/api/v1/detect",
                    files={"file": ("a.jpg", b"\xff\xd8\xff")},
                    headers={"Origin": origin},
                )
                for origin in (ORIGIN, OTHER, ORIGIN.upper(), "https://x.test")
            }
    finally:
        nginx.stop()
    # The service answered: its own headers, once (nginx adds no second value).
    assert served.status_code == 200
    assert _cors(served) == ([ORIGIN], cors.EXPOSE_HEADERS)
    assert served.headers.get_list("vary") == ["Origin"]
    # nginx's own 413: an allowed origin can read it; another origin gets no CORS headers.
    assert refused.status_code == 413 and "error" in refused.json()
    assert _cors(refused) == ([OTHER], cors.EXPOSE_HEADERS)
    assert refused.headers.get_list("vary") == ["Origin"]
    assert stranger.status_code == 413 and _cors(stranger) == ([], None)
    for origin, response in answers.items():
        assert response.status_code == 503, (origin, response.text)
        assert response.json() == {"error": "service unavailable or busy; retry shortly"}
        assert response.headers["Retry-After"] == "1"
        allowed = origin in (ORIGIN, OTHER)  # exact match, like detector/cors.py
        assert _cors(response) == (([origin], cors.EXPOSE_HEADERS) if allowed else ([], None))


def test_any_origin_star_and_no_origins_render_valid_nginx(tmp_path: Path):
    for name, origins, default in (("star", ["*"], "$http_origin"), ("none", [], '""')):
        (tmp_path / name).mkdir()
        site = prepare_site(tmp_path / name, _sizing(), nginx_cors_origins=origins)
        text = (site["dir"] / "conf.d" / "detector.conf").read_text()
        assert f"map $http_origin $detector_cors_allowed {{\n    default {default};\n}}" in text
        result = nginx_test(site["dir"])
        assert result.returncode == 0, result.stderr
