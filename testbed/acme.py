"""The bed's authoritative DNS (bind9, TSIG-signed updates) and ACME CA (Pebble) on the bridge."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

from . import network
from .processes import ProcessTable

DOMAIN = "detector.test"
DNS_PORT = 53
ACME_PORT = 14000
ACME_MANAGEMENT_PORT = 15000
TSIG_ALGORITHM = "hmac-sha256"


@dataclass(frozen=True)
class Tsig:
    """A TSIG key: name, algorithm (bind spelling, e.g. hmac-sha256) and base64 secret."""

    name: str
    algorithm: str
    secret: str


@dataclass(frozen=True)
class Dns:
    """The bed's DNS server: authoritative for zone.

    ``tsig`` is the key the hosts get (least privilege, see :func:`update_policy`); ``admin``
    is the bed's own key for its host records (never given to a host).
    """

    server: str
    port: int
    zone: str
    tsig: Tsig
    admin: Tsig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.admin, dict):  # loaded from bed.json
            object.__setattr__(self, "admin", Tsig(**self.admin))

    def to_dict(self) -> dict:
        """Return plain data (as stored in bed.json)."""
        return asdict(self)


@dataclass(frozen=True)
class Acme:
    """The bed's ACME CA: directory URL, the CA bundle that verifies its API, its root's URL."""

    directory_url: str
    ca_bundle: str
    root_url: str
    root_path: str

    def to_dict(self) -> dict:
        """Return plain data (as stored in bed.json)."""
        return asdict(self)


def make_tsig(name: str = "detector-acme") -> Tsig:
    """Generate a fresh TSIG key with tsig-keygen."""
    text = subprocess.run(
        ["tsig-keygen", "-a", TSIG_ALGORITHM, name], check=True, capture_output=True, text=True
    ).stdout
    secret = re.search(r'secret "([^"]+)"', text)
    if secret is None:
        raise RuntimeError(f"tsig-keygen printed no secret: {text!r}")
    return Tsig(name, TSIG_ALGORITHM, secret.group(1))


def update_policy(key: str, names: list[str], records: bool, admin: str = "") -> str:
    """BIND's least-privilege update-policy for the hosts' TSIG key.

    The key may only change the TXT record ``_acme-challenge.<name>`` of each certificate name
    (certbot's DNS-01 challenge) and, with ``records`` (detector_dns_records), the A record of
    each name; any other update signed with it is REFUSED. ``admin`` (optional) is a separate
    key allowed the whole zone, kept off the hosts.
    """
    grants = [f"grant {admin} zonesub ANY;"] if admin else []
    for name in names:
        fqdn = name.rstrip(".") + "."
        grants.append(f"grant {key} name _acme-challenge.{fqdn} TXT;")
        if records:
            grants.append(f"grant {key} name {fqdn} A;")
    return "update-policy {\n" + "".join(f"\t\t{g}\n" for g in grants) + "\t};"


def zone_text(zone: str, server: str, records: dict[str, str], serial: int) -> str:
    """Return a zone file: SOA, NS on server, and name -> IPv4 A records (names relative)."""
    lines = [
        "$TTL 60",
        f"@ IN SOA ns.{zone}. hostmaster.{zone}. {serial} 3600 600 86400 60",
        f"@ IN NS ns.{zone}.",
        f"ns IN A {server}",
    ]
    lines += [f"{name} IN A {address}" for name, address in records.items()]
    return "\n".join(lines) + "\n"


def write_named_conf(
    base: Path, listen: str, port: int, tsig: Tsig, admin: Tsig, records: dict[str, str]
) -> Path:
    """Write the zone, both keys (0600) and named.conf under base; return the config's path."""
    base.mkdir(parents=True, exist_ok=True)
    zone_file = base / f"{DOMAIN}.zone"
    zone_file.write_text(zone_text(DOMAIN, listen, records, int(time.time())))
    key_file = base / "tsig.key"
    key_file.write_text(
        "".join(
            f'key "{k.name}" {{\n\talgorithm {k.algorithm};\n\tsecret "{k.secret}";\n}};\n'
            for k in (tsig, admin)
        )
    )
    key_file.chmod(0o600)
    conf = base / "named.conf"
    conf.write_text(
        f"""options {{
\tdirectory "{base}";
\tpid-file none;
\tlisten-on port {port} {{ {listen}; }};
\tlisten-on-v6 {{ none; }};
\trecursion no;
\tnotify no;
\tdnssec-validation no;
\tallow-transfer {{ none; }};
}};
controls {{ }};
include "{key_file}";
zone "{DOMAIN}" {{
\ttype primary;
\tfile "{zone_file}";
\t{update_policy(tsig.name, [DOMAIN], records=True, admin=admin.name)}
}};
"""
    )
    return conf


def start_dns(
    table: ProcessTable,
    state_dir: Path,
    listen: str,
    tsig: Tsig,
    records: dict[str, str],
    admin: Tsig | None = None,
) -> Dns:
    """Write named's config and zone, start named in the foreground, wait until it answers.

    The hosts' key ``tsig`` gets :func:`update_policy` for the bed's domain (the certificate's
    challenge TXT and its A record); ``admin`` (generated when None) may change the whole zone.
    """
    admin = admin or make_tsig("detector-testbed-admin")
    conf = write_named_conf(state_dir / "dns", listen, DNS_PORT, tsig, admin, records)
    subprocess.run(["named-checkconf", str(conf)], check=True, capture_output=True)
    table.start("named", ["named", "-f", "-u", "root", "-4", "-c", str(conf)])
    dns = Dns(listen, DNS_PORT, DOMAIN, tsig, admin)
    _wait(lambda: resolve(dns, f"ns.{DOMAIN}") == [listen], "named", table)
    return dns


def resolve(dns: Dns, name: str, rtype: str = "A") -> list[str]:
    """Query the bed's DNS for name (no system resolver involved); return the answers."""
    network.guard(dns.server)
    out = subprocess.run(
        [
            "dig",
            "+short",
            "+time=2",
            "+tries=1",
            f"@{dns.server}",
            "-p",
            str(dns.port),
            name,
            rtype,
        ],
        capture_output=True,
        text=True,
    ).stdout
    return [line.strip().strip('"') for line in out.splitlines() if line.strip()]


def nsupdate(dns: Dns, commands: list[str], key: Tsig | None = None) -> None:
    """Send a TSIG-signed dynamic update (nsupdate commands such as 'update add ...').

    Signed with key, else the bed's admin key (the hosts' key may change only its names).
    Raises CalledProcessError (output attached) when named refuses it.
    """
    network.guard(dns.server)
    key = key or dns.admin or dns.tsig
    script = "\n".join([f"server {dns.server} {dns.port}", f"zone {dns.zone}", *commands, "send"])
    with tempfile.NamedTemporaryFile("w", suffix=".key") as key_file:  # mode 0600, not argv
        key_file.write(f'key "{key.name}" {{ algorithm {key.algorithm}; ')
        key_file.write(f'secret "{key.secret}"; }};\n')
        key_file.flush()
        subprocess.run(
            ["nsupdate", "-k", key_file.name],
            input=script + "\n",
            text=True,
            check=True,
            capture_output=True,
        )


def make_tls_cert(base: Path, address: str) -> tuple[Path, Path]:
    """Create Pebble's own TLS key and certificate for address with openssl; return both paths."""
    cert, key = base / "pebble-tls.pem", base / "pebble-tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-days", "30", "-subj", "/CN=pebble-testbed", "-keyout", str(key)]
        + ["-out", str(cert), "-addext", f"subjectAltName=IP:{address},DNS:pebble,DNS:localhost"],
        check=True,
        capture_output=True,
    )
    return cert, key


