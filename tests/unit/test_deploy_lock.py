"""The deploy lock after a cut-off run: never stuck, never free by mistake (real SSH and files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from datetime import timezone
from pathlib import Path

import pytest
from ssh_helpers import local_server

from deploy import inventory
from deploy import lock
from deploy import remote
from deploy.remote import DeployError

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))


def _fab_unlock(inv: Path, home: Path) -> subprocess.CompletedProcess:
    """`fab unlock` on the inventory, as a person runs it (no agent, a home of its own)."""
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(home)}
    return subprocess.run(
        [FAB, "unlock", "--inventory", str(inv)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


RID = "20261126T010203Z-ab12cd34"


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An inventory naming a real SSH server on 127.0.0.1 whose app root is under tmp_path."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    server, known = local_server(tmp_path)
    hostvars = {
        "ansible_host": "127.0.0.1",
        "detector_ssh_port": server.port,
        "ansible_ssh_private_key_file": str(tmp_path / "id_ed25519"),
        "detector_ssh_known_hosts": str(known),
        "detector_deploy_user": "deploy",
        "detector_app_root": str(tmp_path / "app"),
    }
    inv = tmp_path / "inventory"
    inv.mkdir()
    tree = {"all": {"children": {"detector": {"hosts": {"web1": hostvars}}}}}
    (inv / "hosts.yml").write_text(json.dumps(tree))
    (host,) = inventory.load(str(inv))
    c = remote.connect(host)
    yield inv, host, c
    c.close()
    server.close()


def test_a_lock_cut_off_between_its_two_writes_is_held_and_fab_unlock_frees_it(site, tmp_path):
    inv, host, c = site
    lock.acquire(c, host.lock_dir, RID, "fab deploy")
    # The release is `rm -f details && rmdir`: a run killed between the two leaves the
    # directory (mkdir is the test-and-set, so every later take fails) without a holder.
    (Path(host.lock_dir) / "details").unlink()
    shown = lock.status(c, host.lock_dir)  # `fab status` said "deploy lock free"
    assert "is held but names no holder" in shown and "run `fab unlock`" in shown
    assert lock.read(c, host.lock_dir) == (True, "")
    with pytest.raises(lock.LockHeld, match="names no holder.*fab unlock"):
        lock.acquire(c, host.lock_dir, RID, "fab deploy")
    unlock = _fab_unlock(inv, tmp_path)
    assert unlock.returncode == 0, unlock.stdout + unlock.stderr
    assert "[web1] removed: deploy lock" in unlock.stdout
    assert not Path(host.lock_dir).exists()
    assert lock.status(c, host.lock_dir) == ""
    with lock.held(c, host.lock_dir, RID, "fab deploy"):  # the next run goes on
        assert "holder=" in (Path(host.lock_dir) / "details").read_text()
    assert not Path(host.lock_dir).exists()


def test_taking_the_lock_is_all_or_nothing_when_its_details_cannot_be_written(tmp_path):
    lock_dir = tmp_path / "deploy.lock"
    take = lock.take_command(str(lock_dir), "holder=a@b\n")
    # A full disk, for real: writes past 0 bytes fail (EFBIG) under `ulimit -f 0`.
    full = subprocess.run(
        ["sh", "-c", 'trap "" XFSZ; ulimit -f 0; eval "$1"', "sh", take],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert full.returncode == 2, full.stderr
    assert not lock_dir.exists()  # nothing left that would refuse every later run
    assert subprocess.run(["sh", "-c", take], timeout=30).returncode == 0
    held = subprocess.run(["sh", "-c", take], capture_output=True, timeout=30)
    assert held.returncode == 1 and held.stderr == b""  # exit 1 only when it is held


def test_a_failed_take_that_is_not_held_says_so_instead_of_naming_a_holder(site):
    _, host, c = site
    Path(host.shared_dir).mkdir(parents=True)
    Path(host.lock_dir).write_text("a file where the lock directory goes\n")
    with pytest.raises(DeployError, match="could not take the deploy lock") as err:
        lock.acquire(c, host.lock_dir, RID, "fab deploy")
    assert not isinstance(err.value, lock.LockHeld)
    assert "it is not held" in str(err.value) and "retry" in str(err.value)


def test_a_lock_whose_fab_process_on_this_machine_is_gone_is_called_stale(site):
    _, host, c = site
    lock.acquire(c, host.lock_dir, RID, "fab deploy HEAD")
    mine = (Path(host.lock_dir) / "details").read_text()
    assert lock.describe(mine)["pid"] == str(os.getpid())
    assert "STALE" not in lock.status(c, host.lock_dir)  # this process still runs
    killed = subprocess.Popen(["sleep", "60"])
    killed.kill()  # SIGKILL: no `finally` ran, the lock stays behind
    killed.wait()
    when = datetime.now(timezone.utc)
    left = lock.details_text(lock.holder(), when, RID, "fab deploy HEAD", killed.pid)
    (Path(host.lock_dir) / "details").write_text(left)
    with pytest.raises(lock.LockHeld) as err:
        lock.acquire(c, host.lock_dir, RID, "fab deploy")
    assert f"is STALE: the fab process that took it (pid {killed.pid} on this machine)" in str(
        err.value
    )
    assert "run `fab unlock`, then retry" in str(err.value)
    elsewhere = left.replace(f"holder={lock.holder()}", "holder=alice@another-machine")
    (Path(host.lock_dir) / "details").write_text(elsewhere)
    shown = lock.status(c, host.lock_dir)  # another machine's process: cannot tell from here
    assert "STALE" not in shown and "run `fab unlock` if it is stale" in shown


def test_fab_unlock_frees_the_lock_a_cut_off_rolling_deploy_left_on_the_lb(site, tmp_path):
    inv, host, c = site
    tree = json.loads((inv / "hosts.yml").read_text())
    web1 = tree["all"]["children"]["detector"]["hosts"]["web1"]
    lb1 = {**web1, "detector_app_root": str(tmp_path / "lb-app")}
    tree["all"]["children"]["lb"] = {"hosts": {"lb1": lb1}}
    (inv / "hosts.yml").write_text(json.dumps(tree))
    _, bal = inventory.load_with_balancer(str(inv))
    assert bal is not None and bal.host.lock_dir != host.lock_dir
    killed = subprocess.Popen(["sleep", "60"])  # the roll's fab, killed while it held the lock
    killed.kill()
    killed.wait()
    when = datetime.now(timezone.utc)
    left = lock.details_text(lock.holder(), when, RID, f"fab deploy (rolling) {RID}", killed.pid)
    Path(bal.host.shared_dir).mkdir(parents=True)
    subprocess.run(["sh", "-c", lock.take_command(bal.host.lock_dir, left)], check=True)
    with pytest.raises(lock.LockHeld, match=r"127\.0\.0\.1: deploy lock held by .* is STALE"):
        lock.acquire(c, bal.host.lock_dir, RID, "fab deploy (rolling)")
    unlock = _fab_unlock(inv, tmp_path)
    assert unlock.returncode == 0, unlock.stdout + unlock.stderr
    assert "[web1] no deploy lock" in unlock.stdout
    assert f"[lb1] removed: deploy lock held by {lock.holder()}" in unlock.stdout
    assert "[lb1] detectors drained here: none" in unlock.stdout
    assert not Path(bal.host.lock_dir).exists()  # the next `fab deploy` can take it
