"""Certificates as served on the public ports, and `renew-cert` through the timer's own service."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone

from cryptography import x509
from fabric import Connection

from deploy import commands
from deploy.inventory import Host
from deploy.remote import DeployError
from deploy.remote import probe
from deploy.remote import run
from deploy.remote import say
from deploy.remote import step

WARN_DAYS = 20


@dataclass(frozen=True)
class Served:
    """The leaf certificate one port presents."""

    port: int
    serial: str
    not_after: datetime

    def days_left(self, now: datetime | None = None) -> float:
        now = now or datetime.now(timezone.utc)
        return (self.not_after - now).total_seconds() / 86400


def served(host: Host, port: int, timeout: float = 15) -> Served:
    """Read the leaf the port serves for the domain (SNI) from the control machine."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only read it here; the gate verifies the chain
    with socket.create_connection((host.address, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=host.domain) as tls:
            der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return Served(port, format(cert.serial_number, "x"), cert.not_valid_after_utc)


def served_all(host: Host) -> dict[int, Served]:
    """The served leaf on every public port."""
    return {port: served(host, port) for port in host.https_ports}


def describe(s: Served) -> str:
    """One line per port, with a warning under WARN_DAYS days left."""
    days = s.days_left()
    warn = f"  WARNING: under {WARN_DAYS} days" if days < WARN_DAYS else ""
    expires = f"{s.not_after:%Y-%m-%d} ({days:.0f} days)"
    return f":{s.port} serial {s.serial[:16]} expires {expires}{warn}"


def renew(c: Connection, host: Host, force: bool, dry_run: bool, wait_s: float = 60) -> dict:
    """Run the timer's renewal, then prove what 443 and 5000 serve (new serial when forced)."""
    before = served_all(host)
    for s in before.values():
        say(host, "before " + describe(s))
    unit = commands.renew_unit(host.renew_service, force, dry_run)
    flag = "forced" if force else "dry run" if dry_run else "when due"
    with step(host, f"renew ({flag}): start {unit}"):
        run(c, commands.renew_cert(host.renew_service, force, dry_run), timeout=600)
    after = served_all(host)
    if force and not dry_run:
        deadline = time.monotonic() + wait_s
        while any(after[p].serial == before[p].serial for p in after):
            if time.monotonic() > deadline:
                same = [p for p in after if after[p].serial == before[p].serial]
                old = before[same[0]].serial[:16]
                raise DeployError(
                    f"forced renewal on {host.name} ran but port(s) {same} still serve serial "
                    f"{old}; check that the certbot deploy hook reloads nginx"
                )
            time.sleep(1)
            after = served_all(host)
    for s in after.values():
        say(host, "after  " + describe(s))
    if dry_run:
        say(host, "dry run passed: " + (still_failed(c, host) or "no renewal failure recorded"))
    return {"before": before, "after": after}


def still_failed(c: Connection, host: Host) -> str:
    """A recorded renewal failure a dry run leaves in place ('' when none is recorded)."""
    from deploy.status import RENEWAL_MARKER  # status imports this module
    from deploy.status import renewal_problem

    if not host.cert_state_dir:
        return ""
    _, marker = probe(c, ["cat", f"{host.cert_state_dir}/{RENEWAL_MARKER}"])
    problem = renewal_problem(marker)
    return f"{problem} (a dry run does not clear it)" if problem else ""
