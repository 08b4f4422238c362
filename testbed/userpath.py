"""The README's path on bed hosts: a clone, a copied example inventory, a vault, its commands."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.bed import Testbed
from testbed.hosts import Host
from testbed.inventory import BED_VARS
from testbed.inventory import write_user_inventory
from testbed.provisioning import BIN
from testbed.provisioning import MODEL
from testbed.provisioning import REPO
from testbed.provisioning import Run
from testbed.provisioning import weights_mirror

INVENTORY = "ansible/inventories/production"
# The README's commands, run from the checkout's root (-i and --vault-password-file filled in).
PROVISION = ("ansible-playbook", "-i", "{inventory}", "ansible/provision.yml")
VAULT_PASSWORD = ("--vault-password-file", "{password_file}")
# What a user writes into the copied example (the rest of bed.variables() is the bed's own).
USER_SETTINGS = {
    "group_vars/all/vars.yml": (
        "detector_domain",
        "detector_acme_email",
        "detector_dns_server",
        "detector_dns_port",
        "detector_dns_zone",
        "detector_tsig_key_name",
        "detector_tsig_key_algorithm",
    ),
}
VAULTED = {"detector_tsig_key_secret": "vault_detector_tsig_key_secret"}
RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.MULTILINE)


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP counters per host (ok, changed, unreachable, failed, ...)."""
    return {
        host: {k: int(v) for k, v in (pair.split("=") for pair in counters.split())}
        for host, counters in RECAP.findall(output)
    }


def changed_tasks(output: str) -> list[str]:
    """`TASK [...]` headers followed by a `changed:` line in the default callback's output."""
    found, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:"):
            found.append(f"{task}: {line}")
    return found


