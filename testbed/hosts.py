"""Give a host an overlay rootfs, boot it with systemd-nspawn on the bridge, reach it by ssh."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

from . import network
from .processes import ProcessTable
from .rootfs import ADMIN_USER

READY_STATES = ("running", "degraded")


@dataclass(frozen=True)
class Host:
    """One booted host: inventory name (= hostname), nspawn machine name, address, ssh login."""

    name: str
    machine: str
    address: str
    user: str
    key_path: str
    root: str
    index: int
    known_hosts: str = ""  # the bed's known_hosts file (host keys read from each rootfs)

    def to_dict(self) -> dict:
        """Return the host as plain data (as stored in bed.json)."""
        return asdict(self)


def ssh_options(key_path: str, connect_timeout: int = 5, known_hosts: str = "") -> list[str]:
    """Return the ssh options used for every test-bed host (batch mode).

    With known_hosts (the bed's file, keys read from each host's rootfs) the host key is
    verified; without (a bed.json from before keys were recorded) it is not.
    """
    checking = (
        ["StrictHostKeyChecking=yes", f"UserKnownHostsFile={known_hosts}"]
        if known_hosts
        else ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"]
    )
    return [
        "-i",
        key_path,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        checking[0],
        "-o",
        checking[1],
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={connect_timeout}",
    ]


def ssh_argv(host: Host, command: str | None = None, tty: bool = False) -> list[str]:
    """Return the ssh command line for host (after checking its address is the bed's)."""
    network.guard(host.address)
    argv = [
        "ssh",
        *ssh_options(host.key_path, known_hosts=host.known_hosts),
        *(["-t"] if tty else []),
        f"{host.user}@{host.address}",
    ]
    return argv + ([command] if command else [])


def ssh(
    host: Host, command: str, check: bool = True, timeout: float = 300, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run command on host as the sudo user; return the completed process (text output)."""
    return subprocess.run(
        ssh_argv(host, command),
        check=check,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def prepare(
    bed_dir: Path,
    bed_id: int,
    index: int,
    base: Path,
    key_path: Path,
    dns_server: str,
    domain: str,
) -> Host:
    """Give host number index a fresh rootfs (an overlay on base), its identity and address."""
    name = f"host{index}"
    machine = f"{network.bridge_name(bed_id)}-{name}"
    host_dir = bed_dir / "hosts" / name
    root = host_dir / "rootfs"
    mount_overlay(base, host_dir)
    address = network.host_address(bed_id, index)
    prefix = network.subnet(bed_id).prefixlen
    etc = root / "etc"
    (etc / "hostname").write_text(f"{name}\n")
    (etc / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}.{domain} {name}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    resolv = etc / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text(f"nameserver {dns_server}\nsearch {domain}\n")
    (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
    netdir = etc / "systemd/network"
    netdir.mkdir(parents=True, exist_ok=True)
    # Must sort before 80-container-host0.network, or host0 only gets a link-local address.
    (netdir / "10-host0.network").write_text(
        "[Match]\nName=host0\n\n[Network]\n"
        f"Address={address}/{prefix}\nGateway={network.gateway(bed_id)}\nDNS={dns_server}\n"
        f"Domains={domain}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    subprocess.run(["ssh-keygen", "-A", "-f", str(root)], check=True, capture_output=True)
    uid, gid = _ids(root, ADMIN_USER)
    sshdir = root / "home" / ADMIN_USER / ".ssh"
    sshdir.mkdir(mode=0o700, exist_ok=True)
    keys = sshdir / "authorized_keys"
    keys.write_text(Path(f"{key_path}.pub").read_text())
    keys.chmod(0o600)
    for path in (sshdir, keys):
        os.chown(path, uid, gid)
    known = str(bed_dir / "known_hosts")
    return Host(name, machine, address, ADMIN_USER, str(key_path), str(root), index, known)


def known_hosts_lines(host: Host) -> list[str]:
    """known_hosts lines for host's keys, read from its rootfs (no network, no first-use trust)."""
    keys = sorted((Path(host.root) / "etc" / "ssh").glob("ssh_host_*_key.pub"))
    if not keys:
        raise RuntimeError(f"{host.name} has no /etc/ssh/ssh_host_*_key.pub in {host.root}")
    lines = []
    for pub in keys:
        kind, blob = pub.read_text().split()[:2]
        lines.append(f"{host.address} {kind} {blob}")
    return lines


def mount_overlay(base: Path, host_dir: Path) -> Path:
    """Mount host_dir/rootfs as an overlay: base read-only below, host_dir/upper for changes."""
    for sub in ("upper", "work", "rootfs"):
        (host_dir / sub).mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={base},upperdir={host_dir / 'upper'},workdir={host_dir / 'work'}"
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(host_dir / "rootfs")], check=True
    )
    return host_dir / "rootfs"


def unmount(root: str) -> None:
    """Unmount a host's overlay rootfs (lazily if something still holds it)."""
    if os.path.ismount(root):
        result = subprocess.run(["umount", root], check=False, capture_output=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", root], check=False, capture_output=True)


def _ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise RuntimeError(f"user {user} missing from {root}/etc/passwd; rebuild the rootfs cache")


def nspawn_argv(host: Host, bridge: str) -> list[str]:
    """Return the systemd-nspawn command that boots host on bridge (no machined, no host files)."""
    return [
        "systemd-nspawn",
        "--register=no",
        "--keep-unit",
        "--boot",
        f"--directory={host.root}",
        f"--machine={host.machine}",
        f"--network-bridge={bridge}",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
    ]


def boot(table: ProcessTable, host: Host, bridge: str) -> int:
    """Start the host's supervisor (which runs nspawn and reboots it); return the supervisor PID."""
    record = table.dir / f"nspawn-{host.name}.json"
    argv = [
        sys.executable,
        str(Path(__file__).with_name("supervise.py")),
        "--record",
        str(record),
        "--name",
        f"nspawn-{host.name}",
        "--",
        *nspawn_argv(host, bridge),
    ]
    return table.start(f"host-{host.name}", argv)


def wait_ready(host: Host, timeout: float = 120.0) -> str:
    """Wait until ssh answers and systemd finished booting; return running or degraded."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        left = max(5, int(deadline - time.monotonic()))
        try:
            result = ssh(
                host, f"timeout {left} systemctl is-system-running --wait", False, left + 5
            )
        except subprocess.TimeoutExpired:
            last = "timeout"
            continue
        state = result.stdout.strip()
        if state in READY_STATES:
            return state
        last = state or result.stderr.strip()
        time.sleep(0.5)
    raise TimeoutError(
        f"{host.name} ({host.address}) not ready after {timeout:.0f}s (last: {last!r}); "
        f"see the state dir's logs/host-{host.name}.log"
    )


def processes_in(root: str) -> list[int]:
    """Return PIDs whose root directory is inside root (a host's processes, found by its rootfs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "root").startswith(root):
                pids.append(int(entry.name))
    return pids


def kill_leftovers(root: str) -> None:
    """SIGKILL processes still running inside a host's rootfs (after its nspawn was killed)."""
    for pid in processes_in(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
