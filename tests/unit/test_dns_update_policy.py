"""The hosts' TSIG key against a real BIND with the test bed's update-policy (on loopback)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from testbed import acme

pytestmark = pytest.mark.skipif(
    not (shutil.which("named") and shutil.which("nsupdate") and shutil.which("tsig-keygen")),
    reason="needs bind9 (named, nsupdate, tsig-keygen): `make setup` installs APT_PACKAGES",
)
LISTEN = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LISTEN, 0))
        return s.getsockname()[1]


@pytest.fixture
def named(tmp_path: Path):
    """named on loopback with the bed's config: (port, hosts' key, admin key)."""
    tsig, admin = acme.make_tsig("detector-acme"), acme.make_tsig("detector-testbed-admin")
    port = _free_port()
    conf = acme.write_named_conf(tmp_path, LISTEN, port, tsig, admin, {"www": "10.9.9.9"})
    subprocess.run(["named-checkconf", str(conf)], check=True)
    proc = subprocess.Popen(
        ["named", "-g", "-u", "root", "-4", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while _dig(port, f"ns.{acme.DOMAIN}") != [LISTEN]:
            assert time.monotonic() < deadline and proc.poll() is None, "named did not come up"
            time.sleep(0.2)
        yield port, tsig, admin
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _dig(port: int, name: str, rtype: str = "A") -> list[str]:
    out = subprocess.run(
        ["dig", "+short", "+time=1", "+tries=1", f"@{LISTEN}", "-p", str(port), name, rtype],
        capture_output=True,
        text=True,
    ).stdout
    return [line.strip().strip('"') for line in out.splitlines() if line.strip()]


def _update(port: int, key: acme.Tsig, *commands: str) -> subprocess.CompletedProcess:
    key_file = Path(f"/tmp/.dns-policy-{port}-{key.name}.key")
    key_file.write_text(
        f'key "{key.name}" {{ algorithm {key.algorithm}; secret "{key.secret}"; }};'
    )
    key_file.chmod(0o600)
    script = "\n".join([f"server {LISTEN} {port}", f"zone {acme.DOMAIN}", *commands, "send", ""])
    try:
        return subprocess.run(
            ["nsupdate", "-k", str(key_file)], input=script, capture_output=True, text=True
        )
    finally:
        key_file.unlink()


def test_the_hosts_key_may_change_only_the_challenge_and_its_a_record(named):
    port, tsig, admin = named
    domain = acme.DOMAIN
    ok = _update(port, tsig, f'update add _acme-challenge.{domain}. 60 TXT "token"')
    assert ok.returncode == 0, ok.stderr
    assert _dig(port, f"_acme-challenge.{domain}", "TXT") == ["token"]
    ok = _update(port, tsig, f"update delete {domain}. A", f"update add {domain}. 60 A 10.9.9.1")
    assert ok.returncode == 0, ok.stderr
    assert _dig(port, domain) == ["10.9.9.1"]
    for attack in (
        f"update add www.{domain}. 60 A 203.0.113.66",  # another name's A record
        f"update delete www.{domain}. A",
        f"update add {domain}. 60 NS ns.attacker.example.",  # the zone's delegation
        f"update add {domain}. 60 TXT hijack",  # another type at an allowed name
        f"update add _acme-challenge.www.{domain}. 60 TXT x",  # a certificate for another name
    ):
        refused = _update(port, tsig, attack)
        assert refused.returncode != 0, attack
        assert "REFUSED" in refused.stdout + refused.stderr, attack
    assert _dig(port, f"www.{domain}") == ["10.9.9.9"]
    assert _dig(port, domain, "NS") == [f"ns.{domain}."]
    # the bed's own admin key (never on a host) still manages the zone
    assert _update(port, admin, f"update add host9.{domain}. 60 A 10.9.9.3").returncode == 0
    assert _dig(port, f"host9.{domain}") == ["10.9.9.3"]


def test_policy_text_lists_only_the_configured_names():
    text = acme.update_policy("k", ["a.example.com", "b.example.com."], records=False)
    assert text.count("grant k name _acme-challenge.") == 2
    assert " A;" not in text and "zonesub" not in text and "subdomain" not in text
