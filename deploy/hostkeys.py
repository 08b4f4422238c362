"""SSH host keys: the known_hosts files fab trusts, refusing unknown or changed keys, trust-host."""

from __future__ import annotations

import os
import shlex
import socket
import sys
from pathlib import Path

from paramiko import PKey
from paramiko import Transport
from paramiko.client import MissingHostKeyPolicy
from paramiko.client import SSHClient
from paramiko.hostkeys import HostKeys
from paramiko.ssh_exception import SSHException

USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
KNOWN_HOSTS_VAR = "detector_ssh_known_hosts"
SSH_ARGS_VARS = ("ansible_ssh_common_args", "ansible_ssh_extra_args")
IGNORED = {"/dev/null", "none"}
CONSOLE_HINT = "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"


class HostKeyError(SSHException):
    """A host's SSH key is unknown, changed, or not the one the user confirmed."""


def known_hosts_files(hostvars: dict) -> tuple[str, ...]:
    """The inventory's known_hosts files: detector_ssh_known_hosts, then UserKnownHostsFile.

    UserKnownHostsFile comes from `-o UserKnownHostsFile=...` in ansible_ssh_common_args or
    ansible_ssh_extra_args (what Ansible's ssh uses); /dev/null is ignored, never trusted.
    """
    found: list[str] = []
    value = hostvars.get(KNOWN_HOSTS_VAR) or []
    found += [value] if isinstance(value, str) else [str(v) for v in value]
    for var in SSH_ARGS_VARS:
        words = shlex.split(str(hostvars.get(var) or ""))
        options = [w[2:] if w.startswith("-o") and len(w) > 2 else w for w in words]
        for option in options:
            name, sep, rest = option.replace("=", " ", 1).partition(" ")
            if sep and name.lower() == "userknownhostsfile":
                found += rest.split()
    paths = [os.path.expanduser(p) for p in found if p and p.lower() not in IGNORED]
    return tuple(dict.fromkeys(paths))


def trusted_files(configured: tuple[str, ...]) -> list[str]:
    """The inventory's files first (they decide for their hosts), then ~/.ssh/known_hosts."""
    return list(dict.fromkeys([*configured, os.path.expanduser(USER_KNOWN_HOSTS)]))


def key_name(address: str, port: int) -> str:
    """How known_hosts names a host: the address, or [address]:port off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


def describe(key: PKey) -> str:
    """Key type and SHA256 fingerprint, as `ssh-keygen -l` prints them."""
    return f"{key.get_name()} {key.fingerprint}"


class RefuseUnknown(MissingHostKeyPolicy):
    """Refuse a host whose key none of the files holds, naming the key and the next action."""

    def __init__(self, host: str, files: list[str], gateway: bool = False):
        self.host, self.files, self.gateway = host, files, gateway

    def missing_host_key(self, client, hostname, key):
        then = (
            f"then add it to {self.files[0]} (`ssh-keyscan -t ed25519 {hostname}`, compare)"
            if self.gateway
            else f"then run `fab trust-host --hosts {self.host} --fingerprint {key.fingerprint}`"
        )
        raise HostKeyError(
            f"{self.host} ({hostname}) offered SSH host key {describe(key)}, which is in none "
            f"of {', '.join(self.files)}; check it on the host's console (`{CONSOLE_HINT}`), "
            + then
        )


def verify(
    client: SSHClient, host: str, configured: tuple[str, ...], gateway: bool = False
) -> list[str]:
    """Make client trust only the known_hosts files and refuse any other key; return the files."""
    files = trusted_files(configured)
    for path in files:
        if os.path.isfile(path):
            client.load_system_host_keys(path)
    client.set_missing_host_key_policy(RefuseUnknown(host, files, gateway))
    return files


def changed_message(host: str, name: str, got: PKey, expected: PKey, files: list[str]) -> str:
    """What to say when a host offers a key other than the one known_hosts holds."""
    return (
        f"{host} ({name}) offered SSH host key {describe(got)}, but known_hosts "
        f"({', '.join(files)}) holds {describe(expected)} for {name}: someone may be "
        "intercepting the connection, or the host was rebuilt. If it was rebuilt, check the "
        f"new key on its console (`{CONSOLE_HINT}`), remove the old one with "
        f"`ssh-keygen -R '{name}' -f FILE`, then run `fab trust-host --hosts {host}`"
    )


def scan(address: str, port: int, timeout: float = 15) -> PKey:
    """The host key the server offers (no login; what `ssh-keyscan -t ed25519` would show)."""
    sock = socket.create_connection((address, port), timeout=timeout)
    transport = Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()
        sock.close()


def lookup(files: list[str], name: str) -> list[tuple[str, PKey]]:
    """Keys the files hold for name, with the file each came from."""
    found = []
    for path in files:
        if not os.path.isfile(path):
            continue
        keys = HostKeys(path).lookup(name) or {}
        found += [(path, keys[kind]) for kind in keys.keys()]
    return found


def trust(
    host: str,
    address: str,
    port: int,
    configured: tuple[str, ...],
    fingerprint: str = "",
    confirm=input,
) -> str:
    """Record the host's key after the user confirmed its fingerprint; return what was done.

    The key goes to the inventory's known_hosts file if it names one, else ~/.ssh/known_hosts.
    Refuses a fingerprint that does not match and a host whose known key differs.
    """
    key = scan(address, port)
    name = key_name(address, port)
    label = f"{host} ({name})"
    files = trusted_files(configured)
    known = lookup(files, name)
    if any(k == key for _, k in known):
        where = next(path for path, k in known if k == key)
        return f"{label}: {describe(key)} is already trusted ({where})"
    same_type = [(p, k) for p, k in known if k.get_name() == key.get_name()]
    if same_type:
        raise HostKeyError(changed_message(host, name, key, same_type[0][1], files))
    if fingerprint:
        if fingerprint.strip() != key.fingerprint:
            raise HostKeyError(
                f"{label} offered SSH host key {describe(key)}, not the {fingerprint.strip()} "
                f"you gave: not trusted; check the key on the host's console (`{CONSOLE_HINT}`)"
            )
    elif confirm is input and not sys.stdin.isatty():
        raise HostKeyError(
            f"{label} offers SSH host key {describe(key)}; no terminal to confirm it: check it "
            f"on the host's console (`{CONSOLE_HINT}`) and pass --fingerprint {key.fingerprint}"
        )
    else:
        answer = confirm(
            f"{label} offers SSH host key {describe(key)}.\n"
            f"Does it match `{CONSOLE_HINT}` on the host's console? Trust it [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            raise HostKeyError(f"{label}: host key {key.fingerprint} not trusted (answered no)")
    target = Path(files[0])
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(target, "a", encoding="ascii") as out:
        if target.stat().st_size and not target.read_text().endswith("\n"):
            out.write("\n")
        out.write(f"{name} {key.get_name()} {key.get_base64()}\n")
    return f"{label}: trusted {describe(key)} for {name} in {target}"
