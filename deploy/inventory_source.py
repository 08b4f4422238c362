"""Read an Ansible inventory's merged host variables for fab, without any vault secret."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

INVENTORY_ENV = "DETECTOR_INVENTORY"
DEFAULT_INVENTORY = "production"
REPO = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = REPO / "ansible" / "roles" / "detector" / "defaults" / "main.yml"
VAULT_HEADER = b"$ANSIBLE_VAULT;"


class InventoryError(RuntimeError):
    """The inventory cannot be read or lacks a setting fab needs."""


def resolve_path(inventory: str | None) -> Path:
    """The inventory path: the argument, else $DETECTOR_INVENTORY, else `production`.

    A bare name means `ansible/inventories/<name>`; anything with a slash is a path.
    """
    value = inventory or os.environ.get(INVENTORY_ENV) or DEFAULT_INVENTORY
    path = Path(value) if ("/" in value or Path(value).is_absolute()) else None
    path = path or REPO / "ansible" / "inventories" / value
    if not path.exists():
        raise InventoryError(
            f"inventory {path} does not exist; copy ansible/inventories/example to "
            f"ansible/inventories/{DEFAULT_INVENTORY}, or pass --inventory NAME|PATH "
            f"or set {INVENTORY_ENV}"
        )
    return path


def defaults(path: Path = DEFAULTS_FILE) -> dict:
    """The literal `detector_*` defaults of the detector role (Jinja-valued ones are Ansible's)."""
    data = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in data.items() if "{{" not in json.dumps(v)}


def _encrypted(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(VAULT_HEADER)) == VAULT_HEADER


def _leave_out_vaults(left_out: list[Path]):
    def ignore(directory: str, names: list[str]) -> list[str]:
        paths = {n: Path(directory) / n for n in names}
        skip = [n for n, p in paths.items() if p.is_file() and _encrypted(p)]
        left_out.extend(paths[n] for n in skip)
        return skip

    return ignore


def copy_without_vaults(path: Path, dest: Path) -> tuple[Path, list[Path]]:
    """Copy the inventory to dest, leaving out every vault-encrypted file.

    A directory is copied whole; a file comes with the group_vars/ and host_vars/ beside it.
    Inline `!vault` values stay encrypted (ansible-inventory prints them as ciphertext).
    :return: the path to pass to `ansible-inventory -i`, and the files left out.
    """
    left_out: list[Path] = []
    ignore = _leave_out_vaults(left_out)
    if path.is_dir():
        shutil.copytree(path, dest / path.name, ignore=ignore)
        return dest / path.name, left_out
    if _encrypted(path):
        raise InventoryError(f"inventory file {path} is vault-encrypted; encrypt only vault.yml")
    shutil.copy(path, dest / path.name)
    for sub in ("group_vars", "host_vars"):
        if (path.parent / sub).is_dir():
            shutil.copytree(path.parent / sub, dest / sub, ignore=ignore)
    return dest / path.name, left_out


def _ansible_inventory() -> str:
    local = Path(sys.executable).parent / "ansible-inventory"
    found = str(local) if local.exists() else shutil.which("ansible-inventory")
    if not found:
        raise InventoryError("ansible-inventory not found; run `make setup`")
    return found


def read(path: Path) -> dict:
    """`ansible-inventory --list` of the inventory minus its vault files, over the role defaults.

    fab never decrypts: encrypted files are left out of a private copy, and a throwaway
    password stands in for any vault password file or vault id configured (ansible.cfg,
    ANSIBLE_VAULT_PASSWORD_FILE), so none is read or asked for and no secret reaches this
    process. Each host's variables are the literal defaults of
    ansible/roles/detector/defaults/main.yml overlaid by the inventory's merged values.
    """
    with tempfile.TemporaryDirectory(prefix="detector-inventory-") as tmp:
        source, _ = copy_without_vaults(path, Path(tmp))
        throwaway = Path(tmp) / "no-vault-password"
        throwaway.write_text(secrets.token_hex(16) + "\n")
        env = {
            **os.environ,
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_ASK_VAULT_PASS": "False",
            "ANSIBLE_VAULT_PASSWORD_FILE": str(throwaway),
            "ANSIBLE_VAULT_IDENTITY_LIST": f"fab@{throwaway}",
        }
        argv = [_ansible_inventory(), "-i", str(source), "--list"]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    if proc.returncode != 0:
        error = proc.stderr.strip().replace(str(source), str(path))
        raise InventoryError(f"ansible-inventory -i {path} failed: {error}")
    data = json.loads(proc.stdout)
    base = defaults()
    hostvars = data.setdefault("_meta", {}).setdefault("hostvars", {})
    for name, values in hostvars.items():
        hostvars[name] = {**base, **values}
    return data
