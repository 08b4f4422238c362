"""Self-tests of the test bed: hosts, proxy, DNS, ACME by DNS-01, firewall, wheelhouse, teardown."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import DOMAIN
from testbed import Testbed
from testbed import UnsafeAddress
from testbed import guard
from testbed import leftovers

VENV_BIN = Path(sys.executable).parent


def apt_install(bed: Testbed, host, *packages: str) -> None:
    """Install packages on host through the bed's proxy, as Ansible does with the proxy var."""
    command = (
        f"sudo env http_proxy={bed.proxy_url} DEBIAN_FRONTEND=noninteractive sh -c "
        + shlex.quote(
            "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
            + " ".join(packages)
        )
    )
    bed.ssh(host, command, timeout=300)


def can_connect(address: str, port: int, timeout: float = 3.0) -> bool:
    """Return True if a TCP connection to a test-bed address succeeds."""
    guard(address)
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def test_host_boots_and_answers_ssh(testbed: Testbed) -> None:
    host = testbed.hosts[0]
    state = testbed.ssh(host, "systemctl is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert testbed.ssh(host, "hostname").stdout.strip() == host.name
    assert testbed.ssh(host, "sudo -n whoami").stdout.strip() == "root"
    assert testbed.ssh(host, "ip -4 -br addr show host0").stdout.split()[2] == f"{host.address}/24"


def test_apt_installs_through_the_proxy(testbed: Testbed) -> None:
    host = testbed.hosts[0]
    apt_install(testbed, host, "bind9-dnsutils")
    status = testbed.ssh(host, "dpkg-query -W -f '${Status}' bind9-dnsutils").stdout
    assert status == "install ok installed"


def test_proxy_forwards_only_to_the_debian_mirror(testbed: Testbed) -> None:
    script = (
        "import urllib.request as u, urllib.error as e\n"
        f"o = u.build_opener(u.ProxyHandler({{'http': '{testbed.proxy_url}'}}))\n"
        "try:\n    o.open('http://not-the-mirror.invalid/', timeout=10)\n"
        "except e.HTTPError as err:\n    print(err.code)\n"
    )
    out = testbed.ssh(testbed.hosts[0], f"python3 -c {shlex.quote(script)}").stdout
    assert out.strip() == "403"


def test_nsupdate_from_a_host_resolves_through_the_test_dns(testbed: Testbed) -> None:
    host = testbed.hosts[0]
    apt_install(testbed, host, "bind9-dnsutils")
    tsig = testbed.dns.tsig  # the hosts' key: only the challenge TXT and the A record (policy)
    script = (
        f"server {testbed.dns.server} {testbed.dns.port}\nzone {DOMAIN}\n"
        f'update add _acme-challenge.{DOMAIN}. 60 TXT "from-{host.name}"\nsend\n'
    )
    testbed.ssh(
        host, f"nsupdate -y {tsig.algorithm}:{tsig.name}:{tsig.secret} <<'EOF'\n{script}EOF"
    )
    on_host = testbed.ssh(host, f"dig +short TXT _acme-challenge.{DOMAIN}").stdout.strip()
    assert on_host == f'"from-{host.name}"'
    assert testbed.resolve(f"_acme-challenge.{DOMAIN}", "TXT") == [f"from-{host.name}"]
    testbed.nsupdate([f"update delete _acme-challenge.{DOMAIN}. TXT"])  # the bed's admin key
    # The zone's A record starts at the first host; provisioning (dns role) may have moved it to
    # the host it provisioned in this same session, so any host of this bed is right.
    (address,) = testbed.resolve(DOMAIN)
    assert address in {h.address for h in testbed.hosts}


def test_nsupdate_without_the_key_is_refused(testbed: Testbed) -> None:
    script = f"server {testbed.dns.server} {testbed.dns.port}\nzone {DOMAIN}\n"
    script += f"update add rogue.{DOMAIN}. 60 TXT x\nsend\n"
    result = subprocess.run(["nsupdate"], input=script, capture_output=True, text=True)
    assert result.returncode != 0
    assert "REFUSED" in result.stdout + result.stderr
    assert testbed.resolve(f"rogue.{DOMAIN}", "TXT") == []


def _serial(cert: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", "-in", str(cert)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def test_certbot_gets_and_renews_a_certificate_by_dns01(testbed: Testbed, tmp_path: Path) -> None:
    certbot = VENV_BIN / "certbot"
    if not certbot.exists():
        pytest.skip(f"certbot missing from {VENV_BIN}: pip install -e '.[test]'")
    guard(testbed.dns.server)
    tsig = testbed.dns.tsig
    credentials = tmp_path / "rfc2136.ini"
    credentials.write_text(
        f"dns_rfc2136_server = {testbed.dns.server}\ndns_rfc2136_port = {testbed.dns.port}\n"
        f"dns_rfc2136_name = {tsig.name}\ndns_rfc2136_secret = {tsig.secret}\n"
        f"dns_rfc2136_algorithm = {tsig.algorithm.upper()}\n"
    )
    credentials.chmod(0o600)
    dirs = [f"--{d}-dir={tmp_path / d}" for d in ("config", "work", "logs")]
    env = {**os.environ, "REQUESTS_CA_BUNDLE": testbed.acme.ca_bundle}
    env.pop("HTTPS_PROXY", None)
    env.pop("https_proxy", None)
    subprocess.run(
        [str(certbot), "certonly", *dirs, "--non-interactive", "--agree-tos"]
        + ["-m", f"admin@{DOMAIN}", "--server", testbed.acme.directory_url]
        + ["--dns-rfc2136", f"--dns-rfc2136-credentials={credentials}"]
        + ["--dns-rfc2136-propagation-seconds=1", "-d", DOMAIN],
        check=True,
        capture_output=True,
        env=env,
        timeout=180,
    )
    live = tmp_path / "config" / "live" / DOMAIN
    first = _serial(live / "cert.pem")
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", testbed.acme.root_path]
        + ["-untrusted", str(live / "chain.pem"), str(live / "cert.pem")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    subprocess.run(
        [str(certbot), "renew", *dirs, "--non-interactive", "--force-renewal"]
        + ["--no-random-sleep-on-renew"],
        check=True,
        capture_output=True,
        env=env,
        timeout=180,
    )
    assert _serial(live / "cert.pem") != first


def test_ufw_in_a_host_blocks_a_port_keeps_ssh_and_survives_reboot(testbed_hosts, testbed) -> None:
    (host,) = testbed_hosts(1, fresh=True)
    apt_install(testbed, host, "ufw")
    serve = "sudo systemd-run --unit=probe-http python3 -m http.server 8081 --bind 0.0.0.0"
    testbed.ssh(host, serve)
    testbed.ssh(host, "for i in $(seq 50); do ss -ltn | grep -q :8081 && exit 0; sleep 0.1; done")
    assert can_connect(host.address, 8081), "probe port must be open before ufw is enabled"
    rules = "ufw default deny incoming && ufw allow 22/tcp && ufw --force enable"
    testbed.ssh(host, f"sudo sh -c {shlex.quote(rules)}")
    assert not can_connect(host.address, 8081)
    assert can_connect(host.address, 22)
    testbed.reboot(host)
    testbed.ssh(host, serve)
    testbed.ssh(host, "for i in $(seq 50); do ss -ltn | grep -q :8081 && exit 0; sleep 0.1; done")
    assert "Status: active" in testbed.ssh(host, "sudo ufw status").stdout
    assert not can_connect(host.address, 8081)
    assert can_connect(host.address, 22)


def test_wheelhouse_serves_pip_inside_a_host(testbed: Testbed, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n")
    index = testbed.build_wheelhouse(requirements)
    host = testbed.hosts[0]
    apt_install(testbed, host, "python3-venv")
    testbed.ssh(
        host,
        "python3 -m venv /tmp/wh && /tmp/wh/bin/pip install -q --no-cache-dir "
        f"--index-url {index} --trusted-host {testbed.gateway} six",
        timeout=180,
    )
    assert testbed.ssh(host, "/tmp/wh/bin/python -c 'import six; print(six.__name__)'").stdout == (
        "six\n"
    )


def test_inventory_lets_ansible_become_root(testbed: Testbed) -> None:
    ansible = VENV_BIN / "ansible"
    if not ansible.exists():
        pytest.skip(f"ansible missing from {VENV_BIN}: pip install -e '.[test]'")
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1"}
    result = subprocess.run(
        [str(ansible), "testbed", "-i", str(testbed.inventory_path), "-b", "-m", "command"]
        + ["-a", "whoami", "-o"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{testbed.hosts[0].name} | CHANGED | rc=0 | (stdout) root" in result.stdout


def test_bed_inventory_gives_the_host_every_bed_variable_and_its_address(testbed: Testbed) -> None:
    """ansible-inventory reads the bed's inventory as ansible-playbook would (--playbook-dir
    ansible/, so any group_vars/host_vars beside the playbook would be merged in): the host gets
    every value of testbed.variables() unchanged and its bed address. (Role defaults are not
    inventory variables; tests/ansible/test_inventory_precedence.py checks they lose.)"""
    inventory = VENV_BIN / "ansible-inventory"
    if not inventory.exists():
        pytest.skip(f"ansible-inventory missing from {VENV_BIN}: pip install -e '.[test]'")
    playbook_dir = Path(__file__).resolve().parents[2] / "ansible"
    result = subprocess.run(
        [str(inventory), "-i", str(testbed.inventory_path), "--playbook-dir", str(playbook_dir)]
        + ["--host", testbed.hosts[0].name],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    hostvars = json.loads(result.stdout)
    for key, value in testbed.variables().items():
        assert hostvars[key] == value, key
    assert hostvars["ansible_host"] == testbed.hosts[0].address


def test_guard_refuses_addresses_the_testbed_did_not_create(testbed: Testbed) -> None:
    assert guard(testbed.hosts[0].address) == testbed.hosts[0].address
    for address in ("127.0.0.1", "192.0.2.1", "10.77.250.1", "8.8.8.8"):
        with pytest.raises(UnsafeAddress):
            guard(address)


def test_teardown_leaves_no_process_mount_link_or_machine(testbed: Testbed) -> None:
    bed = Testbed.allocate(owner_pid=os.getpid(), log=lambda msg: None).up(hosts=1)
    try:
        during = leftovers(bed.id)
        assert during["machines"] and during["links"] and during["processes"]
        pids = [r["pid"] for r in bed.table.running()]
    finally:
        bed.down()
    assert leftovers(bed.id) == {"processes": [], "mounts": [], "links": [], "machines": []}
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert not bed.dir.exists()
