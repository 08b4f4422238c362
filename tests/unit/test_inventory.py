"""deploy.inventory with the real ansible-inventory: defaults, precedence, vault-free reading."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy import inventory
from deploy import inventory_source

BIN = Path(sys.executable).parent
SECRET = "s3cret-value-never-shown-0x5eed"
PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _ansible_tools():
    if not (BIN / "ansible-inventory").exists():
        pytest.skip(f"ansible-inventory is not installed in {BIN}; run `make setup`")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _vault(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    password = _write(tmp_path / "vault-pass", PASSWORD + "\n")
    argv = [str(BIN / "ansible-vault"), *args, "--vault-password-file", str(password)]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)


def test_inventory_merges_the_defaults_and_names_missing_settings(tmp_path):
    """Host values win over the role defaults; a missing setting is named with its fix."""
    inv = _write(
        tmp_path / "hosts.yml",
        "all:\n  children:\n    detector:\n      hosts:\n        web1:\n"
        "          ansible_host: 10.77.0.2\n          detector_domain: detector.test\n"
        "          ansible_ssh_private_key_file: /k/id\n"
        "          detector_socket_dir: /run/detector-x\n"
        "    lb:\n      hosts:\n        lb1:\n          ansible_host: 10.77.0.9\n",
    )
    data = inventory.read(inventory.resolve_path(str(inv)))
    (host,) = inventory.hosts_from(data)
    settings = yaml.safe_load(inventory_source.DEFAULTS_FILE.read_text())
    assert host.app_root == settings["detector_app_root"]
    assert host.upstream_name == settings["detector_nginx_upstream_name"]
    assert (host.name, host.address, host.domain, host.key_file) == (
        "web1",
        "10.77.0.2",
        "detector.test",
        "/k/id",
    )
    assert host.socket("green") == "/run/detector-x/green.sock"
    assert host.release_dir("r1") == f"{host.app_root}/releases/r1"
    assert "detector_lb_hosts" not in data["_meta"]["hostvars"]["web1"]  # Jinja: Ansible's only
    with pytest.raises(inventory.InventoryError, match="not in the inventory"):
        inventory.hosts_from(data, ["lb1"])
    lb_vars = dict(data["_meta"]["hostvars"]["lb1"])
    del lb_vars["detector_domain"]
    with pytest.raises(inventory.InventoryError, match="lb1 lacks detector_domain; set them in"):
        inventory.host_from("lb1", lb_vars)
    with pytest.raises(inventory.InventoryError, match="fab cannot read detector_domain"):
        inventory.host_from("lb1", {**lb_vars, "detector_domain": "{{ vault_domain }}"})
    with pytest.raises(inventory.InventoryError, match="DETECTOR_INVENTORY"):
        inventory.resolve_path(str(tmp_path / "absent"))


def _vaulted_inventory(tmp_path: Path) -> Path:
    """A user-style inventory: vault.yml encrypted whole, plus one inline !vault value."""
    inv = tmp_path / "production"
    _write(
        inv / "hosts.yml",
        "all:\n  children:\n    detector:\n      hosts:\n        web1:\n"
        "          ansible_host: 10.77.0.2\n",
    )
    _write(inv / "group_vars" / "all" / "vars.yml", "detector_domain: vaulted.test\n")
    vault = _write(inv / "group_vars" / "all" / "vault.yml", f"vault_tsig_secret: {SECRET}\n")
    _vault(tmp_path, "encrypt", str(vault))
    inline = _vault(tmp_path, "encrypt_string", SECRET, "--name", "detector_dns_credentials")
    _write(inv / "group_vars" / "detector" / "vars.yml", inline.stdout)
    assert vault.read_bytes().startswith(b"$ANSIBLE_VAULT;")
    return inv


def test_encrypted_inventory_is_read_without_a_password_and_no_secret_shows(
    tmp_path, monkeypatch, capfd
):
    inv = _vaulted_inventory(tmp_path)
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    plain = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(inv), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode != 0 and "no vault secrets" in plain.stderr  # the bug fab had
    data = inventory.read(inv)
    (host,) = inventory.hosts_from(data)
    assert host.domain == "vaulted.test"
    captured = capfd.readouterr()
    assert SECRET not in repr(data) + captured.out + captured.err
    assert "vault_tsig_secret" not in data["_meta"]["hostvars"]["web1"]
    assert SECRET not in vault_text(inv)  # still encrypted on disk


def vault_text(inv: Path) -> str:
    return (inv / "group_vars" / "all" / "vault.yml").read_text()


def test_a_configured_vault_password_is_never_read_nor_needed(tmp_path, monkeypatch):
    """fab works whatever vault password is configured (valid, missing, a script) and reads none."""
    inv = _vaulted_inventory(tmp_path)
    marker = tmp_path / "password-script-ran"
    script = _write(tmp_path / "vault-pass.sh", f"#!/bin/sh\ntouch {marker}\necho {PASSWORD}\n")
    script.chmod(0o700)
    cfg = _write(
        tmp_path / "ansible.cfg",
        f"[defaults]\nvault_password_file = {script}\nask_vault_pass = True\n"
        f"vault_identity_list = prod@{tmp_path / 'absent-password'}\n",
    )
    monkeypatch.setenv("ANSIBLE_CONFIG", str(cfg))
    for configured in (str(tmp_path / "vault-pass"), str(script), str(tmp_path / "absent")):
        monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", configured)
        data = inventory.read(inv)
        assert inventory.hosts_from(data)[0].domain == "vaulted.test"
        assert SECRET not in repr(data)
    assert not marker.exists()  # the password script never ran: fab asked for no password


def test_copy_leaves_out_exactly_the_encrypted_files(tmp_path):
    inv = _vaulted_inventory(tmp_path)
    dest = tmp_path / "copy"
    dest.mkdir()
    source, left_out = inventory_source.copy_without_vaults(inv, dest)
    assert left_out == [inv / "group_vars" / "all" / "vault.yml"]
    copied = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    assert copied == ["group_vars/all/vars.yml", "group_vars/detector/vars.yml", "hosts.yml"]


def test_one_inventory_name_everywhere(tmp_path, monkeypatch):
    """fab's default, the README, the playbook, ansible.cfg and the example all say production."""
    name = inventory_source.DEFAULT_INVENTORY
    assert name == "production"
    repo = inventory_source.REPO
    example = repo / "ansible" / "inventories" / "example"
    for path in (
        repo / "README.md",
        repo / "ansible.cfg",
        repo / "ansible" / "provision.yml",
        example / "hosts.yml",
        example / "group_vars" / "all" / "vault.yml",
    ):
        text = path.read_text()
        assert f"ansible/inventories/{name}" in text, path
        others = set(re.findall(r"inventories/([\w<>-]+)", text)) - {name, "example", "NAME"}
        assert not others, f"{path} names other inventories: {others}"
    monkeypatch.delenv(inventory_source.INVENTORY_ENV, raising=False)
    monkeypatch.setattr(inventory_source, "REPO", tmp_path)
    with pytest.raises(inventory.InventoryError, match="copy ansible/inventories/example to"):
        inventory_source.resolve_path(None)
