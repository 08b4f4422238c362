"""Health checks: a deadline poller, the idle color's smoke test on its socket, the HTTPS gate."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fabric import Connection

from deploy import commands
from deploy.inventory import Host
from deploy.remote import DeployError
from deploy.remote import probe

SMOKE_IMAGE = Path(__file__).with_name("smoke.jpg")
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


def detection_summary(body: str) -> tuple[bool, str]:
    """A detection answer is JSON with a detections list; summarize its labels."""
    try:
        data = json.loads(body)
    except ValueError:
        return False, f"not JSON: {body[:120]!r}"
    dets = data.get("detections") if isinstance(data, dict) else None
    if not isinstance(dets, list):
        return False, f"no detections list in {body[:120]!r}"
    labels = sorted({str(d.get("label")) for d in dets if isinstance(d, dict)})
    return True, f"{len(dets)} detection(s): {', '.join(labels) or 'none'}"


def smoke_color(c: Connection, host: Host, color: str, image_remote: str) -> str:
    """On the host: wait for the color's /readyz on its socket, then one real detection."""
    sock = host.socket(color)

    def ready() -> tuple[bool, str]:
        ok, out = probe(c, commands.curl_unix(sock, "/readyz", 10), timeout=20)
        code, body = parse_curl(out)
        return code == 200, f"/readyz {code or 'no answer'} {body[:100]}"

    wait_until(ready, host.gate_timeout_s, f"{commands.unit(host.service, color)} /readyz")
    ok, out = probe(c, commands.curl_unix(sock, "/api/v1/detect", 60, image_remote), timeout=75)
    code, body = parse_curl(out)
    good, summary = detection_summary(body)
    if code != 200 or not good:
        raise DeployError(f"smoke detection on {sock} answered {code}: {summary}")
    return summary


def _tls_context(ca_bundle: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_bundle or None)


def https(
    host: Host,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 60,
) -> Response:
    """One HTTPS request to the host's address with the domain as SNI and Host, chain verified."""
    ctx = _tls_context(host.ca_bundle)
    raw = socket.create_connection((host.address, port), timeout=timeout)
    conn = http.client.HTTPSConnection(host.domain, port, timeout=timeout, context=ctx)
    conn.sock = ctx.wrap_socket(raw, server_hostname=host.domain)
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


def detect(host: Host, port: int, image: bytes, timeout: float = 60) -> Response:
    """POST /api/v1/detect through nginx."""
    body, headers = multipart("file", "smoke.jpg", image)
    return https(host, port, "POST", "/api/v1/detect", body, headers, timeout)


def gate_once(host: Host, rid: str, image: bytes) -> tuple[bool, str]:
    """Every public port: /readyz 200, a real detection 200, both answered by release rid."""
    notes = []
    for port in host.https_ports:
        ready = https(host, port, "GET", "/readyz", timeout=15)
        served = ready.headers.get(RELEASE_HEADER.lower(), "")
        if ready.status != 200 or served != rid:
            return False, f":{port} /readyz {ready.status}, release {served or 'missing'} != {rid}"
        res = detect(host, port, image)
        served = res.headers.get(RELEASE_HEADER.lower(), "")
        good, summary = detection_summary(res.body.decode(errors="replace"))
        if res.status != 200 or not good or served != rid:
            return False, f":{port} detect {res.status}, release {served or 'missing'}: {summary}"
        notes.append(f":{port} {summary}")
    return True, "; ".join(notes)


def backend_gate_once(c: Connection, host: Host, rid: str, image_remote: str) -> tuple[bool, str]:
    """Behind a load balancer: the same checks through the host's nginx on its private port."""
    base = f"http://127.0.0.1:{host.backend_port}"
    ok, out = probe(c, commands.curl_http(base + "/readyz", 15), timeout=25)
    code, headers, _ = commands.parse_included(out)
    served = headers.get(RELEASE_HEADER.lower(), "")
    if code != 200 or served != rid:
        return False, f":{host.backend_port} /readyz {code}, release {served or 'missing'} != {rid}"
    argv = commands.curl_http(base + "/api/v1/detect", 60, image_remote)
    ok, out = probe(c, argv, timeout=75)
    code, headers, body = commands.parse_included(out)
    served = headers.get(RELEASE_HEADER.lower(), "")
    good, summary = detection_summary(body)
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
    return wait_until(lambda: gate_once(host, rid, image), host.gate_timeout_s, f"{host.domain}")
