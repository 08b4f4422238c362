"""The README path's known_hosts comes from the keys the bed recorded, never from ssh-keyscan."""

from __future__ import annotations

import subprocess

import pytest

from testbed.hosts import Host
from testbed.hosts import known_hosts_lines
from testbed.userpath import known_hosts_for


def _host(tmp_path, index: int) -> Host:
    root = tmp_path / f"host{index}" / "rootfs"
    (root / "etc" / "ssh").mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-A", "-f", str(root)], check=True, timeout=60)
    return Host(
        f"host{index}",
        f"dtb3-host{index}",
        f"10.77.3.{10 + index}",
        "admin",
        "/k",
        str(root),
        index,
        str(tmp_path / "known_hosts"),
    )


def test_user_known_hosts_holds_the_recorded_keys_of_its_hosts_only(tmp_path):
    hosts = [_host(tmp_path, i) for i in (1, 2, 3)]
    recorded = tmp_path / "known_hosts"  # what Testbed.write_known_hosts writes
    recorded.write_text("\n".join(line for h in hosts for line in known_hosts_lines(h)) + "\n")
    out = known_hosts_for(recorded, hosts[:2], tmp_path / "user_known_hosts")
    lines = out.read_text().splitlines()
    assert sorted(lines) == sorted(known_hosts_lines(hosts[0]) + known_hosts_lines(hosts[1]))
    pub = (tmp_path / "host2" / "rootfs" / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text()
    found = subprocess.run(
        ["ssh-keygen", "-F", hosts[1].address, "-f", str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert pub.split()[1] in found.stdout  # what ssh itself looks up with StrictHostKeyChecking
    assert hosts[2].address not in out.read_text()


def test_a_host_the_bed_did_not_record_is_refused_not_scanned(tmp_path):
    known, stranger = _host(tmp_path, 1), _host(tmp_path, 2)
    recorded = tmp_path / "known_hosts"
    recorded.write_text("\n".join(known_hosts_lines(known)) + "\n")
    with pytest.raises(RuntimeError, match=r"no recorded host key for \['host2'\]"):
        known_hosts_for(recorded, [known, stranger], tmp_path / "user_known_hosts")
    assert not (tmp_path / "user_known_hosts").exists()
