"""Host keys, a failing renewal and the staging pin, on the README-path host with `fab`.

Each test changes a setting the way the README tells a user (an edit of the copied inventory,
then `fab`), and puts it back, so the host stays shared with test_attacker (conftest's
``readme_host``).
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest

from deploy import inventory
from testbed import DOMAIN
from testbed.inventory import BED_VARS
from testbed.inventory import set_settings
from testbed.provisioning import Run
from testbed.userpath import ReadmeHost
from testbed.userpath import UserInventory

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "cert-alerts"
RENEW = "detector-certbot-renew"
STATE_DIR = "/var/lib/detector-certbot"
TEXTFILE = "/var/lib/prometheus/node-exporter/detector_certificate.prom"


@pytest.fixture(scope="module")
def site(readme_host: ReadmeHost) -> ReadmeHost:
    """The session's README-path host (Pebble certificate, renewal units, alerts)."""
    return readme_host


def sh(site: ReadmeHost, command: str, check: bool = True) -> str:
    return site.bed.ssh(site.host, command, check=check, timeout=600).stdout


def fab(user: UserInventory, *args: str, name: str) -> Run:
    """Run fab as the README prints it (from the user's checkout); keep its output."""
    run = user.fab(*args)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.log").write_text(
        f"$ {' '.join(user.fab_argv(*args))}  # {run.seconds:.1f}s rc={run.returncode}\n"
        f"{run.stdout}\n{run.stderr}"
    )
    return run


@contextmanager
def edited(path: Path, drop: tuple[str, ...] = (), **values) -> Iterator[Path]:
    """An inventory file edited as a user would (values set, drop's lines removed), restored."""
    before = path.read_text() if path.exists() else None
    try:
        if drop:
            kept = [
                line for line in path.read_text().splitlines() if line.split(":")[0] not in drop
            ]
            path.write_text("\n".join(kept) + "\n")
        if values:
            set_settings(path, values)
        yield path
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)


def _host_key(site: ReadmeHost) -> paramiko.PKey:
    pub = Path(site.host.root) / "etc" / "ssh" / "ssh_host_ed25519_key.pub"
    kind, blob = pub.read_text().split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


def test_fab_refuses_unknown_and_changed_host_keys_until_trust_host(site: ReadmeHost, tmp_path):
    real = _host_key(site).fingerprint
    # First contact (README step 4) from a laptop whose ~/.ssh knows nothing of the VM, with the
    # inventory naming a known_hosts file of its own for the host (host_vars/<host>.yml,
    # UserKnownHostsFile in ansible_ssh_common_args), which holds no key yet.
    known = tmp_path / "trusted" / "known_hosts"
    (tmp_path / "home").mkdir()
    user = dataclasses.replace(site.user, home=tmp_path / "home")
    host_vars = site.user.inventory / "host_vars" / f"{site.host.name}.yml"
    ssh_args = f"-o UserKnownHostsFile={known} -o IdentitiesOnly=yes"
    with edited(host_vars, ansible_ssh_common_args=ssh_args):
        unknown = fab(user, "status", name="status-unknown-key")
        assert unknown.returncode == 1
        assert f"offered SSH host key ssh-ed25519 {real}, which is in none of {known}" in (
            unknown.stderr
        )
        assert f"fab trust-host --hosts {site.host.name} --fingerprint {real}" in unknown.stderr

        other = paramiko.Ed25519Key.from_private_key_file(site.bed.key_path)  # another key
        known.parent.mkdir(exist_ok=True)
        known.write_text(f"{site.host.address} ssh-ed25519 {other.get_base64()}\n")
        changed = fab(user, "status", name="status-changed-key")
        assert changed.returncode == 1
        assert f"offered SSH host key ssh-ed25519 {real}, but known_hosts" in changed.stderr
        assert other.fingerprint in changed.stderr and "ssh-keygen -R" in changed.stderr

        known.write_text("")
        args = ("trust-host", "--hosts", site.host.name, "--fingerprint")
        wrong = fab(user, *args, other.fingerprint, name="trust-host-wrong")
        assert wrong.returncode == 1 and known.read_text() == ""
        right = fab(user, *args, real, name="trust-host-right")
        assert right.returncode == 0, right.stdout + right.stderr
        assert known.read_text().split()[:2] == [site.host.address, "ssh-ed25519"]
        trusted = fab(user, "status", name="status-trusted-key")
        assert trusted.returncode == 0, trusted.stdout + trusted.stderr
        assert "last certificate renewal run: ok" in trusted.stdout


