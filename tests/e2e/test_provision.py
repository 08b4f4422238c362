"""The README's path on a bare test-bed host: example inventory, vault, provision.yml, then fab."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import re
import secrets
import socket
import ssl
from pathlib import Path

import pytest
import requests

from testbed import DOMAIN
from testbed import Testbed
from testbed import guard
from testbed.hosts import Host
from testbed.hosts import ssh
from testbed.provisioning import MODEL
from testbed.provisioning import REPO
from testbed.provisioning import Run
from testbed.provisioning import wheelhouse_requirements
from testbed.userpath import UserInventory
from testbed.userpath import changed_tasks
from testbed.userpath import user_inventory

if __import__("sys").version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10
    import tomli as tomllib

PORTS = (443, 5000)
CLOSED_PORTS = (80, 8000, 8081)  # 8081: a listener the test starts on the host
RENEW_SERVICE = "detector-certbot-renew.service"
ARTIFACTS = REPO / "test-artifacts"


@dataclasses.dataclass
class Provisioned:
    """A host provisioned once for this module through the README's commands, and their checkout."""

    bed: Testbed
    host: Host
    user: UserInventory
    first: Run

    def sh(self, command: str, check: bool = True) -> str:
        """Run command on the host as the sudo user; return its stdout."""
        return ssh(self.host, command, check=check, timeout=300).stdout


def _tail(run: Run, lines: int = 60) -> str:
    return "\n".join((run.stdout + "\n" + run.stderr).splitlines()[-lines:])


@pytest.fixture(scope="module")
def provisioned(testbed: Testbed, testbed_hosts, tmp_path_factory) -> Provisioned:
    """A fresh bare host, provisioned once (cold) as the README says, from a clean clone."""
    if not (REPO / "weights" / f"{MODEL}.weights").is_file():
        pytest.skip(f"weights/{MODEL}.weights is missing: run `make setup` (make weights)")
    host = testbed_hosts(1, fresh=True)[0]
    work = tmp_path_factory.mktemp("provision")
    testbed.build_wheelhouse(wheelhouse_requirements(work / "requirements.txt"))
    user = user_inventory(testbed, [host], work)
    first = user.provision()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "provision-readme-path.log").write_text(first.stdout + first.stderr)
    if first.returncode != 0:
        probe = ssh(
            host, "head -c 300 /etc/python3.11/sitecustomize.py; dpkg -l python3-apt", check=False
        )
        pytest.fail(f"{_tail(first)}\n--- host state:\n{probe.stdout}{probe.stderr}")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "provision-timing.json").write_text(
        json.dumps({"cold_provision_s": round(first.seconds, 1)}) + "\n"
    )
    print(f"cold provisioning of {host.name}: {first.seconds:.0f} s")
    return Provisioned(testbed, host, user, first)


