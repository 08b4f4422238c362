"""Privilege and scale-out checks rendered by Ansible: sudoers, helper config, the lb hop assert."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy import inventory

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "ansible" / "roles"
BIN = Path(sys.executable).parent
DEFAULTS = [ROLES / r / "defaults" / "main.yml" for r in ("detector", "deploy_access", "nginx")]


def _inventory(tmp_path: Path, d1: dict) -> Path:
    """lb1 in group lb, d1 and d2 in group detector, all local; role defaults as `all` vars.

    (Group `all` vars rank below host vars, like role defaults do in provision.yml.)
    """
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    defaults = {}
    for path in DEFAULTS:
        defaults.update(yaml.safe_load(path.read_text()))
    inv = {
        "all": {
            "vars": defaults,
            "children": {
                "lb": {"hosts": {"lb1": {**local, "ansible_host": "10.0.0.1"}}},
                "detector": {
                    "hosts": {
                        "d1": {**local, "ansible_host": "10.0.0.2", **d1},
                        "d2": {**local, "ansible_host": "203.0.113.9"},
                    }
                },
            },
        }
    }
    d2 = inv["all"]["children"]["detector"]["hosts"]["d2"]
    d2["detector_private_address"] = "192.168.7.3"
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


def _play(tmp_path: Path, inventory: Path, tasks: list, extra: dict | None = None):
    playbook_bin = BIN / "ansible-playbook"
    if not playbook_bin.exists():
        pytest.skip("ansible-playbook is not installed in the venv; run `make setup`")
    play = [{"hosts": "all", "gather_facts": False, "tasks": tasks}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_FILTER_PLUGINS": str(REPO / "ansible" / "filter_plugins"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    argv = [str(playbook_bin), "-i", str(inventory), str(tmp_path / "play.yml")]
    if extra:
        argv += ["-e", json.dumps(extra)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("deploy_access")
    out = tmp / "out"
    out.mkdir()
    tasks = [
        {
            "name": f"Render {name}",
            "ansible.builtin.template": {
                "src": str(ROLES / "deploy_access" / "templates" / name),
                "dest": f"{out}/{{{{ inventory_hostname }}}}-{name}",
                "mode": "0644",
            },
        }
        for name in ("sudoers.j2", "detector-activate.json.j2", "detector-live.service.j2")
    ]
    # d1 was sized in this run (provision.yml's first play), d2 not: the lb bounds what it can.
    result = _play(tmp, _inventory(tmp, {"_detector_sizing": {"max_conns": 4}}), tasks)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _rules(sudoers: str) -> list[str]:
    """Each command the sudoers file grants, one per entry of every Cmnd_Alias."""
    text = re.sub(r"\\\n", " ", sudoers)
    rules = []
    for line in text.splitlines():
        if line.startswith("Cmnd_Alias"):
            rules += [r.strip() for r in line.split("=", 1)[1].split(", ")]
    return rules


def test_sudoers_lists_only_fixed_or_validated_commands(rendered: Path):
    for host, helper_args in (
        ("d1", {"blue", "green", "--sync"}),
        ("lb1", {"down d1", "up d1", "down d2", "up d2", "--sync"}),
    ):
        rules = _rules((rendered / f"{host}-sudoers.j2").read_text())
        assert rules, host
        helper = [r for r in rules if r.startswith("/usr/local/sbin/detector-activate ")]
        assert {r.split(" ", 1)[1] for r in helper} == helper_args, host
        for rule in rules:
            assert "*" not in rule and "install" not in rule.split()[0], rule
            args = rule.split()[1:]
            # no argument names a path or carries content: only verbs, unit and host names
            assert not any("/" in a or "=" in a for a in args), rule
            assert rule.split()[0] in {"/usr/bin/systemctl", "/usr/local/sbin/detector-activate"}
        verbs = {r.split()[2] for r in rules if r.startswith("/usr/bin/systemctl")}
        assert verbs <= {"start", "stop", "reset-failed"}, verbs  # no enable, reload, set-env
    assert "detector@" not in (rendered / "lb1-sudoers.j2").read_text()


def test_helper_config_names_every_path_itself(rendered: Path):
    d1 = json.loads((rendered / "d1-detector-activate.json.j2").read_text())
    assert d1["kind"] == "detector" and d1["colors"] == ["blue", "green"]
    assert d1["record"] == "/var/lib/detector/live-color"
    assert d1["current_link"] == "/opt/detector/current"
    lb = json.loads((rendered / "lb1-detector-activate.json.j2").read_text())
    assert lb["kind"] == "lb" and lb["record"] == "/var/lib/detector/lb-drained"
    assert lb["servers"] == [["d1", "10.0.0.2", 4], ["d2", "192.168.7.3", 0]]
    unit = (rendered / "d1-detector-live.service.j2").read_text()
    assert "Before=nginx.service" in unit
    assert "ExecStart=/usr/local/sbin/detector-activate --boot" in unit


HOP_CHECK = [
    {
        "name": "Check the hop",
        "ansible.builtin.include_tasks": str(ROLES / "nginx" / "tasks" / "backend.yml"),
    }
]


BOUND_CHECK = [
    task
    for task in yaml.safe_load((ROLES / "deploy_access" / "tasks" / "helper.yml").read_text())
    if task["name"] == "Check the load balancer knows each detector's connection bound"
]


def test_lb_refuses_to_run_without_each_detectors_connection_bound(tmp_path: Path):
    """The lb bounds each detector at its sizing's max_conns (issue 13.8): a detector not
    sized in this run (e.g. `--limit lb`) stops the run, naming it and both fixes."""
    assert len(BOUND_CHECK) == 1
    sized = {"_detector_sizing": {"max_conns": 4}}
    result = _play(tmp_path, _inventory(tmp_path, sized), BOUND_CHECK)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "d2 was not sized in this run" in out and "deploy_access_lb_max_conns" in out
    assert "d1 was not sized" not in out
    result = _play(
        tmp_path, _inventory(tmp_path, sized), BOUND_CHECK, {"_detector_sizing": {"max_conns": 2}}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    result = _play(
        tmp_path, _inventory(tmp_path, {}), BOUND_CHECK, {"deploy_access_lb_max_conns": 3}
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_lb_refuses_a_detector_reached_over_a_public_address(tmp_path: Path):
    result = _play(tmp_path, _inventory(tmp_path, {"ansible_host": "198.51.100.7"}), HOP_CHECK)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "d1's address for the load balancer is 198.51.100.7" in out
    assert "detector_lb_backend_encrypted: true" in out
    assert "d2's address" not in out  # its private address is used, not the public ansible_host


def test_lb_accepts_private_addresses_or_a_declared_tunnel(tmp_path: Path):
    private = {"ansible_host": "198.51.100.7", "detector_private_address": "100.64.3.2"}
    result = _play(tmp_path, _inventory(tmp_path, private), HOP_CHECK)
    assert result.returncode == 0, result.stdout + result.stderr
    public = {"ansible_host": "198.51.100.7"}
    tunnel = {"detector_lb_backend_encrypted": True}
    result = _play(tmp_path, _inventory(tmp_path, public), HOP_CHECK, tunnel)
    assert result.returncode == 0, result.stdout + result.stderr


def test_backend_listener_binds_the_private_address_only(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    task = {
        "name": "Render the site",
        "ansible.builtin.template": {
            "src": str(ROLES / "nginx" / "templates" / "detector.conf.j2"),
            "dest": f"{out}/{{{{ inventory_hostname }}}}.conf",
            "mode": "0644",
        },
    }
    facts = {"_certbot_bin": "x", "ansible_processor_vcpus": 2, "ansible_facts": {}}
    result = _play(tmp_path, _inventory(tmp_path, {}), [task], facts)
    assert result.returncode == 0, result.stdout + result.stderr
    d2 = (out / "d2.conf").read_text()
    listens = re.findall(r"^\s*listen (\S+)", d2, re.M)
    assert listens == ["192.168.7.3:8080", "127.0.0.1:8080"], listens
    assert "listen 8080" not in d2 and "listen 443" not in d2


KEY_CHECK = [
    task
    for task in yaml.safe_load((ROLES / "deploy_access" / "tasks" / "user.yml").read_text())
    if task["name"] == "Check the deploy keys do not also log in as the connecting user"
]
ADMIN_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIAdminAdminAdminAdminAdminAdminAdminAdmin0"
DEPLOY_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIDeployDeployDeployDeployDeployDeployDeploy"


@pytest.mark.parametrize(
    ("deploy_keys", "refused"),
    [
        ([f"ssh-ed25519 {ADMIN_KEY} ops@laptop"], True),  # the admin's own key, other comment
        ([f"ssh-ed25519 {DEPLOY_KEY} fab", f'from="10.0.0.0/8" ssh-ed25519 {ADMIN_KEY}'], True),
        ([f"ssh-ed25519 {DEPLOY_KEY} fab"], False),
    ],
)
def test_a_deploy_key_that_also_logs_in_as_the_admin_is_refused(tmp_path, deploy_keys, refused):
    """The deploy user's restrictions mean nothing when its key is also the sudoer's."""
    assert len(KEY_CHECK) == 1
    admin = f"ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB other\nssh-ed25519 {ADMIN_KEY} admin@ops\n"
    extra = {
        "deploy_access_authorized_keys": deploy_keys,
        "ansible_user": "admin",
        "_deploy_access_inherited": {"content": base64.b64encode(admin.encode()).decode()},
    }
    result = _play(tmp_path, _inventory(tmp_path, {}), KEY_CHECK, extra)
    out = result.stdout + result.stderr
    assert (result.returncode != 0) == refused, out
    if refused:
        assert "also logs in as admin (a sudoer)" in out and "detector_deploy_key_file" in out


def test_fab_logs_in_with_the_deploy_key_file_before_ansibles_key():
    v = {
        **yaml.safe_load((ROLES / "detector" / "defaults" / "main.yml").read_text()),
        "ansible_host": "10.0.0.2",
        "ansible_ssh_private_key_file": "/keys/admin",
    }
    assert inventory.host_from("d1", v).key_file == "/keys/admin"
    v["detector_deploy_key_file"] = "~/.ssh/detector-deploy"
    assert inventory.host_from("d1", v).key_file == os.path.expanduser("~/.ssh/detector-deploy")
