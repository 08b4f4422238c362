"""The deploy health gate and served-certificate reader against the real app over real TLS."""

from __future__ import annotations

import contextlib
import ssl
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from pki_helpers import DOMAIN
from pki_helpers import make_pki
from ssh_helpers import SshServer
from ssh_helpers import ed25519_key

from deploy import cert
from deploy import health
from deploy import remote
from deploy import tls
from deploy.inventory import Host
from deploy.remote import DeployError

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights" / "yolov3-tiny.weights"
RELEASE = "20261126T010203Z-ab12cd34"


def _app(**config):
    """The real detector app (yolov3-tiny) reporting RELEASE."""
    if not WEIGHTS.exists():
        pytest.skip(f"needs {WEIGHTS}: run `make weights`")
    from detector.app import create_app

    return create_app(
        {"model": "yolov3-tiny", "weights_dir": str(WEIGHTS.parent), "release": RELEASE, **config}
    )


@contextlib.contextmanager
def _serve(app, tmp: Path):
    """Serve a WSGI app over TLS on 127.0.0.1 with a fresh PKI: (port, ca, serial, pki dir)."""
    from werkzeug.serving import make_server

    ca, leaf, key, serial = make_pki(tmp)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(leaf), str(key))
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ctx)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, str(ca), serial, tmp
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """The real detector app over TLS on 127.0.0.1: (port, ca.pem, leaf serial, pki dir)."""
    tmp = tmp_path_factory.mktemp("pki")
    with _serve(_app(), tmp) as served:
        yield served


def _host(port: int, ca_bundle: str) -> Host:
    return Host(
        name="local",
        address="127.0.0.1",
        user="deploy",
        ssh_port=22,
        key_file="",
        service="detector",
        app_root="/opt/detector",
        env_link="/opt/detector/env",
        domain=DOMAIN,
        https_ports=(port,),
        releases_keep=5,
        socket_dir="/run/detector",
        upstream_conf="/etc/nginx/detector-upstream.conf",
        upstream_name="detector",
        renew_service="detector-certbot-renew.service",
        ca_bundle=ca_bundle,
        gate_timeout_s=60,
    )


@pytest.mark.slow
def test_gate_passes_for_the_served_release_with_a_real_detection(served_app):
    port, ca, _, _ = served_app
    summary = health.gate(_host(port, ca), RELEASE)
    assert summary.startswith(f":{port} ")
    assert "detection(s): cup" in summary
    assert f"chain verified against {ca}" in summary


@pytest.mark.slow
def test_gate_refuses_another_release_id(served_app):
    port, ca, _, _ = served_app
    ok, reason = health.gate_once(_host(port, ca), "20261126T999999Z-00000000", b"")
    assert not ok
    assert f"release {RELEASE} != 20261126T999999Z-00000000" in reason


