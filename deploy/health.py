"""Health checks: a deadline poller, the idle color's smoke test on its socket, the HTTPS gate.

Every check wants the upload page (`GET /`: 200, HTML, the page's file input) and a real
detection of deploy/smoke.jpg that finds what the picture shows (a cup): an empty answer fails.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fabric import Connection

from deploy import commands
from deploy import tls
from deploy.inventory import Host
from deploy.remote import DeployError
from deploy.remote import probe

SMOKE_IMAGE = Path(__file__).with_name("smoke.jpg")
# What yolov3 and yolov3-tiny (416) find in smoke.jpg (a coffee cup, scikit-image, CC0); a model
# or size that misses it sets detector_deploy_smoke_labels in the inventory.
SMOKE_LABELS = ("cup",)
PAGE_MARKER = 'id="file-input"'  # the upload page's file input (service/detector/templates)
RELEASE_HEADER = "X-Detector-Release"


@dataclass
class Response:
    """An HTTP answer reduced to what the checks need."""

    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body.decode())


def wait_until(check: Callable[[], tuple[bool, str]], timeout: float, what: str) -> str:
    """Poll check() until it passes or the deadline, sleeping min(attempt, time left) like Kamal."""
    deadline = time.monotonic() + timeout
    attempt, last = 0, "no attempt"
    while True:
        attempt += 1
        try:
            ok, last = check()
        except (OSError, ValueError, DeployError) as exc:
            ok, last = False, f"{type(exc).__name__}: {exc}"
        if ok:
            return last
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeployError(f"{what} not healthy after {timeout:.0f}s; last status: {last}")
        time.sleep(min(attempt, left))


def parse_curl(out: str) -> tuple[int, str]:
    """Split curl's `body\\nstatus` output."""
    body, _, code = out.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def expected_labels(host: Host) -> tuple[str, ...]:
    """The labels the smoke image must yield on host (inventory override, else SMOKE_LABELS)."""
    return host.smoke_labels or SMOKE_LABELS


def detection_summary(body: str, expected: tuple[str, ...] = SMOKE_LABELS) -> tuple[bool, str]:
    """A detection answer is JSON whose detections include every expected label; summarize it."""
    try:
        data = json.loads(body)
    except ValueError:
        return False, f"not JSON: {body[:120]!r}"
    dets = data.get("detections") if isinstance(data, dict) else None
    if not isinstance(dets, list):
        return False, f"no detections list in {body[:120]!r}"
    labels = sorted({str(d.get("label")) for d in dets if isinstance(d, dict)})
    summary = f"{len(dets)} detection(s): {', '.join(labels) or 'none'}"
    missing = [label for label in expected if label not in labels]
    if missing:
        return False, f"{summary}; the smoke image must yield {', '.join(missing)}"
    return True, summary


def key_required(status: int, headers: dict, served: str, rid: str) -> bool:
    """True when the release rid refused the detection for want of an API key (keys are on).

    fab holds no API key (they live in the vault). With detector_api_keys set, a detection
    through nginx answers 401 with WWW-Authenticate from the service itself, carrying the
    release header: nginx routes to rid and rid enforces keys. The real detection on rid was
    the smoke check on its socket, which needs no key (detector_api_keys_local_exempt).
    """
    challenge = headers.get("www-authenticate", "").lower()
    return status == 401 and challenge.startswith("bearer") and served == rid


def page_summary(status: int, content_type: str, body: str) -> tuple[bool, str]:
    """GET / must serve the upload page: 200, text/html, with the page's file input."""
    if status != 200:
        return False, f"GET / answered {status or 'nothing'}"
    if content_type and not content_type.startswith("text/html"):
        return False, f"GET / served {content_type}, not the upload page"
    if PAGE_MARKER not in body:
        return False, f"GET / lacks the upload page's {PAGE_MARKER}: {body[:80]!r}"
    return True, "page ok"


def smoke_color(c: Connection, host: Host, color: str, image_remote: str) -> str:
    """On the host: wait for the color's /readyz on its socket, then one real detection."""
    sock = host.socket(color)

    def ready() -> tuple[bool, str]:
        ok, out = probe(c, commands.curl_unix(sock, "/readyz", 10), timeout=20)
        code, body = parse_curl(out)
        return code == 200, f"/readyz {code or 'no answer'} {body[:100]}"

    wait_until(ready, host.gate_timeout_s, f"{commands.unit(host.service, color)} /readyz")
    ok, out = probe(c, commands.curl_unix(sock, "/", 20), timeout=30)
    code, body = parse_curl(out)
    good, summary = page_summary(code, "", body)  # curl_unix shows no headers: judge the body
    if not good:
        raise DeployError(f"upload page on {sock}: {summary}")
    ok, out = probe(c, commands.curl_unix(sock, "/api/v1/detect", 60, image_remote), timeout=75)
    code, body = parse_curl(out)
    good, summary = detection_summary(body, expected_labels(host))
    if code != 200 or not good:
        raise DeployError(f"smoke detection on {sock} answered {code}: {summary}")
    return summary


