"""The lb's passive health check: a busy detector is not marked down, a dead one is.

Real nginx with the role's site rendered as the lb (two detectors, the helper's lb upstream:
least_conn, max_conns, max_fails=1 fail_timeout=10s) in front of real `detector serve`s that
admit one detection at a time (their own gate, sizing.admitted). The two detectors share one
port on 127.0.0.1 and 127.0.0.2, as the lb's single backend port requires.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from detector import sizing
from nginx_live import LiveNginx
from nginx_live import helper_module
from nginx_live import prepare_site
from svc_helpers import jpeg_bytes
from svc_helpers import require_weights
from svc_helpers import sample_image
from svc_live import LiveServer
from svc_live import free_port

DETECTORS = (("d1", "127.0.0.1"), ("d2", "127.0.0.2"))
CLIENTS = 6  # 3x what the two detectors admit at once
BURST_S = 10
DISABLED = "upstream server temporarily disabled"  # nginx's warning when max_fails is reached


def _sized() -> dict:
    return sizing.size(2, 8000, "yolov3-tiny", workers=1).__dict__.copy()


def _lb(tmp_path: Path, port: int) -> dict:
    """The lb site over both detectors on `port`, its upstream written by the helper."""
    (tmp_path / "lb").mkdir()
    sized = _sized()
    site = prepare_site(tmp_path / "lb", sized, nginx_lb_backends=[n for n, _ in DETECTORS])
    cfg = {
        **site["cfg"],
        "kind": "lb",
        "servers": [[name, address, sized["max_conns"]] for name, address in DETECTORS],
        "port": port,
    }
    upstream = helper_module().lb_upstream(cfg, [])
    assert "max_fails=1 fail_timeout=10s" in upstream and "least_conn;" in upstream
    (site["dir"] / "upstream.conf").write_text(upstream)
    return site


def _burst(url: str, client: httpx.Client, photo: bytes) -> list[tuple[int, str, str]]:
    """CLIENTS concurrent uploads, repeated until a busy 503 reached a client (bounded)."""
    rows: list[tuple[int, str, str]] = []
    lock = threading.Lock()
    stop = time.monotonic() + BURST_S

    def run() -> None:
        while time.monotonic() < stop and len(rows) < 400:
            answer = client.post(url, files={"file": ("coffee.jpg", photo)})
            with lock:
                rows.append((answer.status_code, answer.text, answer.headers.get("Retry-After")))
                if any("is busy" in r[1] for r in rows if r[0] == 503):
                    return

    threads = [threading.Thread(target=run) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BURST_S + 60)
    return rows


def test_a_busy_503_goes_to_the_client_and_does_not_mark_the_detector_down(tmp_path: Path):
    """Before, the lb retried a detector's busy 503 and counted it as a failure: one burst
    marked both detectors down for 10 s, then the lb refused everything (no live upstreams)."""
    require_weights()
    photo = jpeg_bytes(sample_image("coffee"))
    port = free_port()
    site = _lb(tmp_path, port)
    with (
        LiveServer(workers=1, host=DETECTORS[0][1], port=port),
        LiveServer(workers=1, host=DETECTORS[1][1], port=port),
        LiveNginx(site["dir"], site["port"], site["cert"]) as lb,
        lb.client(timeout=60) as client,
    ):
        url = lb.url + "/api/v1/detect"
        rows = _burst(url, client, photo)
        after = [client.post(url, files={"file": ("coffee.jpg", photo)}) for _ in range(6)]
        log = lb.error_log()
    statuses = {status for status, _, _ in rows}
    assert statuses <= {200, 503}, statuses
    busy = [row for row in rows if row[0] == 503 and "is busy" in row[1]]
    refused_by_lb = sum(row[0] == 503 and "retry shortly" in row[1] for row in rows)
    summary = (
        f"{len(rows)} requests: {sum(r[0] == 200 for r in rows)} served, {len(busy)} busy 503 "
        f"from a detector, {refused_by_lb} refused by the lb, {log.count(DISABLED)} detector(s) "
        "marked down"
    )
    print(summary)
    assert DISABLED not in log, summary
    assert busy, f"no busy 503 reached a client: {summary}"
    assert all(retry and retry.isdigit() for _, _, retry in busy), busy[:3]
    assert [a.status_code for a in after] == [200] * 6, [a.text for a in after]


def test_a_detector_whose_service_is_down_answers_502_and_the_lb_uses_the_other(
    tmp_path: Path,
):
    """d1's nginx is up, its service is not: its backend server answers the lb 502 JSON, which
    the lb retries on d2 and counts against d1 (passive health check)."""
    require_weights()
    photo = jpeg_bytes(sample_image("coffee"))
    port = free_port()
    site = _lb(tmp_path, port)
    (tmp_path / "d1").mkdir()
    dead = prepare_site(
        tmp_path / "d1",
        _sized(),
        nginx_backend_port=port,
        nginx_backend_address=DETECTORS[0][1],
    )
    with (
        LiveNginx(dead["dir"], dead["port"], dead["cert"], proxied=False) as d1,
        LiveServer(workers=1, host=DETECTORS[1][1], port=port),
        LiveNginx(site["dir"], site["port"], site["cert"]) as lb,
        lb.client(timeout=60) as client,
    ):
        direct = httpx.post(
            f"http://{DETECTORS[0][1]}:{port}/api/v1/detect",
            files={"file": ("coffee.jpg", photo)},
            timeout=30,
        )
        url = lb.url + "/api/v1/detect"
        answers = [client.post(url, files={"file": ("coffee.jpg", photo)}) for _ in range(6)]
        log = lb.error_log()
        assert d1.process is not None
    assert direct.status_code == 502, direct.text
    assert direct.headers["content-type"].startswith("application/json")
    assert "cannot answer" in direct.json()["error"]
    assert direct.headers["Retry-After"] == "1"
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    for answer in answers:
        assert any(d["label"] == "cup" for d in answer.json()["detections"])
    assert DISABLED in log, log[-2000:]  # d1 counted as failed, so skipped for fail_timeout


@pytest.fixture(autouse=True)
def _loopback_alias_works():
    """127.0.0.2 is loopback on Linux (127.0.0.0/8 on lo); skip where it is not."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.2", 0))
        except OSError as exc:
            pytest.skip(f"127.0.0.2 is not a local address here: {exc}")
