"""A setting in inventory group_vars/all/, group_vars/<group>/ or host_vars/ wins in the playbook
and in fab, on detector hosts and on the lb host (role defaults are the lowest layer)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy import inventory

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
TAG = "precedence-probe"
# What each host should see: detector_domain from group_vars/all/, detector_model from
# group_vars/detector/, detector_releases_keep from host_vars/d2.yml, detector_acme_email from
# group_vars/lb/ (the lb is in no detector group), the rest from the role defaults.
EXPECTED = {
    "d1": {"domain": "all.example.test", "model": "from-group", "keep": 5, "email": ""},
    "d2": {"domain": "all.example.test", "model": "from-group", "keep": 9, "email": ""},
    "lb1": {"domain": "all.example.test", "model": "yolov3", "keep": 5, "email": "lb@x.test"},
}
PROBE = {
    "domain": "{{ detector_domain }}",
    "model": "{{ detector_model }}",
    "keep": "{{ detector_releases_keep }}",
    "email": "{{ detector_acme_email }}",
    "server_name": "{{ nginx_server_name }}",  # a role default derived from detector_domain
    "certbot_email": "{{ certbot_email }}",
}


def _tool(name: str) -> str:
    if not (BIN / name).exists():
        pytest.skip(f"{name} is not installed in {BIN}; run `make setup`")
    return str(BIN / name)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def user_inventory(tmp_path_factory) -> Path:
    """Two detectors and an lb (local connection), settings at each inventory level."""
    inv = tmp_path_factory.mktemp("precedence") / "production"
    local = f"ansible_connection: local, ansible_python_interpreter: {sys.executable}"
    _write(
        inv / "hosts.yml",
        "all:\n  children:\n    detector:\n      hosts:\n"
        f"        d1: {{ansible_host: 10.0.0.1, {local}}}\n"
        f"        d2: {{ansible_host: 10.0.0.2, {local}}}\n"
        f"    lb:\n      hosts:\n        lb1: {{ansible_host: 10.0.0.9, {local}}}\n",
    )
    _write(inv / "group_vars" / "all" / "vars.yml", "detector_domain: all.example.test\n")
    _write(inv / "group_vars" / "detector" / "vars.yml", "detector_model: from-group\n")
    _write(inv / "group_vars" / "lb" / "vars.yml", "detector_acme_email: lb@x.test\n")
    _write(inv / "host_vars" / "d2.yml", "detector_releases_keep: 9\n")
    return inv


def _probe_playbook(tmp: Path) -> Path:
    """provision.yml's plays (same hosts, same roles and conditions) with a debug task added.

    Written into a copy of ansible/ so that anything beside the playbook (group_vars/ included)
    counts as it does for provision.yml; only the probe task runs (--tags), as the real user.
    """
    copy = tmp / "ansible"
    shutil.copytree(ANSIBLE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    plays = yaml.safe_load((ANSIBLE / "provision.yml").read_text())
    probes = []
    for play in plays:
        probe = {k: v for k, v in play.items() if k in ("name", "hosts", "roles", "vars")}
        probe["become"] = False
        probe["tasks"] = [
            {
                "name": "Show the merged settings",
                "ansible.builtin.debug": {"msg": PROBE},
                "tags": [TAG],
            }
        ]
        probes.append(probe)
    path = copy / "probe.yml"
    path.write_text(yaml.safe_dump(probes, sort_keys=False))
    return path


def _messages(stdout: str) -> dict[str, dict]:
    seen: dict[str, dict] = {}
    for play in json.loads(stdout)["plays"]:
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                if task["task"]["name"] == "Show the merged settings":
                    seen[host] = result["msg"]
    return seen


def _probe(inv: Path, tmp_path: Path, *args: str) -> dict[str, dict]:
    playbook = _probe_playbook(tmp_path)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    result = subprocess.run(
        [_tool("ansible-playbook"), "-i", str(inv), str(playbook), *args]
        + ["--tags", TAG, "--skip-tags", "always"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return _messages(result.stdout)


def test_inventory_levels_win_in_the_playbook_on_detectors_and_the_lb(user_inventory, tmp_path):
    seen = _probe(user_inventory, tmp_path)
    assert sorted(seen) == sorted(EXPECTED)
    for host, want in EXPECTED.items():
        got = seen[host]
        assert {k: got[k] for k in want} == want, host
        assert got["server_name"] == "all.example.test", host  # derived role default follows
    assert seen["lb1"]["certbot_email"] == "lb@x.test"  # the lb's certificate roles see it


def test_inventory_levels_win_in_fab_on_detectors_and_the_lb(user_inventory):
    _tool("ansible-inventory")
    hosts, balancer = inventory.load_with_balancer(str(user_inventory))
    got = {h.name: (h.domain, h.releases_keep) for h in [*hosts, balancer.host]}
    assert got == {name: (want["domain"], want["keep"]) for name, want in EXPECTED.items()}
    hostvars = inventory.read(user_inventory)["_meta"]["hostvars"]
    assert hostvars["lb1"]["detector_acme_email"] == "lb@x.test"
    assert hostvars["d1"]["detector_model"] == "from-group"
    assert hostvars["lb1"]["detector_model"] == "yolov3"  # the role default, the lowest layer


def test_example_inventory_with_its_lb_shares_group_vars_all_and_an_encrypted_vault(tmp_path):
    """The README path: copy the example, enable its lb, encrypt vault.yml; lb and detector see
    the shared settings in the playbook (with the vault password) and in fab (without)."""
    inv = tmp_path / "production"
    shutil.copytree(ANSIBLE / "inventories" / "example", inv)
    hosts = (inv / "hosts.yml").read_text()
    block = hosts[hosts.index("    # lb:") :]
    (inv / "hosts.yml").write_text(hosts.replace(block, block.replace("    # ", "    ")))
    password = tmp_path / "vault-pass"
    password.write_text("example-password\n")
    subprocess.run(
        [_tool("ansible-vault"), "encrypt", "--vault-password-file", str(password)]
        + [str(inv / "group_vars" / "all" / "vault.yml")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    shared = yaml.safe_load(
        (ANSIBLE / "inventories" / "example" / "group_vars" / "all" / "vars.yml").read_text()
    )
    seen = _probe(inv, tmp_path, "--vault-password-file", str(password))
    assert sorted(seen) == ["detector-lb", "detector-vm"]
    for host in seen.values():
        assert host["domain"] == host["server_name"] == shared["detector_domain"]
        assert host["email"] == host["certbot_email"] == shared["detector_acme_email"]
    hosts, balancer = inventory.load_with_balancer(str(inv))
    assert balancer.host.domain == hosts[0].domain == shared["detector_domain"]
    assert balancer.servers == (("detector-vm", "203.0.113.10"),)
