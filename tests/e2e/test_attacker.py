"""An attacker holding the deploy key (or the hosts' TSIG key) on a provisioned bed host.

What they must not get: a root-only file, a directive of theirs in nginx's http context, root
running anything they can write, another DNS record; and an interrupted switch (fab killed
between its steps) must come back consistent from THE live record after a reboot.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import pytest

from testbed import DOMAIN
from testbed import Testbed
from testbed import acme
from testbed.hosts import Host
from testbed.hosts import ssh
from testbed.userpath import ReadmeHost
from testbed.userpath import UserInventory
from testbed.userpath import changed_tasks

HELPER = "/usr/local/sbin/detector-activate"
INCLUDE = "/etc/nginx/detector-upstream.conf"
RECORD = "/var/lib/detector/live-color"


@dataclasses.dataclass
class Bed:
    bed: Testbed
    host: Host  # as admin (passwordless sudo: the test's own root)
    deploy: Host  # as the deploy user: the attacker
    user: UserInventory

    def root(self, command: str, check: bool = True) -> str:
        return ssh(self.host, f"sudo sh -c {_q(command)}", check=check).stdout

    def attacker(self, command: str) -> subprocess.CompletedProcess:
        return ssh(self.deploy, command, check=False)


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture(scope="module")
def bed(readme_host: ReadmeHost) -> Bed:
    """The session's README-path host (test_cert_alerts shares it: colors are read, not assumed)."""
    host = readme_host.host
    deploy = dataclasses.replace(host, user="deploy", key_path=str(readme_host.user.deploy_key))
    return Bed(readme_host.bed, host, deploy, readme_host.user)


def test_the_deploy_key_is_not_the_admin_login(bed: Bed):
    """The README path gives the deploy user a key of its own: it does not open the sudoer."""
    assert bed.deploy.key_path != bed.host.key_path
    assert bed.attacker("id -un").stdout.strip() == "deploy"
    as_admin = dataclasses.replace(bed.deploy, user=bed.host.user)
    refused = ssh(as_admin, "id -un", check=False)
    assert refused.returncode != 0 and "admin" not in refused.stdout
    keys = bed.root("cat /home/deploy/.ssh/authorized_keys").splitlines()
    own = Path(f"{bed.deploy.key_path}.pub").read_text().split()[1]
    assert [k.split()[1] for k in keys if k.strip()] == [own]


def test_sudo_lists_only_argument_free_or_validated_commands(bed: Bed):
    listed = bed.attacker("sudo -n -l").stdout
    granted = " ".join(listed.split("NOPASSWD:", 1)[1].split())  # sudo may wrap long lines
    commands = [c.strip() for c in granted.split(",") if c.strip()]
    allowed = {
        f"{HELPER} blue",
        f"{HELPER} green",
        f"{HELPER} --sync",
        "/usr/bin/systemctl --no-pager start detector-certbot-renew.service",
        "/usr/bin/systemctl --no-pager start detector-certbot-renew@force.service",
        "/usr/bin/systemctl --no-pager start detector-certbot-renew@dry-run.service",
    }
    for color in ("blue", "green"):
        for verb in ("start", "stop", "reset-failed"):
            allowed.add(f"/usr/bin/systemctl --no-pager {verb} detector@{color}.service")
    assert set(commands) == allowed, listed
    helper = bed.root(f"stat -c '%U %G %a' {HELPER} /etc/detector-activate.json")
    assert helper.split() == ["root", "root", "755", "root", "root", "644"]


def test_the_symlink_trick_no_longer_copies_a_root_only_file(bed: Bed):
    staged = "/opt/detector/shared/staging/nginx-upstream.conf"
    trick = bed.attacker(
        f"mkdir -p /opt/detector/shared/staging && ln -sf /etc/shadow {staged} && "
        f"sudo -n /usr/bin/install -m 0644 -o root -g root {staged} {INCLUDE}"
    )
    assert trick.returncode != 0
    assert "root:" not in bed.root(f"cat {INCLUDE}")
    # nor through the helper: it takes no path, and names nothing the caller controls
    for argv in (staged, f"--sync {staged}", "/etc/shadow", "../blue"):
        refused = bed.attacker(f"sudo -n {HELPER} {argv}")
        assert refused.returncode != 0, argv
    assert "root:" not in bed.attacker(f"cat {INCLUDE} {RECORD} 2>&1").stdout


