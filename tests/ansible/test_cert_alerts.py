"""Renewal failures and expiry are loud: the rendered units and the state script, run for real."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.certbot_render import render
from tests.certbot_render import template_task

DOMAIN = "detector.test"
DEFAULTS = Path(__file__).resolve().parents[2] / "ansible/roles/detector/defaults/main.yml"


def _chain(path: Path, days: int) -> datetime.datetime:
    """A self-signed certificate for DOMAIN valid for days; returns its notAfter."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.not_valid_after_utc


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The certbot role's state script and units rendered by ansible, pointed at a temp tree."""
    out = tmp_path_factory.mktemp("alerts")
    templates = {
        "cert-state.sh.j2": "detector-cert-state",
        "renew-failure.service.j2": "failure@.service",
        "renew.service.j2": "renew.service",
        "deploy-hook.sh.j2": "deploy-hook",
    }
    tasks = [template_task(src, out / dest, "0755") for src, dest in templates.items()]
    render(out, "Render the certificate alert files", tasks, detector_domain=DOMAIN)
    (out / "tls").mkdir()
    return out


def _state(rendered: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(rendered / "detector-cert-state"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def _metrics(rendered: Path) -> dict[str, float]:
    text = (rendered / "textfile" / "detector_certificate.prom").read_text()
    rows = [line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")]
    return {name: float(value) for name, value in rows}


def test_every_renewal_unit_reports_failure_and_clears_it_on_success(rendered: Path):
    unit = (rendered / "renew.service").read_text()
    assert "OnFailure=detector-certbot-renew-failure@%n.service" in unit
    assert f"ExecStartPost={rendered}/detector-cert-state ok" in unit
    failure = (rendered / "failure@.service").read_text()
    assert f"ExecStart={rendered}/detector-cert-state failed %i" in failure
    hook = (rendered / "deploy-hook").read_text()
    assert f'"{rendered}/detector-cert-state" installed' in hook


def test_a_hanging_renewal_times_out_into_a_recorded_failure(rendered: Path):
    """A oneshot's start has no time limit by default: a hung certbot would never fail."""
    unit = (rendered / "renew.service").read_text().splitlines()
    (limit,) = [line.split("=", 1)[1] for line in unit if line.startswith("TimeoutStartSec=")]
    propagation = int(yaml.safe_load((DEFAULTS).read_text())["detector_dns_propagation_s"])
    assert int(limit) == propagation + 900  # the TXT record's wait, then 15 minutes at most
    assert "Type=oneshot" in unit and any(line.startswith("OnFailure=") for line in unit)


@pytest.mark.skipif(os.geteuid() != 0, reason="the state script installs files owned by root")
def test_state_script_records_expiry_failure_and_recovery(rendered: Path):
    not_after = _chain(rendered / "tls" / "fullchain.pem", days=10)
    (rendered / "tls" / "privkey.pem").write_text("secret")
    assert _state(rendered, "refresh").stdout == "updated\n"
    assert _state(rendered, "refresh").stdout == ""  # nothing changed: provisioning stays changed=0
    label = f'{{domain="{DOMAIN}"}}'
    assert _metrics(rendered) == {
        f"detector_certificate_expiry_timestamp_seconds{label}": not_after.timestamp(),
        f"detector_certificate_renewal_failed{label}": 0,
    }
    state = rendered / "state"
    assert sorted(p.name for p in state.iterdir()) == ["fullchain.pem"]  # never the key
    assert (state / "fullchain.pem").stat().st_mode & 0o777 == 0o644

    failed = _state(rendered, "failed", "detector-certbot-renew.service")
    assert failed.stdout.startswith("<3>certificate renewal FAILED: detector-certbot-renew.service")
    assert f"expires {not_after:%Y-%m-%dT%H:%M}Z" in failed.stdout
    marker = (state / "renewal-failed").read_text()
    assert marker.startswith("unit=detector-certbot-renew.service\nat=20")
    assert _metrics(rendered)[f"detector_certificate_renewal_failed{label}"] == 1

    renewed = _chain(rendered / "tls" / "fullchain.pem", days=90)
    _state(rendered, "installed")  # the deploy hook after a successful renewal
    _state(rendered, "ok")  # ExecStartPost= of that run
    assert not (state / "renewal-failed").exists()
    assert _metrics(rendered) == {
        f"detector_certificate_expiry_timestamp_seconds{label}": renewed.timestamp(),
        f"detector_certificate_renewal_failed{label}": 0,
    }