@pytest.mark.slow
def test_gate_verifies_the_chain(served_app, tmp_path):
    port, _, _, _ = served_app
    other_ca, _, _, _ = make_pki(tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        health.https(_host(port, str(other_ca)), port, "GET", "/readyz")


@pytest.mark.slow
def test_served_certificate_serial_and_days_left(served_app):
    port, ca, serial, _ = served_app
    got = cert.served(_host(port, ca), port)
    assert got.serial == format(serial, "x")
    assert 9 < got.days_left() <= 10
    assert "WARNING: under 20 days" in cert.describe(got)


def test_an_empty_detection_list_fails_the_gate():
    ok, summary = health.detection_summary('{"detections": []}')
    assert not ok
    assert "the smoke image must yield cup" in summary
    cup = '{"detections": [{"label": "cup", "score": 0.5, "box": [1, 2, 3, 4]}]}'
    assert health.detection_summary(cup) == (True, "1 detection(s): cup")
    dog = '{"detections": [{"label": "dog"}]}'
    assert not health.detection_summary(dog)[0]
    assert health.detection_summary(dog, ("dog",))[0]  # detector_deploy_smoke_labels


@pytest.mark.parametrize(
    ("status", "ctype", "body", "ok"),
    [
        (200, "text/html; charset=utf-8", f"<html>{health.PAGE_MARKER}</html>", True),
        (200, "", f"<p>{health.PAGE_MARKER}</p>", True),  # a socket answer without headers
        (200, "application/json", f'{{"x": "{health.PAGE_MARKER}"}}', False),
        (200, "text/html", "<html>It works!</html>", False),
        (404, "text/html", health.PAGE_MARKER, False),
        (0, "", "", False),
    ],
)
def test_the_page_check_wants_the_upload_page(status, ctype, body, ok):
    assert health.page_summary(status, ctype, body)[0] is ok


def test_the_upload_page_carries_the_marker_the_gate_looks_for():
    page = ROOT / "service" / "detector" / "templates" / "index.html"
    assert health.PAGE_MARKER in page.read_text()


@pytest.mark.slow
def test_gate_refuses_a_release_that_detects_nothing(tmp_path):
    with _serve(_app(threshold=0.99), tmp_path) as (port, ca, _, _):
        ok, reason = health.gate_once(_host(port, ca), RELEASE, health.SMOKE_IMAGE.read_bytes())
    assert not ok
    assert f":{port} detect 200" in reason
    assert "0 detection(s): none; the smoke image must yield cup" in reason


@pytest.mark.slow
def test_gate_refuses_a_release_without_the_upload_page(tmp_path):
    app = _app()

    def no_page(environ, start_response):
        if environ["PATH_INFO"] == "/":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        return app(environ, start_response)

    with _serve(no_page, tmp_path) as (port, ca, _, _):
        ok, reason = health.gate_once(_host(port, ca), RELEASE, health.SMOKE_IMAGE.read_bytes())
    assert not ok
    assert reason == f":{port} GET / served text/plain, not the upload page"


@pytest.mark.parametrize(
    ("changes", "mode"),
    [
        ({}, tls.SYSTEM),
        ({"acme_server": tls.LETS_ENCRYPT}, tls.SYSTEM),
        ({"acme_staging": True}, tls.INSTALLED),
        ({"acme_server": "https://acme.example.net/directory"}, tls.INSTALLED),
        ({"acme_staging": True, "ca_bundle": "/ca.pem"}, tls.CA_BUNDLE),
        ({"ca_bundle": "/ca.pem"}, tls.CA_BUNDLE),
    ],
)
def test_staging_or_a_private_acme_server_pins_the_installed_certificate(changes, mode):
    assert tls.mode_for(replace(_host(443, ""), **changes)) == mode


@pytest.mark.slow
def test_a_staging_certificate_fails_the_system_cas_and_passes_the_pin(served_app):
    port, _, _, pki = served_app
    host = replace(_host(port, ""), acme_staging=True)
    with pytest.raises(ssl.SSLCertVerificationError):  # what the gate did before for staging
        health.https(host, port, "GET", "/readyz", trust=tls.Trust(tls.SYSTEM))
    leaf = tls.leaf_of((pki / "leaf.pem").read_text(), "leaf.pem")
    pinned = tls.Trust(tls.INSTALLED, pin=leaf, source="fullchain.pem")
    assert health.https(host, port, "GET", "/readyz", trust=pinned).status == 200
    other = tls.leaf_of((make_pki(pki / "..")[1]).read_text(), "other")
    wrong = tls.Trust(tls.INSTALLED, pin=other, source="/var/lib/x/fullchain.pem")
    with pytest.raises(ssl.SSLCertVerificationError, match="not the one installed in /var/lib/x"):
        health.https(host, port, "GET", "/readyz", trust=wrong)
    with pytest.raises(DeployError, match="needs an SSH connection"):
        health.https(host, port, "GET", "/readyz")


@pytest.fixture
def ssh_host(tmp_path, monkeypatch):
    """A real SSH server on 127.0.0.1 (known host key) and the known_hosts file naming it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    host_key = ed25519_key(tmp_path / "host_key")
    client_key = ed25519_key(tmp_path / "id_ed25519")
    server = SshServer(host_key, client_key)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {host_key.get_name()} {host_key.get_base64()}\n")
    yield server.port, str(tmp_path / "id_ed25519"), str(known)
    server.close()


@pytest.mark.slow
def test_the_staging_gate_reads_the_installed_chain_over_ssh_and_passes(
    served_app, ssh_host, tmp_path
):
    port, _, _, pki = served_app
    ssh_port, key_file, known = ssh_host
    state = tmp_path / "state"
    state.mkdir()
    (state / "fullchain.pem").write_text(
        (pki / "leaf.pem").read_text() + (pki / "ca.pem").read_text()
    )
    host = replace(
        _host(port, ""),
        acme_staging=True,
        ssh_port=ssh_port,
        key_file=key_file,
        known_hosts=(known,),
        cert_state_dir=str(state),
    )
    c = remote.connect(host)
    try:
        trust = tls.trust_for(c, host)
        assert trust.pin == tls.leaf_of((pki / "leaf.pem").read_text(), "leaf")
        summary = health.gate(host, RELEASE, c)
    finally:
        c.close()
    assert "detection(s): cup" in summary
    assert f"leaf pinned to {state}/fullchain.pem on the host" in summary
    assert "not the system CAs" in summary