def served(bed: Testbed, address: str, port: int, path: str = "/") -> tuple[dict, int, dict]:
    """GET path with TLS verified against Pebble's root; return (cert, HTTP status, JSON body)."""
    guard(address)
    context = ssl.create_default_context(cafile=bed.acme.root_path)
    with socket.create_connection((address, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            cert = tls.getpeercert()
            request = f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n"
            tls.sendall(request.encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return cert, status, json.loads(body) if body.strip().startswith(b"{") else {}


def serials(provisioned: Provisioned) -> dict[int, str]:
    """The serial number of the certificate served on each public port."""
    return {
        port: served(provisioned.bed, provisioned.host.address, port)[0]["serialNumber"]
        for port in PORTS
    }


def reachable(address: str, port: int, timeout: float = 2.0) -> bool:
    guard(address)
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def test_bare_host_is_provisioned(provisioned: Provisioned):
    assert "failed=0" in provisioned.first.stdout
    sizing = re.search(
        r"\d+ cores, \d+ MB RAM: \d+ worker\(s\) x \d+ thread\(s\)", provisioned.first.stdout
    )
    assert sizing, _tail(provisioned.first)


def test_user_inventory_is_the_example_with_an_encrypted_vault(provisioned: Provisioned):
    inv = provisioned.user.inventory
    vault = inv / "group_vars" / "all" / "vault.yml"
    assert vault.read_bytes().startswith(b"$ANSIBLE_VAULT;")
    assert provisioned.bed.dns.tsig.secret not in vault.read_text()
    example = REPO / "ansible" / "inventories" / "example"
    copied = {p.relative_to(inv) for p in inv.rglob("*") if p.is_file()}
    assert copied - {p.relative_to(example) for p in example.rglob("*") if p.is_file()} == {
        Path("group_vars/all/testbed.yml")  # the only file a user would not have
    }


def test_second_run_changes_nothing(provisioned: Provisioned):
    run = provisioned.user.provision()
    assert run.returncode == 0, _tail(run)
    stats = run.stats[provisioned.host.name]
    assert stats["failed"] == 0 and stats["unreachable"] == 0
    assert stats["changed"] == 0, changed_tasks(run.stdout)


def test_check_mode_reports_no_change(provisioned: Provisioned):
    run = provisioned.user.provision("--check", "--diff")
    assert run.returncode == 0, _tail(run)
    assert run.stats[provisioned.host.name]["changed"] == 0, changed_tasks(run.stdout)


def test_tls_ports_present_the_pebble_chain_and_503_before_deploy(provisioned: Provisioned):
    for port in PORTS:
        cert, status, body = served(provisioned.bed, provisioned.host.address, port)
        names = [value for kind, value in cert["subjectAltName"] if kind == "DNS"]
        assert DOMAIN in names
        assert status == 503 and body == {"error": "no release deployed yet"}


def test_private_key_is_not_world_readable(provisioned: Provisioned):
    assert provisioned.sh("sudo stat -c '%a %U %G' /etc/ssl/detector/privkey.pem").split() == [
        "640",
        "root",
        "ssl-cert",
    ]
    live = provisioned.sh(f"sudo stat -L -c '%a' /etc/letsencrypt/live/{DOMAIN}/privkey.pem")
    assert int(live.strip()[-1]) == 0  # certbot's own copy: no access for others either
    ini = provisioned.sh("sudo stat -c '%a %U' /etc/letsencrypt/detector-dns-rfc2136.ini")
    assert ini.split() == ["600", "root"]


def test_only_ssh_and_tls_ports_are_reachable(provisioned: Provisioned):
    address = provisioned.host.address
    probe = "detector-probe-8081"
    provisioned.sh(
        f"sudo systemd-run --unit {probe} --property=RuntimeMaxSec=120 "
        "python3 -m http.server --bind 0.0.0.0 8081"
    )
    try:
        local = provisioned.sh(
            'for i in $(seq 50); do python3 -c "import urllib.request as u; '
            "u.urlopen('http://127.0.0.1:8081/', timeout=2)\" && echo up && break; sleep 0.1; done"
        )
        assert "up" in local  # the service listens; only the firewall stands in the way
        assert reachable(address, 22)
        for port in PORTS:
            assert reachable(address, port)
        for port in CLOSED_PORTS:
            assert not reachable(address, port), f"port {port} is reachable from outside"
    finally:
        provisioned.sh(f"sudo systemctl stop {probe}", check=False)
    assert "Status: active" in provisioned.sh("sudo ufw status")


def test_service_unit_exposure_is_at_most_1(provisioned: Provisioned):
    """Issue 13's bound: systemd-analyze security on the booted host scores the unit <= 1.0."""
    out = provisioned.sh("sudo systemd-analyze security --no-pager detector@blue.service")
    exposure = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out).group(1))
    print(f"systemd-analyze security detector@blue.service: {exposure}")
    assert exposure <= 1.0, out


def test_weights_match_the_manifest_on_the_host(provisioned: Provisioned):
    entry = tomllib.loads((REPO / "weights" / "manifest.toml").read_text())[MODEL]
    out = provisioned.sh(f"sha256sum /var/lib/detector/weights/{entry['file']}")
    assert out.split()[0] == entry["sha256"]
    local = hashlib.sha256((REPO / "weights" / entry["file"]).read_bytes()).hexdigest()
    assert local == entry["sha256"]


def test_dns_a_record_points_at_the_host(provisioned: Provisioned):
    assert provisioned.host.address in provisioned.bed.resolve(DOMAIN)


def test_deploy_user_gets_only_its_commands(provisioned: Provisioned):
    deploy = dataclasses.replace(
        provisioned.host, user="deploy", key_path=str(provisioned.user.deploy_key)
    )
    helper = "/usr/local/sbin/detector-activate"  # the switch: only names, checked again by it
    assert ssh(deploy, f"sudo -n {helper} --sync", check=False).returncode == 0
    assert ssh(deploy, "sudo -n /usr/sbin/nginx -t -q", check=False).returncode != 0
    assert ssh(deploy, "sudo -n /usr/bin/id", check=False).returncode != 0
    assert ssh(deploy, "sudo -n /usr/bin/systemctl restart nginx.service", check=False).returncode
    owner = provisioned.sh("stat -c '%U %G %a' /opt/detector /opt/detector/releases")
    assert owner.split() == ["root", "detector", "755", "deploy", "detector", "755"]


def test_forced_renewal_through_the_timer_service_serves_a_new_serial(provisioned: Provisioned):
    assert provisioned.sh("systemctl is-active detector-certbot-renew.timer").strip() == "active"
    before = serials(provisioned)
    nginx_pid = provisioned.sh("systemctl show -p MainPID --value nginx.service").strip()
    forced = RENEW_SERVICE.replace(".service", "@force.service")  # flag fixed in that unit
    provisioned.sh(f"sudo systemctl start {forced}")
    after = serials(provisioned)
    assert len(set(after.values())) == 1  # both ports serve the same, new certificate
    assert set(after.values()).isdisjoint(before.values())
    assert provisioned.sh("systemctl show -p MainPID --value nginx.service").strip() == nginx_pid


def test_reboot_brings_nginx_and_the_firewall_back(provisioned: Provisioned):
    before = serials(provisioned)
    provisioned.bed.reboot(provisioned.host)
    assert provisioned.sh("systemctl is-active nginx.service").strip() == "active"
    assert provisioned.sh("systemctl is-active detector-certbot-renew.timer").strip() == "active"
    assert "Status: active" in provisioned.sh("sudo ufw status")
    assert serials(provisioned) == before
    assert provisioned.sh("systemctl cat detector@blue.service", check=False).strip()
    assert not reachable(provisioned.host.address, 8000)


def test_fab_deploy_status_and_forced_renewal_with_the_readme_commands(provisioned: Provisioned):
    """`fab deploy`, `fab status`, `fab renew-cert --force`: the default inventory, no vault
    password, from the user's clone; the page then answers over TLS on every port."""
    user = provisioned.user
    deploy = user.fab("deploy")
    assert deploy.returncode == 0, _tail(deploy)
    status = user.fab("status")
    assert status.returncode == 0, _tail(status)
    assert provisioned.host.name in status.stdout
    before = serials(provisioned)
    renew = user.fab("renew-cert", "--force")
    assert renew.returncode == 0, _tail(renew)
    after = serials(provisioned)
    assert set(after.values()).isdisjoint(before.values())
    for port in PORTS:
        _, code, _ = served(provisioned.bed, provisioned.host.address, port)
        assert code == 200
    output = deploy.stdout + deploy.stderr + status.stdout + status.stderr + renew.stdout
    assert provisioned.bed.dns.tsig.secret not in output + renew.stderr


OPENVINO_CACHE = "/var/lib/detector/weights/.openvino"  # detector_openvino_cache_dir's default


def test_the_openvino_model_is_converted_once_and_reused(provisioned: Provisioned):
    """Issue 14 on the user's host: the deploy's first start converted the model into the service
    user's cache (nothing group/other-writable), `fab restart` starts from that cache (/version
    says "cached", the manifests are untouched), and `fab status` names the served engine."""
    user, address = provisioned.user, provisioned.host.address

    def engine_reason() -> str:
        _, code, info = served(provisioned.bed, address, 443, "/version")
        assert code == 200, info
        return info.get("engine_reason", "")

    assert "openvino model" in engine_reason()
    manifests = provisioned.sh(
        f"sudo find {OPENVINO_CACHE} -name manifest.json -printf '%u %m %i %T@ %p\\n' | sort"
    ).strip()
    assert manifests, f"no converted model under {OPENVINO_CACHE}"
    for line in manifests.splitlines():
        owner, mode = line.split()[:2]
        assert owner == "detector" and not int(mode, 8) & 0o022, line
    restart = user.fab("restart")
    assert restart.returncode == 0, _tail(restart)
    reason = engine_reason()
    assert "openvino model cached" in reason, reason
    again = provisioned.sh(
        f"sudo find {OPENVINO_CACHE} -name manifest.json -printf '%u %m %i %T@ %p\\n' | sort"
    ).strip()
    assert again == manifests, "a restart rebuilt the cache"
    status = user.fab("status")
    assert status.returncode == 0, _tail(status)
    assert re.search(r"engine (torch|openvino|opencv)-(fp32|bf16|int8)", status.stdout), (
        status.stdout
    )


KEYS_LINE = '# detector_api_keys: "{{ vault_detector_api_keys }}"'


def deepstack_request(bed: Testbed, address: str, port: int, image: bytes, **fields):
    """POST /v1/vision/detection over TLS, the body built by requests exactly as deepstack-python
    (Home Assistant's client) builds it: data fields, then the `image` file; (status, JSON)."""
    guard(address)
    url = f"https://{DOMAIN}:{port}/v1/vision/detection"
    prepared = requests.Request("POST", url, files={"image": image}, data=fields).prepare()
    context = ssl.create_default_context(cafile=bed.acme.root_path)
    conn = http.client.HTTPSConnection(DOMAIN, port, timeout=60, context=context)
    raw = socket.create_connection((address, port), timeout=60)
    conn.sock = context.wrap_socket(raw, server_hostname=DOMAIN)
    try:
        conn.request("POST", "/v1/vision/detection", prepared.body, dict(prepared.headers))
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_api_keys_from_the_vault_guard_deepstack_requests(provisioned: Provisioned):
    """README "Integrations", the user's way: a key into the vault (ansible-vault decrypt, edit,
    encrypt), the vars.yml line uncommented, provision.yml again, `fab deploy` (its gate holds no
    key); then a DeepStack request as Home Assistant sends it gets the smoke image's cup over TLS
    on every port with the key, 401 without or with a wrong one; `fab status` still works; the
    key is in no output or log and its file is 0640 root:detector."""
    user, bed = provisioned.user, provisioned.bed
    key = secrets.token_hex(32)
    vault = user.inventory / "group_vars" / "all" / "vault.yml"
    password = ["--vault-password-file", str(user.password_file)]
    opened = user.run(["ansible-vault", "decrypt", str(vault), *password])
    assert opened.returncode == 0, _tail(opened)
    vault.write_text(vault.read_text().rstrip("\n") + f'\nvault_detector_api_keys: ["{key}"]\n')
    sealed = user.run(["ansible-vault", "encrypt", str(vault), *password])
    assert sealed.returncode == 0 and vault.read_bytes().startswith(b"$ANSIBLE_VAULT;")
    variables = user.inventory / "group_vars" / "detector" / "vars.yml"
    assert KEYS_LINE in variables.read_text(), "the example lost the line the README names"
    variables.write_text(variables.read_text().replace(KEYS_LINE, KEYS_LINE[2:]))
    run = user.provision()
    assert run.returncode == 0, _tail(run)
    assert "Prepare the OpenVINO models" in run.stdout  # a release exists now: the step runs
    assert not [t for t in changed_tasks(run.stdout) if "OpenVINO" in t]  # and finds the cache
    deploy = user.fab("deploy")
    assert deploy.returncode == 0, _tail(deploy)
    assert "needs an API key (401 from" in deploy.stdout + deploy.stderr
    image = (REPO / "deploy" / "smoke.jpg").read_bytes()
    address = provisioned.host.address
    for port in PORTS:
        status, body = deepstack_request(bed, address, port, image, api_key=key, min_confidence=0.1)
        assert status == 200 and body["success"] is True, body
        assert "cup" in {p["label"] for p in body["predictions"]}, body
        assert all(isinstance(p["x_min"], int) for p in body["predictions"])
        for wrong in ("", "0" * 64):
            status, body = deepstack_request(bed, address, port, image, api_key=wrong)
            assert status == 401 and body["success"] is False, body
    status = user.fab("status")
    assert status.returncode == 0, _tail(status)
    mode = provisioned.sh("sudo stat -c '%a %U %G' /etc/detector/detector.toml").split()
    assert mode == ["640", "root", "detector"]
    logs = provisioned.sh(
        "sudo journalctl --no-pager -u 'detector@*' -q; sudo cat /var/log/nginx/*.log", check=False
    )
    outputs = [run.stdout, run.stderr, deploy.stdout, deploy.stderr, status.stdout, logs]
    assert all(key not in text for text in outputs)
