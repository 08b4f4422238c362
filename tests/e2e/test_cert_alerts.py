"""Host keys, a failing renewal and the staging pin, on a provisioned test-bed host with `fab`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from deploy import inventory
from testbed import DOMAIN
from testbed import Testbed
from testbed import guard
from testbed.hosts import Host
from testbed.provisioning import MODEL
from testbed.provisioning import playbook
from testbed.provisioning import variables
from testbed.provisioning import wheelhouse_requirements

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "cert-alerts"
FAB = str(Path(sys.executable).with_name("fab"))
RENEW = "detector-certbot-renew"
STATE_DIR = "/var/lib/detector-certbot"
TEXTFILE = "/var/lib/prometheus/node-exporter/detector_certificate.prom"


@dataclass
class Site:
    """A provisioned host, its fab inventory values and a private HOME for fab."""

    bed: Testbed
    host: Host
    work: Path
    values: dict

    def sh(self, command: str, check: bool = True) -> str:
        return self.bed.ssh(self.host, command, check=check, timeout=600).stdout

    def inventory(self, name: str, **changes) -> Path:
        """A fab inventory for the host: the bed's values with changes (None drops a value)."""
        inv = self.work / name
        (inv / "host_vars").mkdir(parents=True, exist_ok=True)
        tree = {"all": {"children": {"detector": {"hosts": {self.host.name: {}}}}}}
        (inv / "hosts.yml").write_text(json.dumps(tree))
        values = {**self.values, **changes}
        values = {k: v for k, v in values.items() if v is not None}
        (inv / "host_vars" / f"{self.host.name}.yml").write_text(json.dumps(values))
        return inv

    def fab(self, inv: Path, *args: str, name: str, timeout: int = 1200):
        """Run the real fab CLI with HOME set to an empty dir (no ~/.ssh/known_hosts of ours)."""
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env.update(HOME=str(self.work / "home"), **{inventory.INVENTORY_ENV: str(inv)})
        start = time.monotonic()
        proc = subprocess.run(
            [FAB, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"{name}.log").write_text(
            f"$ fab {' '.join(args)}  # {time.monotonic() - start:.1f}s rc={proc.returncode}\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
        return proc


@pytest.fixture(scope="module")
def site(testbed, testbed_hosts, tmp_path_factory) -> Site:
    """A fresh host provisioned by the playbook (Pebble certificate, renewal units, alerts)."""
    if not (ROOT / "weights" / f"{MODEL}.weights").is_file():
        pytest.skip(f"weights/{MODEL}.weights is missing: run `make setup` (make weights)")
    host = testbed_hosts(1, fresh=True)[0]
    guard(host.address)
    work = tmp_path_factory.mktemp("cert-alerts")
    (work / "home").mkdir()
    testbed.build_wheelhouse(wheelhouse_requirements(work / "requirements.txt"))
    values = variables(testbed)
    (work / "variables.json").write_text(json.dumps(values))
    run = playbook(testbed, host.name, work / "variables.json")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "provision.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    values.update(
        ansible_host=host.address,
        ansible_ssh_private_key_file=host.key_path,
        detector_deploy_gate_timeout_s=60,
        detector_deploy_drain_s=2,
    )
    return Site(testbed, host, work, values)


def _host_key(site: Site) -> paramiko.PKey:
    pub = Path(site.host.root) / "etc" / "ssh" / "ssh_host_ed25519_key.pub"
    kind, blob = pub.read_text().split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


def test_fab_refuses_unknown_and_changed_host_keys_until_trust_host(site: Site):
    real = _host_key(site).fingerprint
    known = site.work / "trusted" / "known_hosts"
    inv = site.inventory(
        "inv-keys", ansible_ssh_common_args=None, detector_ssh_known_hosts=str(known)
    )
    unknown = site.fab(inv, "status", name="status-unknown-key")
    assert unknown.returncode == 1
    assert f"offered SSH host key ssh-ed25519 {real}, which is in none of {known}" in (
        unknown.stderr
    )
    assert f"fab trust-host --hosts {site.host.name} --fingerprint {real}" in unknown.stderr

    other = paramiko.Ed25519Key.from_private_key_file(site.bed.key_path)  # any other ed25519 key
    known.parent.mkdir(exist_ok=True)
    known.write_text(f"{site.host.address} ssh-ed25519 {other.get_base64()}\n")
    changed = site.fab(inv, "status", name="status-changed-key")
    assert changed.returncode == 1
    assert f"offered SSH host key ssh-ed25519 {real}, but known_hosts" in changed.stderr
    assert other.fingerprint in changed.stderr and "ssh-keygen -R" in changed.stderr

    known.write_text("")
    args = ("trust-host", "--hosts", site.host.name, "--fingerprint")
    wrong = site.fab(inv, *args, other.fingerprint, name="trust-host-wrong")
    assert wrong.returncode == 1 and known.read_text() == ""
    right = site.fab(inv, *args, real, name="trust-host-right")
    assert right.returncode == 0, right.stdout + right.stderr
    assert known.read_text().split()[:2] == [site.host.address, "ssh-ed25519"]
    trusted = site.fab(inv, "status", name="status-trusted-key")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert "last certificate renewal run: ok" in trusted.stdout


def test_a_failing_renewal_runs_on_failure_and_fab_status_fails_until_renewed(site: Site):
    inv = site.inventory("inv-bed")  # the bed's known_hosts (keys read from the rootfs)
    served_before = site.sh(f"sudo openssl x509 -noout -enddate -in {STATE_DIR}/fullchain.pem")
    unit = f"{RENEW}@force.service"
    exec_start = next(
        line
        for line in site.sh(f"systemctl cat {unit}").splitlines()
        if line.startswith("ExecStart=")
    )
    dropin = f"/etc/systemd/system/{unit}.d"
    site.sh(  # the ACME server is unreachable: nothing listens on the host's port 9
        f"sudo mkdir -p {dropin} && printf '[Service]\\nExecStart=\\n%s\\n' "
        f"'{exec_start} --server https://127.0.0.1:9/dir' | sudo tee {dropin}/unreachable.conf"
        " >/dev/null && sudo systemctl daemon-reload"
    )
    try:
        started = site.bed.ssh(site.host, f"sudo systemctl start {unit}", check=False)
        assert started.returncode != 0
        deadline = time.monotonic() + 60
        while "unit=" not in site.sh(f"cat {STATE_DIR}/renewal-failed", check=False):
            assert time.monotonic() < deadline, "the OnFailure= unit left no marker"
            time.sleep(1)
        logged = site.sh(f"sudo journalctl -p err -o cat -u '{RENEW}-failure@*' --no-pager")
        assert f"certificate renewal FAILED: {unit}" in logged
        assert f'detector_certificate_renewal_failed{{domain="{DOMAIN}"}} 1' in site.sh(
            f"cat {TEXTFILE}"
        )
        status = site.fab(inv, "status", name="status-renewal-failed")
        assert status.returncode == 1, status.stdout + status.stderr
        assert f"certificate renewal FAILED ({unit} at " in status.stderr
    finally:
        site.sh(f"sudo rm -rf {dropin} && sudo systemctl daemon-reload")
    renewed = site.fab(inv, "renew-cert", "--force", name="renew-after-failure")
    assert renewed.returncode == 0, renewed.stdout[-2000:] + renewed.stderr[-2000:]
    assert site.sh(f"cat {STATE_DIR}/renewal-failed", check=False) == ""
    metric = site.sh(f"cat {TEXTFILE}")
    assert f'detector_certificate_renewal_failed{{domain="{DOMAIN}"}} 0' in metric
    served_after = site.sh(f"openssl x509 -noout -enddate -in {STATE_DIR}/fullchain.pem")
    end = served_after.strip().split("=", 1)[1]
    epoch = site.sh(f"date -u -d '{end}' +%s").strip()
    assert f'detector_certificate_expiry_timestamp_seconds{{domain="{DOMAIN}"}} {epoch}' in metric
    assert served_before  # read before the failure; the renewal installed a new public copy
    status = site.fab(inv, "status", name="status-after-renewal")
    assert status.returncode == 0, status.stdout + status.stderr


def test_staging_deploy_pins_the_installed_certificate_instead_of_the_system_cas(site: Site):
    # What a user has with Let's Encrypt staging: no CA file for fab, a non-production ACME server.
    inv = site.inventory(
        "inv-staging",
        detector_acme_root_ca=None,
        detector_deploy_ca_bundle=None,
        detector_acme_staging=True,
    )
    (host,) = inventory.load(str(inv))
    assert host.ca_bundle == "" and host.acme_staging
    deployed = site.fab(inv, "deploy", "--allow-dirty", name="deploy-staging")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-2000:]
    assert "detection(s): cup" in deployed.stdout
    assert f"leaf pinned to {STATE_DIR}/fullchain.pem on the host" in deployed.stdout
    status = site.fab(inv, "status", name="status-staging")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "TLS: staging/private ACME: leaf pinned" in status.stdout
    assert ":443 /readyz 200" in status.stdout