@dataclass
class UserInventory:
    """A checkout and an inventory filled in as the README says (default: a clone of HEAD with
    ansible/inventories/production, so the commands need no --inventory)."""

    checkout: Path
    inventory: Path
    password_file: Path
    known_hosts: Path
    home: Path | None = None  # the user's HOME (their ~/.ssh/known_hosts); None: this one's
    deploy_key: Path | None = None  # the deploy user's own key (fab's), not the admin login's

    def _inventory_arg(self) -> str:
        inside = self.inventory.is_relative_to(self.checkout)
        return str(self.inventory.relative_to(self.checkout) if inside else self.inventory)

    def env(self) -> dict:
        """The user's shell: the venv's tools first on PATH, nothing Ansible-specific set."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        env.pop("DETECTOR_INVENTORY", None)
        if self.home is not None:
            env["HOME"] = str(self.home)
        return {**env, "PATH": f"{BIN}:{env.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1"}

    def run(self, argv: Sequence[str], timeout: float = 1800) -> Run:
        """Run a command line from the checkout's root; output, exit code and wall time."""
        start = time.monotonic()
        proc = subprocess.run(
            list(argv),
            cwd=self.checkout,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        took = time.monotonic() - start
        return Run(proc.returncode, proc.stdout, proc.stderr, took, recap(proc.stdout))

    def provision_argv(self, *extra: str) -> list[str]:
        """`ansible-playbook -i INVENTORY ansible/provision.yml --vault-password-file FILE`."""
        fill = {"inventory": self._inventory_arg(), "password_file": str(self.password_file)}
        return [a.format(**fill) for a in (*PROVISION, *VAULT_PASSWORD)] + list(extra)

    def provision(self, *extra: str) -> Run:
        """Run the README's provisioning command line (plus extra flags, e.g. --check)."""
        return self.run(self.provision_argv(*extra))

    def fab_argv(self, *args: str) -> list[str]:
        """`fab TASK ...`, naming the inventory only when it is not the default one."""
        default = self.inventory == self.checkout / INVENTORY
        return ["fab", *args, *([] if default else ["--inventory", self._inventory_arg()])]

    def fab(self, *args: str, timeout: float = 1800) -> Run:
        """Run a fab task as the README prints it."""
        return self.run(self.fab_argv(*args), timeout=timeout)


@dataclass
class ReadmeHost:
    """A fresh bed host provisioned by the README's command line, and the user's inventory."""

    bed: Testbed
    host: Host
    user: UserInventory
    provision: Run


def known_hosts_for(recorded: Path, hosts: Sequence[Host], path: Path) -> Path:
    """Write path with the hosts' keys from the bed's recorded known_hosts (read from each
    host's rootfs before it booted): no ssh-keyscan, so first contact trusts nothing unseen."""
    wanted = {h.address for h in hosts}
    lines = [
        line
        for line in recorded.read_text().splitlines()
        if line.split(" ", 1)[0] in wanted and len(line.split()) >= 3
    ]
    missing = sorted(
        h.name for h in hosts if not any(line.startswith(f"{h.address} ") for line in lines)
    )
    if missing:
        raise RuntimeError(
            f"no recorded host key for {missing} in {recorded}; bring the host up with the "
            "test bed (it records each host's keys from its rootfs)"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def user_inventory(
    bed: Testbed,
    hosts: Sequence[Host],
    work: Path,
    lb: Host | None = None,
    checkout: Path | None = None,
) -> UserInventory:
    """Copy the example inventory and fill it in for hosts, as the README tells a user.

    Without checkout: clone HEAD into work/detector and fill in its
    ansible/inventories/production (the README's default); with one (`make demo`: the working
    tree), the inventory is work/production.

    hosts.yml lists the hosts (and lb); group_vars/all/vars.yml and group_vars/detector/vars.yml
    get a user's edits; vault.yml gets the TSIG secret and is encrypted with a password file;
    group_vars/all/testbed.yml holds only what the bed needs (proxy, wheelhouse, Pebble, venv
    backend, ssh key and the recorded host keys). The deploy user gets a key of its own
    (work/deploy_ed25519, README "Security"): the admin login's key is not the deploy key.
    """
    if checkout is None:
        checkout = work / "detector"
        subprocess.run(
            ["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(checkout)],
            check=True,
            timeout=120,
        )
        inventory = checkout / INVENTORY
    else:
        inventory = work / "production"
    password_file = work / "vault-password"
    password_file.unlink(missing_ok=True)
    password_file.touch(mode=0o600)
    password_file.write_text(secrets.token_urlsafe(24) + "\n")
    everyone = [*hosts, *([lb] if lb else [])]
    known = known_hosts_for(bed.known_hosts_path, everyone, work / "known_hosts")
    values = bed.variables()
    settings = {path: {key: values[key] for key in keys} for path, keys in USER_SETTINGS.items()}
    settings["group_vars/all/vars.yml"]["detector_acme_staging"] = False  # Pebble, not LE
    settings["group_vars/detector/vars.yml"] = {"detector_model": MODEL}
    deploy_key = deploy_keypair(work / "deploy_ed25519")
    settings["group_vars/all/vars.yml"].update(
        detector_deploy_authorized_keys=[Path(f"{deploy_key}.pub").read_text().strip()],
        detector_deploy_key_file=str(deploy_key),
    )
    vault = {name: values[key] for key, name in VAULTED.items()}
    user_keys = {k for keys in USER_SETTINGS.values() for k in keys} | set(VAULTED)
    bed_only = {k: v for k, v in values.items() if k not in user_keys}
    bed_only.update(
        ansible_ssh_private_key_file=bed.key_path,
        ansible_ssh_common_args=f"-o UserKnownHostsFile={known} -o IdentitiesOnly=yes",
        detector_weights_mirror=weights_mirror(bed),
        detector_dns_propagation_s=1,
    )
    write_user_inventory(
        inventory,
        [(h.name, h.address) for h in hosts],
        settings,
        vault,
        bed_only,
        password_file,
        lb=(lb.name, lb.address) if lb else None,
        example=checkout / "ansible" / "inventories" / "example",
    )
    if not (inventory / BED_VARS).is_file():
        raise RuntimeError(f"{BED_VARS} was not written into {inventory}")
    return UserInventory(checkout, inventory, password_file, known, deploy_key=deploy_key)


def deploy_keypair(path: Path) -> Path:
    """An ed25519 key pair for the deploy user at path (+ .pub), made once with ssh-keygen."""
    if not path.is_file():
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "detector-deploy",
                "-f",
                str(path),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return path
