"""testbed's user-style inventory: the example filled in, vault encrypted, readable by fab."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy import inventory
from testbed.inventory import BED_VARS
from testbed.inventory import EXAMPLE
from testbed.inventory import set_settings
from testbed.inventory import write_user_inventory
from testbed.userpath import INVENTORY
from testbed.userpath import UserInventory
from testbed.userpath import changed_tasks
from testbed.userpath import recap

BIN = Path(sys.executable).parent
SECRET = "tsig-secret-b64-never-shown=="


@pytest.fixture
def user_inv(tmp_path) -> Path:
    if not (BIN / "ansible-vault").exists():
        pytest.skip(f"ansible-vault is not installed in {BIN}; run `make setup`")
    password = tmp_path / "vault-password"
    password.write_text("pw-for-tests\n")
    return write_user_inventory(
        tmp_path / "production",
        [("host1", "10.77.3.11")],
        {
            "group_vars/all/vars.yml": {
                "detector_domain": "detector.test",
                "detector_dns_port": 5353,
            },
            "group_vars/detector/vars.yml": {"detector_model": "yolov3-tiny"},
        },
        {"vault_detector_tsig_key_secret": SECRET},
        {"detector_testbed": True, "ansible_ssh_private_key_file": "/k/id"},
        password,
    )


def test_user_inventory_is_the_example_plus_one_bed_file(user_inv):
    files = {p.relative_to(user_inv) for p in user_inv.rglob("*") if p.is_file()}
    example = {p.relative_to(EXAMPLE) for p in EXAMPLE.rglob("*") if p.is_file()}
    assert files - example == {Path(BED_VARS)}
    shared = (user_inv / "group_vars" / "all" / "vars.yml").read_text()
    assert 'detector_domain: "detector.test"\n' in shared and "detector_dns_port: 5353\n" in shared
    assert shared.count("detector_domain:") == 1  # edited in place, as a user would
    assert "# DNS-01 through RFC 2136" in shared  # the example's comments stay


def test_fab_reads_it_without_the_vault_password_and_ansible_with_it(user_inv, tmp_path):
    vault = user_inv / "group_vars" / "all" / "vault.yml"
    assert vault.read_bytes().startswith(b"$ANSIBLE_VAULT;") and SECRET not in vault.read_text()
    data = inventory.read(user_inv)
    (host,) = inventory.hosts_from(data)
    assert (host.domain, host.key_file, host.address) == ("detector.test", "/k/id", "10.77.3.11")
    assert data["_meta"]["hostvars"]["host1"]["detector_model"] == "yolov3-tiny"
    assert SECRET not in repr(data)
    with_password = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(user_inv), "--host", "host1"]
        + ["--vault-password-file", str(tmp_path / "vault-password")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert yaml.safe_load(with_password.stdout)["vault_detector_tsig_key_secret"] == SECRET


def test_set_settings_replaces_the_line_or_appends(tmp_path):
    path = tmp_path / "vars.yml"
    path.write_text("---\n# c\ndetector_a: 1   # note\ndetector_ab: 2\n")
    set_settings(path, {"detector_a": "x", "detector_new": [1, 2]})
    assert path.read_text() == '---\n# c\ndetector_a: "x"\ndetector_ab: 2\ndetector_new: [1, 2]\n'


def test_commands_are_the_readme_lines(tmp_path):
    clone = tmp_path / "detector"
    default = UserInventory(clone, clone / INVENTORY, tmp_path / "pw", tmp_path / "kh")
    assert default.provision_argv() == [
        "ansible-playbook",
        "-i",
        "ansible/inventories/production",
        "ansible/provision.yml",
        "--vault-password-file",
        str(tmp_path / "pw"),
    ]
    assert default.fab_argv("renew-cert", "--force") == ["fab", "renew-cert", "--force"]
    other = UserInventory(clone, tmp_path / "production", tmp_path / "pw", tmp_path / "kh")
    assert other.fab_argv("status") == [
        "fab",
        "status",
        "--inventory",
        str(tmp_path / "production"),
    ]


def test_recap_and_changed_tasks_parse_the_default_callback():
    out = (
        "TASK [base : Install packages] ****\nok: [host1]\n"
        "TASK [nginx : Render the site] ****\nchanged: [host1]\n\n"
        "PLAY RECAP ****\n"
        "host1                      : ok=56   changed=1    unreachable=0    failed=0    "
        "skipped=20   rescued=0    ignored=0   \n"
    )
    assert recap(out)["host1"]["changed"] == 1 and recap(out)["host1"]["failed"] == 0
    assert changed_tasks(out) == ["nginx : Render the site: changed: [host1]"]