def start_pebble(table: ProcessTable, state_dir: Path, listen: str, dns: Dns) -> Acme:
    """Start Pebble on listen, resolving through the bed's DNS; fetch its root; return its URLs."""
    base = state_dir / "acme"
    base.mkdir(parents=True, exist_ok=True)
    cert, key = make_tls_cert(base, listen)
    conf = base / "pebble-config.json"
    conf.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"{listen}:{ACME_PORT}",
                    "managementListenAddress": f"{listen}:{ACME_MANAGEMENT_PORT}",
                    "certificate": str(cert),
                    "privateKey": str(key),
                    "httpPort": 80,
                    "tlsPort": 443,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            },
            indent=2,
        )
    )
    env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    argv = ["pebble", "-config", str(conf), "-dnsserver", f"{dns.server}:{dns.port}"]
    table.start("pebble", argv, env=env)
    acme = Acme(
        directory_url=f"https://{listen}:{ACME_PORT}/dir",
        ca_bundle=str(cert),
        root_url=f"https://{listen}:{ACME_MANAGEMENT_PORT}/roots/0",
        root_path=str(base / "pebble-root.pem"),
    )
    _wait(lambda: _fetch(acme.directory_url, acme.ca_bundle) is not None, "pebble", table)
    Path(acme.root_path).write_bytes(_fetch(acme.root_url, acme.ca_bundle) or b"")
    return acme


def _fetch(url: str, ca_bundle: str) -> bytes | None:
    network.guard(url.split("//", 1)[1].split(":", 1)[0])
    context = ssl.create_default_context(cafile=ca_bundle)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=3) as response:
            return response.read()
    except OSError:
        return None


def _wait(ready, what: str, table: ProcessTable, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not table.running() or what not in [r["name"] for r in table.running()]:
            break
        time.sleep(0.2)
    log = table.logs / f"{what}.log"
    tail = log.read_text()[-1500:] if log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s; log {log}:\n{tail}")
