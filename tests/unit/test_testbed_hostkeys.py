"""The test bed records each host's SSH keys from its rootfs and its ssh verifies them."""

from __future__ import annotations

import subprocess

from testbed.hosts import Host
from testbed.hosts import known_hosts_lines
from testbed.hosts import ssh_options


def test_host_keys_come_from_the_rootfs_and_ssh_checks_them(tmp_path):
    etc = tmp_path / "rootfs" / "etc" / "ssh"
    etc.mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-A", "-f", str(tmp_path / "rootfs")], check=True)
    host = Host(
        "host1",
        "dtb3-host1",
        "10.77.3.11",
        "admin",
        "/k",
        str(tmp_path / "rootfs"),
        1,
        str(tmp_path / "known_hosts"),
    )
    lines = known_hosts_lines(host)
    kinds = sorted(line.split()[1] for line in lines)
    assert "ssh-ed25519" in kinds and len(kinds) == len(list(etc.glob("*.pub")))
    pub = (etc / "ssh_host_ed25519_key.pub").read_text().split()
    assert f"10.77.3.11 ssh-ed25519 {pub[1]}" in lines
    argv = " ".join(ssh_options(host.key_path, known_hosts=host.known_hosts))
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in argv
    assert "StrictHostKeyChecking=yes" in argv and "StrictHostKeyChecking=no" not in argv
