"""`fab status` fails loudly on a certificate near expiry or a failed renewal (real SSH and TLS)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

import pytest
from pki_helpers import DOMAIN
from pki_helpers import make_pki
from ssh_helpers import local_server

from deploy import cert
from deploy import inventory
from deploy import remote
from deploy import status

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))
MARKER = "unit=detector-certbot-renew.service\nat=2026-12-01T12:00:02Z\n"


def _tls_server(tmp: Path, days: int):
    """A real HTTPS server on 127.0.0.1 with a leaf valid for days; returns (server, ca path)."""
    from werkzeug.serving import make_server

    ca, leaf, key, _ = make_pki(tmp, days)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"model": "yolov3-tiny", "engine": "openvino", "precision": "bf16"}']

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(leaf), str(key))
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ctx)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, ca


@pytest.fixture
def bed(tmp_path, monkeypatch):
    """An inventory naming a real SSH server and a real HTTPS server (10 days left) here."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    ssh, known = local_server(tmp_path)
    https, ca = _tls_server(tmp_path, days=10)
    state = tmp_path / "state"
    state.mkdir()
    hostvars = {
        "ansible_host": "127.0.0.1",
        "detector_ssh_port": ssh.port,
        "ansible_ssh_private_key_file": str(tmp_path / "id_ed25519"),
        "detector_ssh_known_hosts": str(known),
        "detector_deploy_user": "deploy",
        "detector_domain": DOMAIN,
        "detector_https_ports": [https.server_port],
        "detector_deploy_ca_bundle": str(ca),
        "detector_cert_state_dir": str(state),
        "detector_app_root": str(tmp_path / "app"),
    }
    inv = tmp_path / "inventory"
    inv.mkdir()
    tree = {"all": {"children": {"detector": {"hosts": {"web1": hostvars}}}}}
    (inv / "hosts.yml").write_text(json.dumps(tree))
    yield inv, state, https.server_port
    https.shutdown()
    https.server_close()
    ssh.close()


def test_expiry_under_14_days_is_a_problem():
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    soon = cert.Served(443, "ab", now + timedelta(days=13, hours=23))
    later = cert.Served(443, "ab", now + timedelta(days=14, hours=1))
    assert "in 14.0 days (under 14); renew it with `fab renew-cert --force`" in (
        status.expiry_problem(soon, now)
    )
    assert status.expiry_problem(later, now) == ""


def test_a_renewal_marker_is_a_problem_naming_the_unit():
    problem = status.renewal_problem(MARKER)
    assert problem.startswith(
        "certificate renewal FAILED (detector-certbot-renew.service at 2026-12-01T12:00:02Z)"
    )
    assert "journalctl -u detector-certbot-renew.service" in problem
    assert status.renewal_problem("") == ""


def test_certificates_reads_the_marker_over_ssh_and_the_served_leaf(bed):
    inv, state, port = bed
    (host,) = inventory.load(str(inv))
    c = remote.connect(host)
    try:
        healthy_now = datetime.now(timezone.utc) - timedelta(days=30)  # 40 days left then
        calm = status.certificates(c, host, healthy_now)
        (state / status.RENEWAL_MARKER).write_text(MARKER)
        alarmed = status.certificates(c, host)
    finally:
        c.close()
    assert calm.problems == []
    assert "last certificate renewal run: ok" in calm.lines
    assert len(alarmed.problems) == 2
    assert alarmed.problems[0].startswith("certificate renewal FAILED")
    assert alarmed.problems[1].startswith(f":{port} certificate expires ")
    assert "(under 14)" in alarmed.problems[1]


def test_a_port_that_serves_no_certificate_fails_the_check(bed):
    inv, _, port = bed
    (host,) = inventory.load(str(inv))
    with socket.create_server(("127.0.0.1", 0)) as probe_sock:
        closed = probe_sock.getsockname()[1]  # nothing listens there once this block ends
    down = dataclasses.replace(host, https_ports=(port, closed))
    c = remote.connect(down)
    try:
        healthy_now = datetime.now(timezone.utc) - timedelta(days=30)  # 40 days left then
        found = status.certificates(c, down, healthy_now)
    finally:
        c.close()
    assert any(line.startswith(f"cert :{closed} unreadable") for line in found.lines)
    assert len(found.problems) == 1, found.problems  # the readable port is fine
    assert found.problems[0].startswith(f":{closed} serves no readable certificate")
    assert "expiry is unknown" in found.problems[0]


def test_fab_status_exits_non_zero_on_a_failed_renewal_and_near_expiry(bed, tmp_path):
    inv, state, port = bed
    (state / status.RENEWAL_MARKER).write_text(MARKER)
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [FAB, "status", "--inventory", str(inv)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[web1] TLS: chain verified against" in proc.stdout
    assert f"[web1] cert :{port} serial" in proc.stdout
    assert "model yolov3-tiny, engine openvino-bf16" in proc.stdout
    assert proc.stderr.startswith("error: web1: certificate renewal FAILED")
    assert f"web1: :{port} certificate expires" in proc.stderr


def test_engine_label_names_engine_and_precision():
    assert status.engine_label({"engine": "torch", "precision": "fp32"}) == "torch-fp32"
    assert status.engine_label({"engine": "opencv"}) == "opencv"
    assert status.engine_label({}) == "- (model not loaded)"
