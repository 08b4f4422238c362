"""The deploy health gate and served-certificate reader against the real app over real TLS."""

from __future__ import annotations

import datetime
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy import cert
from deploy import health
from deploy.inventory import Host

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights" / "yolov3-tiny.weights"
DOMAIN = "detector.test"
RELEASE = "20261126T010203Z-ab12cd34"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pki(tmp: Path) -> tuple[Path, Path, Path, int]:
    """A throwaway CA and a leaf for DOMAIN; returns (ca.pem, leaf.pem, key.pem, serial)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("deploy test CA"))
        .issuer_name(_name("deploy test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(DOMAIN))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (tmp / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp / "ca.pem", tmp / "leaf.pem", tmp / "key.pem", serial


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """The real detector app (yolov3-tiny) over TLS on 127.0.0.1, reporting RELEASE."""
    if not WEIGHTS.exists():
        pytest.skip(f"needs {WEIGHTS}: run `make weights`")
    from detector.app import create_app
    from werkzeug.serving import make_server

    tmp = tmp_path_factory.mktemp("pki")
    ca, leaf, key, serial = _pki(tmp)
    app = create_app(
        {"model": "yolov3-tiny", "weights_dir": str(WEIGHTS.parent), "release": RELEASE}
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(leaf), str(key))
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ctx)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, str(ca), serial
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


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
    port, ca, _ = served_app
    summary = health.gate(_host(port, ca), RELEASE)
    assert summary.startswith(f":{port} ")
    assert "detection(s)" in summary


@pytest.mark.slow
def test_gate_refuses_another_release_id(served_app):
    port, ca, _ = served_app
    ok, reason = health.gate_once(_host(port, ca), "20261126T999999Z-00000000", b"")
    assert not ok
    assert f"release {RELEASE} != 20261126T999999Z-00000000" in reason


@pytest.mark.slow
def test_gate_verifies_the_chain(served_app, tmp_path):
    port, _, _ = served_app
    other_ca, _, _, _ = _pki(tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        health.https(_host(port, str(other_ca)), port, "GET", "/readyz")


@pytest.mark.slow
def test_served_certificate_serial_and_days_left(served_app):
    port, ca, serial = served_app
    got = cert.served(_host(port, ca), port)
    assert got.serial == format(serial, "x")
    assert 9 < got.days_left() <= 10
    assert "WARNING: under 20 days" in cert.describe(got)
