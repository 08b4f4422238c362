"""Bounds through a real `detector serve` (gunicorn) on 127.0.0.1: memory, overload, 413."""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest
import requests
from corpus import build
from corpus import noise_jpeg
from detector import sizing
from svc_helpers import ROOT
from svc_helpers import jpeg_bytes
from svc_helpers import require_weights
from svc_helpers import sample_image
from svc_live import LiveServer

pytestmark = pytest.mark.slow
ARTIFACTS = ROOT / "test-artifacts"
PEAK_LIMIT_MB = 450
ANSWER_LIMIT_S = 20
ENDPOINTS = ("/api/v1/detect", "/")
MIB = 1 << 20


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{key} missing for pid {pid}")


def _report(name: str, lines: list[str]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("corpus"))


def _fresh_worker(live: LiveServer, old: int | None) -> int:
    """Stop the worker by its PID (gunicorn forks a new one) and wait until the new one serves."""
    if old is not None:
        os.kill(old, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        pids = [pid for pid in live.worker_pids() if pid != old]
        if pids and httpx.get(live.url + "/readyz", timeout=30).status_code == 200:
            return pids[0]
        time.sleep(0.2)
    raise AssertionError("no fresh worker within 90 s")


def test_any_accepted_upload_stays_within_the_worker_memory_bound(corpus):
    """Default limits (20 MiB, 50 MP, 350 MB decode budget): each file on a fresh worker."""
    require_weights()
    lines = []
    failures = []
    log = ARTIFACTS / "decode-memory-server.log"
    ARTIFACTS.mkdir(exist_ok=True)
    with LiveServer(workers=1, threads=3, log_path=log) as live:
        worker = None
        with httpx.Client(timeout=60) as client:
            for name, path in corpus.items():
                data = path.read_bytes()
                for url in ENDPOINTS:
                    worker = _fresh_worker(live, worker)
                    before = _status_mb(worker, "VmRSS")
                    started = time.perf_counter()
                    response = client.post(live.url + url, files={"file": (name, data)})
                    elapsed = time.perf_counter() - started
                    rise = _status_mb(worker, "VmHWM") - before
                    verdict = response.status_code
                    lines.append(
                        f"{name:22} {len(data) / 1024:6.0f} KB {url:15} {verdict} "
                        f"+{rise:4.0f} MB {elapsed:4.1f} s"
                        + (f"  {response.json()['error'][:60]}" if verdict != 200 else "")
                    )
                    if verdict != 200 and not 400 <= verdict < 500:
                        failures.append(f"{name} {url}: status {verdict}")
                    if verdict != 200 and "error" not in response.json():
                        failures.append(f"{name} {url}: no JSON error")
                    if rise > PEAK_LIMIT_MB or elapsed > ANSWER_LIMIT_S:
                        failures.append(f"{name} {url}: +{rise:.0f} MB, {elapsed:.1f} s")
                    if live.process.poll() is not None:
                        failures.append(f"{name} {url}: the server died")
                        break
    _report("decode-memory.txt", lines)
    assert not failures, failures
    assert "Traceback" not in log.read_text(errors="replace"), f"a traceback in {log}"


def test_concurrent_drawn_replies_stay_within_the_worker_memory_bound(tmp_path):
    """Three clients send a 17 MB, 50 MP noise photo to / for 10 s (busy answers retried at once).

    Each reply holds a full-size image and a ~40 MB JPEG after its detection has left the
    admission gate; measured before the fixes: +571 MB on one worker.
    """
    require_weights()
    data = noise_jpeg()
    statuses: list[int] = []
    with LiveServer(workers=1, threads=3) as live:
        worker = _fresh_worker(live, None)
        before = _status_mb(worker, "VmRSS")
        stop = time.monotonic() + 10

        def send() -> None:
            with httpx.Client(timeout=60) as client:
                while time.monotonic() < stop:
                    response = client.post(live.url + "/", files={"file": ("noise.jpg", data)})
                    statuses.append(response.status_code)

        clients = [threading.Thread(target=send) for _ in range(3)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(90)
        rise = _status_mb(worker, "VmHWM") - before
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    _report("decode-memory-concurrent.txt", [f"noise-jpeg 3 clients on /: +{rise:.0f} MB {counts}"])
    assert set(counts) <= {200, 503} and counts.get(200)
    assert rise <= PEAK_LIMIT_MB


def test_oversized_upload_gets_413_json_not_a_reset():
    """Python requests writes the whole body before reading: the answer must still be JSON."""
    require_weights()
    body = b"\xff\xd8\xff" + b"\0" * (20 * 1024 * 1024 + 4096)
    with LiveServer(workers=1, threads=3) as live:
        for url in ENDPOINTS:
            response = requests.post(
                live.url + url, data=body, headers={"Content-Type": "image/jpeg"}, timeout=60
            )
            assert response.status_code == 413, url
            assert "larger than the limit" in response.json()["error"]
            multipart = requests.post(live.url + url, files={"file": ("big.jpg", body)}, timeout=60)
            assert multipart.status_code == 413, url
            chunked = requests.post(  # no Content-Length: werkzeug cuts the body at the limit
                live.url + url,
                data=iter([body[i : i + MIB] for i in range(0, len(body), MIB)]),
                headers={"Content-Type": "image/jpeg"},
                timeout=60,
            )
            assert chunked.status_code == 413, (url, chunked.text)
        assert requests.get(live.url + "/healthz", timeout=10).status_code == 200


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def test_overload_is_answered_503_with_retry_after_quickly():
    """3x the admitted concurrency for 10 s: admitted p99 stays ~2x unloaded, the rest fail fast."""
    require_weights()
    data = jpeg_bytes(sample_image("coffee"))
    with LiveServer(workers=1, threads=3) as live:
        url = live.url + "/api/v1/detect"
        with httpx.Client(timeout=60) as client:
            client.post(url, files={"file": ("c.jpg", data)})
            unloaded = []
            for _ in range(40):
                started = time.perf_counter()
                assert client.post(url, files={"file": ("c.jpg", data)}).status_code == 200
                unloaded.append(time.perf_counter() - started)
        capacity = sizing.admitted(1)  # one worker
        results: list[tuple[int, float, str | None]] = []
        stop = time.monotonic() + 10

        def load() -> None:
            with httpx.Client(timeout=60) as client:
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    response = client.post(url, files={"file": ("c.jpg", data)})
                    elapsed = time.perf_counter() - started
                    retry = response.headers.get("Retry-After")
                    results.append((response.status_code, elapsed, retry))
                    if retry:  # a well-behaved client waits as told
                        time.sleep(min(float(retry), max(0.0, stop - time.monotonic())))

        clients = [threading.Thread(target=load) for _ in range(3 * capacity)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
    admitted = [elapsed for status, elapsed, _ in results if status == 200]
    refused = [(elapsed, retry) for status, elapsed, retry in results if status == 503]
    assert {status for status, _, _ in results} <= {200, 503}
    lines = [
        f"unloaded: n={len(unloaded)} p50={statistics.median(unloaded):.3f} s "
        f"p99={_p99(unloaded):.3f} s",
        f"loaded x{3 * capacity} clients 10 s: admitted n={len(admitted)} "
        f"p50={statistics.median(admitted):.3f} s p99={_p99(admitted):.3f} s",
        f"refused 503: n={len(refused)} p99={_p99([e for e, _ in refused]):.3f} s "
        f"max={max(e for e, _ in refused):.3f} s",
    ]
    _report("overload.txt", lines)
    # The excess is refused, not queued (without the gate all six clients queue in the worker and
    # none is refused), and told when to come back. The latencies are measured and reported in
    # test-artifacts/overload.txt (README: Overload), not asserted: the machine is shared.
    assert refused and all(retry and int(retry) >= 1 for _, retry in refused)
    assert admitted, "no request was admitted under load"