def test_the_deploy_user_cannot_put_a_directive_into_the_include(bed: Bed):
    before = bed.root(f"cat {INCLUDE}")
    attempts = [
        f"echo 'ssl_certificate_key /etc/shadow;' >> {INCLUDE}",
        f"echo green > {RECORD}",
        "echo '{}' > /etc/detector-activate.json",
        f"sudo -n {HELPER} 'blue; }} include /opt/detector/shared/x; upstream y {{'",
        "ln -sfn /opt/detector/shared /opt/detector/current",
        "mv /opt/detector/venv /opt/detector/shared/venv-moved",  # swap root's interpreter
        "sudo -n /usr/sbin/nginx -t -q",  # no longer granted: the helper checks nginx itself
    ]
    for command in attempts:
        assert bed.attacker(command).returncode != 0, command
    assert bed.root(f"cat {INCLUDE}") == before
    owners = bed.root(
        "stat -c '%n %U' /opt/detector /opt/detector/venv /opt/detector/env /var/lib/detector"
    )
    assert all(line.endswith(" root") for line in owners.splitlines()), owners
    unit = bed.root("systemctl cat detector@blue.service")
    assert "EnvironmentFile" not in unit.replace("# No EnvironmentFile", "")


def test_the_hosts_tsig_key_cannot_change_another_record(bed: Bed):
    key = bed.bed.dns.tsig  # the key every host holds in its certbot credentials
    for attack in (
        [f"update add www.{DOMAIN}. 60 A 203.0.113.66"],
        [f"update add {DOMAIN}. 60 NS ns.attacker.example."],
        [f"update delete {bed.host.name}.{DOMAIN}. A"],
    ):
        with pytest.raises(subprocess.CalledProcessError) as refused:
            acme.nsupdate(bed.bed.dns, attack, key=key)
        assert "REFUSED" in (refused.value.stdout or "") + (refused.value.stderr or "")
    assert bed.bed.resolve(f"www.{DOMAIN}") == []
    assert bed.bed.resolve(f"{bed.host.name}.{DOMAIN}") == [bed.host.address]
    # ...while provisioning got its certificate with that key (DNS-01) and set the A record
    assert bed.host.address in bed.bed.resolve(DOMAIN)


def _serving(bed: Bed) -> str:
    """The release nginx serves on the host's 443 ('' unless /readyz answers 200)."""
    head = bed.root(
        f"curl -sk -o /dev/null -D - --resolve {DOMAIN}:443:127.0.0.1 https://{DOMAIN}/readyz",
        check=False,
    ).replace("\r", "")
    lines = head.splitlines()
    if not lines or " 200" not in lines[0]:
        return ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-detector-release":
            return value.strip()
    return ""


def _other(color: str) -> str:
    return {"blue": "green", "green": "blue"}[color]


def test_an_interrupted_switch_comes_back_consistent_after_a_reboot(bed: Bed):
    deploy = bed.user.fab("deploy")
    assert deploy.returncode == 0, (deploy.stdout + deploy.stderr)[-3000:]
    live = bed.root(f"cat {RECORD}").strip()  # blue on a fresh host; the record says which
    idle = _other(live)
    rid = bed.root(f"readlink -e /opt/detector/colors/{live}").strip().rsplit("/", 1)[-1]
    assert _serving(bed) == rid
    # fab's switch, run by hand as the deploy user and "killed" after the helper wrote the
    # record: the idle color booted and made live, the old one never stopped ...
    steps = bed.attacker(
        f"ln -sfn $(readlink -e /opt/detector/colors/{live}) /opt/detector/colors/{idle}.tmp && "
        f"mv -T /opt/detector/colors/{idle}.tmp /opt/detector/colors/{idle} && "
        f"sudo -n /usr/bin/systemctl --no-pager start detector@{idle}.service && "
        f"sudo -n {HELPER} {idle}"
    )
    assert steps.returncode == 0, steps.stderr
    # ... and worse than any SSH drop: power lost between the record and the include
    stale = f"upstream detector {{\\n    server unix:/run/detector/{live}.sock;\\n}}\\n"
    bed.root(f"printf '{stale}' > {INCLUDE}")
    bed.root("rm -f /opt/detector/current")
    bed.bed.reboot(bed.host)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and _serving(bed) != rid:
        time.sleep(2)
    assert _serving(bed) == rid
    assert bed.root(f"cat {RECORD}").strip() == idle
    assert f"/run/detector/{idle}.sock" in bed.root(f"cat {INCLUDE}")
    assert bed.root("readlink /opt/detector/current").strip() == f"/opt/detector/colors/{idle}"
    state = bed.root(
        f"systemctl is-active detector@{idle}.service detector@{live}.service; "
        f"systemctl is-enabled detector@{idle}.service detector@{live}.service",
        check=False,
    ).split()
    assert state == ["active", "inactive", "disabled", "disabled"], state
    status = bed.user.fab("status")
    assert status.returncode == 0, status.stdout[-2000:]
    assert f"live color {idle}" in status.stdout, status.stdout[-2000:]
    again = bed.user.fab("deploy")  # and the next deploy goes on from the record
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert bed.root(f"cat {RECORD}").strip() == live