def test_a_failing_renewal_runs_on_failure_and_fab_status_fails_until_renewed(site: ReadmeHost):
    user = site.user  # the inventory as provisioned (its known_hosts: the keys from the rootfs)
    served_before = sh(site, f"sudo openssl x509 -noout -enddate -in {STATE_DIR}/fullchain.pem")
    unit = f"{RENEW}@force.service"
    exec_start = next(
        line
        for line in sh(site, f"systemctl cat {unit}").splitlines()
        if line.startswith("ExecStart=")
    )
    dropin = f"/etc/systemd/system/{unit}.d"
    sh(  # the ACME server is unreachable: nothing listens on the host's port 9
        site,
        f"sudo mkdir -p {dropin} && printf '[Service]\\nExecStart=\\n%s\\n' "
        f"'{exec_start} --server https://127.0.0.1:9/dir' | sudo tee {dropin}/unreachable.conf"
        " >/dev/null && sudo systemctl daemon-reload",
    )
    try:
        started = site.bed.ssh(site.host, f"sudo systemctl start {unit}", check=False)
        assert started.returncode != 0
        deadline = time.monotonic() + 60
        while "unit=" not in sh(site, f"cat {STATE_DIR}/renewal-failed", check=False):
            assert time.monotonic() < deadline, "the OnFailure= unit left no marker"
            time.sleep(1)
        logged = sh(site, f"sudo journalctl -p err -o cat -u '{RENEW}-failure@*' --no-pager")
        assert f"certificate renewal FAILED: {unit}" in logged
        assert f'detector_certificate_renewal_failed{{domain="{DOMAIN}"}} 1' in sh(
            site, f"cat {TEXTFILE}"
        )
        status = fab(user, "status", name="status-renewal-failed")
        assert status.returncode == 1, status.stdout + status.stderr
        assert f"certificate renewal FAILED ({unit} at " in status.stderr
    finally:
        sh(site, f"sudo rm -rf {dropin} && sudo systemctl daemon-reload")
    renewed = fab(user, "renew-cert", "--force", name="renew-after-failure")
    assert renewed.returncode == 0, renewed.stdout[-2000:] + renewed.stderr[-2000:]
    assert sh(site, f"cat {STATE_DIR}/renewal-failed", check=False) == ""
    metric = sh(site, f"cat {TEXTFILE}")
    assert f'detector_certificate_renewal_failed{{domain="{DOMAIN}"}} 0' in metric
    served_after = sh(site, f"openssl x509 -noout -enddate -in {STATE_DIR}/fullchain.pem")
    end = served_after.strip().split("=", 1)[1]
    epoch = sh(site, f"date -u -d '{end}' +%s").strip()
    assert f'detector_certificate_expiry_timestamp_seconds{{domain="{DOMAIN}"}} {epoch}' in metric
    assert served_before  # read before the failure; the renewal installed a new public copy
    status = fab(user, "status", name="status-after-renewal")
    assert status.returncode == 0, status.stdout + status.stderr


def test_staging_deploy_pins_the_installed_certificate_instead_of_the_system_cas(
    site: ReadmeHost,
):
    # What a user has with Let's Encrypt staging (README step 8): `detector_acme_staging: true`
    # in group_vars/all/vars.yml, as the example ships it, and no CA file for fab: the bed's
    # Pebble root (detector_acme_root_ca, named only in the bed's own file) is left out. The
    # playbook does not read either (the bed's explicit ACME server wins), so no rerun.
    inv = site.user.inventory
    with (
        edited(inv / "group_vars" / "all" / "vars.yml", detector_acme_staging=True),
        edited(inv / BED_VARS, drop=("detector_acme_root_ca",)),
    ):
        (host,) = inventory.load(str(inv))
        assert host.ca_bundle == "" and host.acme_staging
        deployed = fab(site.user, "deploy", name="deploy-staging")
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-2000:]
        assert "detection(s): cup" in deployed.stdout
        assert f"leaf pinned to {STATE_DIR}/fullchain.pem on the host" in deployed.stdout
        status = fab(site.user, "status", name="status-staging")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "TLS: staging/private ACME: leaf pinned" in status.stdout
        assert ":443 /readyz 200" in status.stdout
