"""nginx bounds the queue: upstream max_conns from the sizing rule, the excess a quick 503 JSON.

The real site (nginx role templates), the helper's config (deploy_access template) and the
upstream the helper writes from it, run by the real nginx (2 workers) on 127.0.0.1 in front
of a real `detector serve` on a unix socket.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from detector import sizing
from nginx_live import LiveNginx
from nginx_live import helper_module
from nginx_live import nginx_test
from nginx_live import prepare_site
from svc_helpers import ROOT
from svc_helpers import jpeg_bytes
from svc_helpers import require_weights
from svc_helpers import sample_image
from svc_live import LiveServer

ARTIFACTS = ROOT / "test-artifacts"
MAX_CONNS = 2
EXCESS = 8
# The service admits every held request (its own gate, 1 per worker, is tested elsewhere):
# these tests are about nginx's bound alone.
HOLD_ALL = {"DETECTOR_MAX_INFLIGHT": str(MAX_CONNS)}


def _sizing(workers: int, threads: int) -> dict:
    """What detector/sizing.py prints for a host, with the given workers and threads."""
    sized = sizing.size(2, 8000, "yolov3-tiny", workers=workers, worker_threads=threads)
    return sized.__dict__.copy()


@pytest.fixture
def site(tmp_path: Path):
    return prepare_site(tmp_path, _sizing(1, MAX_CONNS))


def test_the_sized_upstream_bound_reaches_nginx_and_passes_nginx_t(site):
    assert site["cfg"]["max_conns"] == MAX_CONNS  # sizing.max_conns -> helper config
    upstream = (site["dir"] / "upstream.conf").read_text()
    assert "zone detector_upstream 64k;" in upstream  # counted over all nginx workers
    assert f"blue.sock max_conns={MAX_CONNS};" in upstream
    result = nginx_test(site["dir"])
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_the_sizing_rule_bounds_nginx_at_what_the_workers_serve():
    for workers in (1, 2, 4):
        sized = sizing.size(8, 64000, "yolov3", workers=workers)
        assert sized.max_conns == workers * sized.threads  # one thread per passed connection
        assert sized.max_conns > sized.max_inflight  # a thread left for health and the page


def _post(client, url: str, data: bytes, into: list) -> None:
    started = time.perf_counter()
    response = client.post(url, files={"file": ("coffee.jpg", data)})
    into.append((response, time.perf_counter() - started))


def _hold_and_probe(live, nginx, photo: bytes, headers: dict | None = None):
    """Stop the one worker (SIGSTOP by PID), let MAX_CONNS requests reach it through nginx, send
    EXCESS more, then let it go. Return (held, refused, the next answer after it, nginx's log).
    """
    (worker,) = live.worker_pids()
    url = nginx.url + "/api/v1/detect"
    files = {"file": ("coffee.jpg", photo)}
    held: list = []
    refused: list = []
    with nginx.client(timeout=60) as client:
        holders = [
            threading.Thread(target=_post, args=(client, url, photo, held))
            for _ in range(MAX_CONNS)
        ]
        os.kill(worker, signal.SIGSTOP)
        try:
            for thread in holders:
                thread.start()
            time.sleep(1.5)  # let nginx connect them to the stopped worker (no assert)
            with nginx.client(timeout=20) as probe:
                for _ in range(EXCESS):
                    started = time.perf_counter()
                    response = probe.post(url, files=files, headers=headers)
                    refused.append((response, time.perf_counter() - started))
            assert held == []  # the first MAX_CONNS still wait for the stopped worker
        finally:
            os.kill(worker, signal.SIGCONT)
            for thread in holders:
                thread.join(60)
        after = client.post(url, files=files)
    return held, refused, after, nginx.error_log()


def test_excess_over_max_conns_gets_a_503_json_at_once_while_the_workers_are_held(site):
    """The worker is stopped (SIGSTOP by PID): requests nginx passed cannot be answered, so
    every excess answer comes from nginx's bound, not from a queue that drained."""
    require_weights()
    photo = jpeg_bytes(sample_image("coffee"))
    socket = site["sockets"] / "blue.sock"
    with LiveServer(workers=1, threads=MAX_CONNS, uds=socket, env=HOLD_ALL) as live:
        with LiveNginx(site["dir"], site["port"], site["cert"]) as nginx:
            held, refused, after, log = _hold_and_probe(live, nginx, photo)
    for response, _ in refused:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {"error": "service unavailable or busy; retry shortly"}
        assert response.headers["Retry-After"] == "1"
    assert "no live upstreams" in log  # nginx's own bound refused them, not the service
    assert [r.status_code for r, _ in held] == [200] * MAX_CONNS
    for response, _ in held:
        assert any(d["label"] == "cup" for d in response.json()["detections"])
    assert after.status_code == 200  # the bound frees with the answers
    seconds = sorted(s for _, s in refused)
    lines = [
        f"nginx max_conns={MAX_CONNS}, 2 nginx workers, detector serve 1 worker (stopped):",
        f"{EXCESS} excess requests, all 503 JSON with Retry-After; answer time "
        f"min {seconds[0] * 1000:.0f} ms, median {seconds[len(seconds) // 2] * 1000:.0f} ms, "
        f"max {seconds[-1] * 1000:.0f} ms (reported, not asserted)",
    ]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "nginx-max-conns.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def test_the_lb_bounds_each_detector_and_answers_the_excess_503_json_at_once(tmp_path: Path):
    """The lb's upstream (the helper's lb_upstream) passes a detector at most its max_conns;
    with it full, the lb itself answers the same quick 503 JSON + Retry-After (issue 13.8)."""
    require_weights()
    photo = jpeg_bytes(sample_image("coffee"))
    sized = _sizing(1, MAX_CONNS)
    site = prepare_site(
        tmp_path, sized, nginx_lb_backends=["d1"], nginx_cors_origins=["https://page.example"]
    )
    with LiveServer(workers=1, threads=MAX_CONNS, env=HOLD_ALL) as live:
        cfg = {
            **site["cfg"],
            "kind": "lb",
            "servers": [["d1", "127.0.0.1", sized["max_conns"]]],
            "port": live.port,
        }
        upstream = helper_module().lb_upstream(cfg, [])
        (site["dir"] / "upstream.conf").write_text(upstream)
        assert f"127.0.0.1:{live.port} max_fails=1 fail_timeout=10s max_conns={MAX_CONNS};" in (
            upstream
        )
        assert "zone detector_upstream 64k;" in upstream
        with LiveNginx(site["dir"], site["port"], site["cert"]) as nginx:
            origin = {"Origin": "https://page.example"}
            held, refused, after, log = _hold_and_probe(live, nginx, photo, origin)
    for response, _ in refused:
        assert response.status_code == 503, response.text
        assert response.json() == {"error": "service unavailable or busy; retry shortly"}
        assert response.headers["Retry-After"] == "1"
        assert response.headers["Access-Control-Allow-Origin"] == "https://page.example"
    assert "no live upstreams" in log  # the lb's own bound refused them
    assert [r.status_code for r, _ in held] == [200] * MAX_CONNS
    assert after.status_code == 200
    seconds = sorted(s for _, s in refused)
    print(
        f"lb max_conns={MAX_CONNS} per detector, detector stopped: {EXCESS} excess -> 503 in "
        f"{seconds[0] * 1000:.0f}-{seconds[-1] * 1000:.0f} ms (reported, not asserted)"
    )
