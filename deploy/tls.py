"""How fab trusts a host's HTTPS: the system CAs, the inventory's CA file, or the installed leaf."""

from __future__ import annotations

import hashlib
import socket
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fabric import Connection

from deploy.inventory import Host
from deploy.remote import DeployError
from deploy.remote import output

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
SYSTEM, CA_BUNDLE, INSTALLED = "system CAs", "CA file", "installed certificate"


@dataclass(frozen=True)
class Trust:
    """What a served chain is checked against; pin is the installed leaf (DER) when pinned."""

    mode: str
    cafile: str = ""
    pin: bytes = b""
    source: str = ""

    def describe(self) -> str:
        """One phrase for the output: what the served certificate was verified against."""
        if self.mode == CA_BUNDLE:
            return f"chain verified against {self.cafile}"
        if self.mode == INSTALLED:
            return (
                f"staging/private ACME: leaf pinned to {self.source} on the host "
                f"(sha256 {sha256(self.pin)[:16]}), not the system CAs"
            )
        return "chain verified against the system CAs"


def mode_for(host: Host) -> str:
    """The inventory's CA file wins; a staging or private ACME server pins the installed leaf.

    Production (Let's Encrypt's own directory) is verified against the system CAs.
    """
    if host.ca_bundle:
        return CA_BUNDLE
    server = host.acme_server.rstrip("/")
    if host.acme_staging or (server and server != LETS_ENCRYPT):
        return INSTALLED
    return SYSTEM


def sha256(der: bytes) -> str:
    """The certificate's SHA-256 fingerprint in hex."""
    return hashlib.sha256(der).hexdigest()


def leaf_of(pem: str, source: str) -> bytes:
    """The first certificate (the leaf) of a PEM chain, as DER."""
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise DeployError(
            f"{source} holds no PEM certificate ({exc}); rerun provisioning"
        ) from None
    return certs[0].public_bytes(Encoding.DER)


def installed_source(host: Host) -> str:
    """The public copy of the installed chain the certbot deploy hook keeps for fab."""
    if not host.cert_state_dir:
        raise DeployError(
            f"host {host.name} lacks detector_cert_state_dir; fab needs it to pin the staging "
            "certificate (set it in the inventory or update the role defaults)"
        )
    return f"{host.cert_state_dir}/fullchain.pem"


def trust_for(c: Connection | None, host: Host) -> Trust:
    """Decide the trust for host; for a pin, read the installed chain over (verified) SSH."""
    mode = mode_for(host)
    if mode == CA_BUNDLE:
        return Trust(mode, cafile=host.ca_bundle)
    if mode == SYSTEM:
        return Trust(mode)
    if c is None:
        raise DeployError(
            f"{host.name} uses a staging/private ACME server: fab pins the installed "
            "certificate and needs an SSH connection to read it"
        )
    source = installed_source(host)
    return Trust(mode, pin=leaf_of(output(c, ["cat", source]), source), source=source)


def context(trust: Trust) -> ssl.SSLContext:
    """A client context: chain and name verified, or (pinned) the leaf compared after handshake."""
    if trust.mode == INSTALLED:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # check_pin() compares the whole leaf instead
        return ctx
    return ssl.create_default_context(cafile=trust.cafile or None)


def check_pin(tls: ssl.SSLSocket, trust: Trust, where: str) -> None:
    """Refuse a served leaf that is not the installed one (pinned mode only)."""
    if trust.mode != INSTALLED:
        return
    served = tls.getpeercert(binary_form=True) or b""
    if served != trust.pin:
        raise ssl.SSLCertVerificationError(
            f"{where} serves certificate sha256 {sha256(served)[:16]}, not the one installed in "
            f"{trust.source} (sha256 {sha256(trust.pin)[:16]}); check nginx on the host "
            "(`fab renew-cert` reinstalls it) and the network path"
        )


def wrap(host: Host, port: int, trust: Trust, timeout: float) -> ssl.SSLSocket:
    """A TLS connection to the host's address with the domain as SNI, checked per trust."""
    ctx = context(trust)
    raw = socket.create_connection((host.address, port), timeout=timeout)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=host.domain)
    except BaseException:
        raw.close()
        raise
    try:
        check_pin(tls, trust, f"{host.domain}:{port}")
    except BaseException:
        tls.close()
        raise
    return tls