def https(
    host: Host,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 60,
    trust: tls.Trust | None = None,
) -> Response:
    """One HTTPS request to the host's address with the domain as SNI and Host.

    The certificate is checked per trust (default: tls.trust_for(None, host): the inventory's CA
    file or the system CAs; a staging host needs the pinned trust from tls.trust_for(c, host)).
    """
    trust = trust or tls.trust_for(None, host)
    conn = http.client.HTTPSConnection(host.domain, port, timeout=timeout)
    conn.sock = tls.wrap(host, port, trust, timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def multipart(field: str, filename: str, data: bytes, ctype: str = "image/jpeg"):
    """Encode one file as multipart/form-data; returns (body, headers)."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def detect(
    host: Host, port: int, image: bytes, timeout: float = 60, trust: tls.Trust | None = None
) -> Response:
    """POST /api/v1/detect through nginx."""
    body, headers = multipart("file", "smoke.jpg", image)
    return https(host, port, "POST", "/api/v1/detect", body, headers, timeout, trust)


def gate_once(
    host: Host, rid: str, image: bytes, trust: tls.Trust | None = None
) -> tuple[bool, str]:
    """Every public port: /readyz 200, the upload page, the smoke image's labels, all from rid."""
    trust = trust or tls.trust_for(None, host)
    notes = []
    for port in host.https_ports:
        ready = https(host, port, "GET", "/readyz", timeout=15, trust=trust)
        served = ready.headers.get(RELEASE_HEADER.lower(), "")
        if ready.status != 200 or served != rid:
            return False, f":{port} /readyz {ready.status}, release {served or 'missing'} != {rid}"
        page = https(host, port, "GET", "/", timeout=15, trust=trust)
        good, summary = page_summary(
            page.status, page.headers.get("content-type", ""), page.body.decode(errors="replace")
        )
        if not good:
            return False, f":{port} {summary}"
        res = detect(host, port, image, trust=trust)
        served = res.headers.get(RELEASE_HEADER.lower(), "")
        if key_required(res.status, res.headers, served, rid):
            notes.append(f":{port} detection needs an API key (401 from {rid})")
            continue
        good, summary = detection_summary(res.body.decode(errors="replace"), expected_labels(host))
        if res.status != 200 or not good or served != rid:
            return False, f":{port} detect {res.status}, release {served or 'missing'}: {summary}"
        notes.append(f":{port} {summary}")
    return True, "; ".join(notes) + f" ({trust.describe()})"


def backend_gate_once(c: Connection, host: Host, rid: str, image_remote: str) -> tuple[bool, str]:
    """Behind a load balancer: the same checks through the host's nginx on its private port."""
    base = f"http://127.0.0.1:{host.backend_port}"
    ok, out = probe(c, commands.curl_http(base + "/readyz", 15), timeout=25)
    code, headers, _ = commands.parse_included(out)
    served = headers.get(RELEASE_HEADER.lower(), "")
    if code != 200 or served != rid:
        return False, f":{host.backend_port} /readyz {code}, release {served or 'missing'} != {rid}"
    ok, out = probe(c, commands.curl_http(base + "/", 15), timeout=25)
    code, headers, body = commands.parse_included(out)
    good, summary = page_summary(code, headers.get("content-type", ""), body)
    if not good:
        return False, f":{host.backend_port} {summary}"
    argv = commands.curl_http(base + "/api/v1/detect", 60, image_remote)
    ok, out = probe(c, argv, timeout=75)
    code, headers, body = commands.parse_included(out)
    served = headers.get(RELEASE_HEADER.lower(), "")
    if key_required(code, headers, served, rid):
        return True, f":{host.backend_port} detection needs an API key (401 from {rid})"
    good, summary = detection_summary(body, expected_labels(host))
    if code != 200 or not good or served != rid:
        port = host.backend_port
        return False, f":{port} detect {code}, release {served or 'missing'}: {summary}"
    return True, f":{host.backend_port} {summary}"


def gate(host: Host, rid: str, c: Connection | None = None, image_remote: str = "") -> str:
    """The health gate through nginx, polled to the inventory's deadline.

    A host behind a load balancer (backend_port) is gated on the host over SSH, since its
    firewall admits the private port only from the lb; the public ports are the lb's.
    """
    if host.backend_port and c is not None and image_remote:
        what = f"{host.name}:{host.backend_port}"
        check = lambda: backend_gate_once(c, host, rid, image_remote)  # noqa: E731
        return wait_until(check, host.gate_timeout_s, what)
    image = SMOKE_IMAGE.read_bytes()
    trust = tls.trust_for(c, host)
    check = lambda: gate_once(host, rid, image, trust)  # noqa: E731
    return wait_until(check, host.gate_timeout_s, f"{host.domain}")
