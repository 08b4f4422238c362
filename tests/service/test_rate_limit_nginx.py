"""nginx's per-client rate counts detections only: a page load is never refused, a POST burst is.

The real site (nginx role templates) with a strict per-client rate, run by the real nginx in
front of a real `detector serve` on a unix socket, as tests/service/test_bounds_nginx.py does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from detector import sizing
from nginx_live import LiveNginx
from nginx_live import prepare_site
from svc_helpers import jpeg_bytes
from svc_helpers import require_weights
from svc_helpers import sample_image
from svc_live import LiveServer

STRICT = {"nginx_rate_limit": "1r/m", "nginx_rate_burst": 1, "nginx_conn_limit": 10}
PAGE = ("/", "/static/app.js", "/static/style.css", "/healthz", "/readyz", "/version")


@pytest.fixture
def site(tmp_path: Path):
    sized = sizing.size(2, 8000, "yolov3-tiny", workers=1, worker_threads=2)
    return prepare_site(tmp_path, sized.__dict__.copy(), **STRICT)


def test_page_loads_pass_and_detections_over_the_rate_get_429_json(site):
    require_weights()
    photo = jpeg_bytes(sample_image("coffee"))
    with LiveServer(workers=1, threads=2, uds=site["sockets"] / "blue.sock"):
        with LiveNginx(site["dir"], site["port"], site["cert"]) as nginx:
            with nginx.client(timeout=60) as client:
                pages = [client.get(nginx.url + path) for _ in range(3) for path in PAGE]
                posts = [
                    client.post(nginx.url + "/api/v1/detect", files={"file": ("c.jpg", photo)})
                    for _ in range(3)
                ]
                after = client.get(nginx.url + "/")
    # 18 GETs from one address at once under a rate of 1 a minute: none is refused
    assert [(r.url.path, r.status_code) for r in pages] == [(r.url.path, 200) for r in pages]
    codes = [r.status_code for r in posts]
    assert codes == [200, 200, 429], codes  # the rate's one, the burst's one, then refused
    assert any(d["label"] == "cup" for d in posts[0].json()["detections"])
    refused = posts[2]
    assert refused.headers["content-type"].startswith("application/json")
    assert "too many requests" in refused.json()["error"]
    assert refused.headers["Retry-After"] == "1"
    assert after.status_code == 200  # the page still loads for the refused client


# The role's own chain: detector_rate_limit / _burst / conn_limit from the host's sizing.
ROLE_DEFAULTS = {
    "nginx_rate_limit": "{{ detector_rate_limit }}",
    "nginx_rate_burst": "{{ detector_rate_burst }}",
    "nginx_conn_limit": "{{ detector_conn_limit }}",
}


def test_a_client_that_waits_for_its_answers_is_never_refused_at_the_default_rate(tmp_path):
    """A 2-core yolov3-tiny host's defaults: one client posting back to back (each request after
    the previous answer) is served every time; the host, not nginx's rate, sets its pace."""
    require_weights()
    sized = sizing.size(2, 8000, "yolov3-tiny")
    site = prepare_site(tmp_path, sized.__dict__.copy(), **ROLE_DEFAULTS)
    conf = (site["dir"] / "conf.d" / "detector.conf").read_text()
    assert f"rate={sized.rate_per_s}r/s;" in conf and f"burst={sized.max_inflight} " in conf
    photo = jpeg_bytes(sample_image("coffee"))
    socket = site["sockets"] / "blue.sock"
    with LiveServer(workers=sized.workers, threads=sized.threads, uds=socket):
        with LiveNginx(site["dir"], site["port"], site["cert"]) as nginx:
            with nginx.client(timeout=60) as client:
                codes = [
                    client.post(
                        nginx.url + "/api/v1/detect", files={"file": ("c.jpg", photo)}
                    ).status_code
                    for _ in range(40)
                ]
    assert codes == [200] * 40, codes