# Planted by the attacker as the usercustomize of the deploy user's and the service user's
# Python (their homes are deploy-writable): inside an Ansible module run as either of them
# (become_user: sudo's command is Ansible's BECOME-SUCCESS line), it answers for the module a
# result whose facts point root's next helper call at the attacker's script.
USERCUSTOMIZE = """\
import json, os, sys
if os.getuid() != 0 and "BECOME-SUCCESS" in os.environ.get("SUDO_COMMAND", ""):
    with open("/tmp/attacker-module-ran-as-%d" % os.getuid(), "w") as fh:
        fh.write(os.environ["SUDO_COMMAND"])
    facts = {"deploy_access_helper": "/opt/detector/shared/attacker-helper"}
    sys.stdout.write(json.dumps({"changed": False, "rc": 0, "stdout": "", "stderr": "",
                                 "ansible_facts": facts}) + "\\n")
    sys.stdout.flush()
    os._exit(0)
"""
PWNED = "/var/lib/detector/attacker-ran-as-root"
FAKE_HELPER = f'#!/bin/sh\ntouch {PWNED}\nexec {HELPER} "$@"\n'


def test_provisioning_runs_no_module_as_the_deploy_or_service_user(bed: Bed):
    """A provisioning that rolls (a config change) and prepares the model never runs Ansible's
    own Python as the deploy or the service user: the deploy user's planted usercustomize never
    runs inside a module, no fact of its making reaches root, root runs no script of its."""
    there = bed.root("test -x /opt/detector/current/bin/detector && echo yes", check=False)
    if there.strip() != "yes":
        first = bed.user.fab("deploy")  # `detector prepare` runs only once a release is there
        assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    sites = []
    for home in ("/home/deploy", "/opt/detector/shared"):
        site = bed.attacker(
            f"HOME={home} python3 -c 'import site; print(site.getusersitepackages())'"
        ).stdout.strip()
        assert site.startswith(home + "/.local/"), site
        sites.append(site)
    plant = " && ".join(
        [f"mkdir -p {s} && printf %s {_q(USERCUSTOMIZE)} > {s}/usercustomize.py" for s in sites]
        + [
            f"printf %s {_q(FAKE_HELPER)} > /opt/detector/shared/attacker-helper",
            "chmod 755 /opt/detector/shared/attacker-helper",
        ]
    )
    planted = bed.attacker(plant)
    assert planted.returncode == 0, planted.stderr
    live = bed.root(f"cat {RECORD}").strip()
    try:
        bed.root("touch /etc/detector/detector.toml")  # the operator changed a setting: a roll
        run = bed.user.provision()
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        changed = "\n".join(changed_tasks(run.stdout))
        assert "Take the deploy lock" in changed, changed  # the deploy user's steps ran ...
        assert "Prepare the OpenVINO models" in run.stdout  # ... and the service user's
        assert bed.root(f"cat {RECORD}").strip() == _other(live)  # rolled onto the idle color
        ran = bed.root(f"ls /tmp/attacker-module-ran-as-* {PWNED} 2>/dev/null; true")
        assert ran.strip() == "", ran
    finally:
        bed.attacker(
            f"rm -f {' '.join(s + '/usercustomize.py' for s in sites)} "
            "/opt/detector/shared/attacker-helper"
        )
        bed.root(f"rm -f /tmp/attacker-module-ran-as-* {PWNED}")
