"""Operations that must survive failures: renew-cert flags, rollback targets, config rolls."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest

from deploy import cert
from deploy import commands
from deploy import health
from deploy import inventory
from testbed import guard
from testbed.hosts import ssh
from testbed.provisioning import MODEL
from testbed.provisioning import playbook
from testbed.provisioning import variables
from testbed.provisioning import wheelhouse_requirements
from tests.e2e.test_deploy import FAB
from tests.e2e.test_deploy import ROOT
from tests.e2e.test_deploy import Load
from tests.e2e.test_deploy import fab
from tests.e2e.test_deploy import served_release

SMOKE = (ROOT / "deploy" / "smoke.jpg").read_bytes()
RENEW = "detector-certbot-renew"


@dataclasses.dataclass
class Ops:
    """A provisioned, deployed host and how to reach and re-provision it."""

    bed: object
    env: dict
    host: inventory.Host
    bed_host: object
    work: Path
    values: dict

    def sh(self, command: str, check: bool = True) -> str:
        """Run as the bed's admin (sudo available); stdout."""
        return self.bed.ssh(self.bed_host, command, check=check).stdout

    def as_deploy(self, command: str, check: bool = True):
        return ssh(dataclasses.replace(self.bed_host, user=self.host.user), command, check=check)

    def provision(self, name: str, **extra):
        """Rerun provisioning with extra variables (JSON callback: per-host stats)."""
        path = self.work / f"variables-{name}.json"
        path.write_text(json.dumps({**self.values, **extra}))
        run = playbook(self.bed, self.bed_host.name, path, json_output=True)
        out = ROOT / "test-artifacts" / "operations"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"provision-{name}.log").write_text(run.stdout + run.stderr)
        return run


def provision_ops(testbed, testbed_hosts, tmp_path_factory) -> Ops:
    """A freshly provisioned host with one release deployed by fab (conftest's session `ops`)."""
    if not (ROOT / "weights" / f"{MODEL}.weights").is_file():
        pytest.skip(f"weights/{MODEL}.weights is missing: run `make setup` (make weights)")
    bed_host = testbed_hosts(1, fresh=True)[0]
    guard(bed_host.address)
    work = tmp_path_factory.mktemp("operations")
    testbed.build_wheelhouse(wheelhouse_requirements(work / "requirements.txt"))
    values = variables(testbed)
    (work / "variables.json").write_text(json.dumps(values))
    run = playbook(testbed, bed_host.name, work / "variables.json")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    inv = work / "inventory"
    (inv / "host_vars").mkdir(parents=True)
    hosts = {"all": {"children": {"detector": {"hosts": {bed_host.name: {}}}}}}
    (inv / "hosts.yml").write_text(json.dumps(hosts))
    fab_values = {  # the bed's values (its known_hosts included) as host vars
        **values,
        "ansible_host": bed_host.address,
        "ansible_ssh_private_key_file": bed_host.key_path,
        "detector_deploy_gate_timeout_s": 30,
        "detector_deploy_drain_s": 2,
    }
    (inv / "host_vars" / f"{bed_host.name}.yml").write_text(json.dumps(fab_values))
    env = {**os.environ, inventory.INVENTORY_ENV: str(inv)}
    (host,) = inventory.load(str(inv), [bed_host.name])
    first = fab("deploy", "--allow-dirty", env=env, name="ops-deploy-first")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    return Ops(testbed, env, host, bed_host, work, values)


def scores(host) -> list[float]:
    res = health.detect(host, host.https_ports[0], SMOKE, timeout=60)
    assert res.status == 200, res.body[:300]
    return sorted(d["score"] for d in res.json()["detections"])


def test_renew_cert_flags_never_outlive_a_dropped_session(ops: Ops):
    before = cert.served_all(ops.host)
    forced = fab("renew-cert", "--force", env=ops.env, name="ops-renew-force")
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-2000:]
    after = cert.served_all(ops.host)
    assert all(after[p].serial != before[p].serial for p in ops.host.https_ports)
    # Drop the session in the middle of a forced renewal: kill fab, as a lost connection would.
    argv = [FAB, "renew-cert", "--force"]
    with subprocess.Popen(argv, cwd=ROOT, env=ops.env, stdout=subprocess.PIPE, text=True) as proc:
        try:
            for line in proc.stdout:
                if "renew (forced): start" in line:
                    break
            time.sleep(1.5)
        finally:
            proc.kill()
    deadline = time.monotonic() + 120
    while ops.sh(f"systemctl is-active {RENEW}@force.service", check=False).strip() in (
        "activating",
        "active",
    ):
        assert time.monotonic() < deadline, "the forced renewal unit never finished"
        time.sleep(1)
    assert "DETECTOR_CERTBOT" not in ops.sh("sudo systemctl show-environment")
    assert fab("unlock", env=ops.env, name="ops-unlock").returncode == 0  # fab's lock was left
    settled = cert.served_all(ops.host)
    # The timer's next run: renews only when due (neither forced nor a dry run).
    ops.sh(f"sudo systemctl start {RENEW}.service")
    invocation = ops.sh(f"systemctl show -p InvocationID --value {RENEW}.service").strip()
    log = ops.sh(f"sudo journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}")
    assert "not yet due" in log, log[-2000:]
    assert "simulat" not in log.lower() and "dry run" not in log.lower()
    assert {p: s.serial for p, s in cert.served_all(ops.host).items()} == {
        p: s.serial for p, s in settled.items()
    }
    exec_start = ops.sh(f"systemctl show -p ExecStart {RENEW}.service")
    assert "--force-renewal" not in exec_start and "--dry-run" not in exec_start
    # The deploy user may start the twins, and cannot touch the manager's environment.
    setenv = f"sudo -n {commands.SYSTEMCTL} --no-pager set-environment DETECTOR_X=1"
    assert ops.as_deploy(setenv, check=False).returncode != 0


def test_rollback_skips_a_half_installed_newer_release(ops: Ops):
    first = served_release(ops.host)
    # An install cut off mid-way (the SSH session dropped): a newer directory, no marker.
    half = commands.release_id("deadbeef" * 5)
    rel = ops.host.release_dir(half)
    ops.as_deploy(f"mkdir -p {rel}/bin && ln -s {ops.host.base_python} {rel}/bin/python")
    time.sleep(1.1)  # the next release id is a later second
    newer = fab("deploy", "--allow-dirty", env=ops.env, name="ops-deploy-after-half")
    assert newer.returncode == 0, newer.stdout[-3000:] + newer.stderr[-2000:]
    current = served_release(ops.host)
    assert first < half < current
    status = fab("status", env=ops.env, name="ops-status")
    assert f"{half} (incomplete)" in status.stdout
    refused = fab("rollback", "--to", half, env=ops.env, name="ops-rollback-half")
    assert refused.returncode != 0
    assert "incomplete" in refused.stderr and "fab status" in refused.stderr
    assert served_release(ops.host) == current
    back = fab("rollback", env=ops.env, name="ops-rollback")
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-2000:]
    assert served_release(ops.host) == first
    again = fab("status", env=ops.env, name="ops-status-after")
    assert f"{current} (complete, was live)" in again.stdout  # rolled back from: not a target


def test_a_rollback_killed_after_its_switch_is_not_undone_by_the_next_one(ops: Ops):
    first = served_release(ops.host)  # before the config test: its threshold drops the cup
    deployed = fab("deploy", "--allow-dirty", env=ops.env, name="ops-deploy-before-kill")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-2000:]
    newer = served_release(ops.host)
    assert newer != first
    # `fab rollback` to first, SIGKILLed once nginx switched (the gate had started): nothing
    # recorded, its lock left behind, first serving.
    argv = [FAB, "rollback"]
    with subprocess.Popen(argv, cwd=ROOT, env=ops.env, stdout=subprocess.PIPE, text=True) as proc:
        try:
            for line in proc.stdout:
                if "] health gate " in line:
                    break
        finally:
            proc.kill()
    deadline = time.monotonic() + 30  # `systemctl reload nginx` returns before old workers quit
    while served_release(ops.host) != first and time.monotonic() < deadline:
        time.sleep(0.5)
    assert served_release(ops.host) == first
    status = fab("status", env=ops.env, name="ops-status-killed-rollback")
    assert f"is STALE: the fab process that took it (pid {proc.pid} on this machine)" in (
        status.stdout
    ), status.stdout[-3000:]
    assert f"{newer} (complete, was live)" in status.stdout  # not the rollback target
    assert fab("unlock", env=ops.env, name="ops-unlock-killed-rollback").returncode == 0
    again = fab("rollback", env=ops.env, name="ops-rollback-after-kill")
    assert served_release(ops.host) == first, again.stdout[-2000:]  # never back to newer
    assert again.returncode != 0 and "no complete, previously live release" in again.stderr
    restarted = fab("restart", env=ops.env, name="ops-restart-after-kill")  # recovers cleanly
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-2000:]
    history = ops.as_deploy(f"cat {ops.host.shared_dir}/history").stdout.splitlines()
    assert history[-2].split()[1:] == ["rollback", first, f"from={newer}"]
    assert history[-1].split()[1:] == ["restart", first, f"from={first}"]


def test_config_change_rolls_the_colors_under_load_holding_the_lock(ops: Ops):
    release = served_release(ops.host)
    old = scores(ops.host)
    assert old, "the smoke image gives no detection at the default threshold"
    threshold = math.ceil((old[0] + 0.005) * 100) / 100  # drops at least the weakest one
    assert threshold < 1
    record = commands.live_record(ops.host.service)
    live = ops.sh(f"cat {record}").strip()
    lock = ops.host.lock_dir
    # A deploy holds the lock: provisioning writes the config but refuses to roll.
    details = "holder=e2e@control\\nsince=2026-01-01T00:00Z\\nrelease=x\\nmessage=fab deploy\\n"
    ops.as_deploy(f"mkdir {lock} && printf '{details}' > {lock}/details")
    held = ops.provision("lock-held", detector_threshold=threshold)
    assert held.returncode != 0
    assert "deploy lock held" in held.stdout and "e2e@control" in held.stdout
    assert scores(ops.host) == old  # still the old configuration, still served
    assert fab("unlock", env=ops.env, name="ops-unlock-config").returncode == 0
    # The next run rolls (the pending change is seen on the host), with no failed request.
    with Load(ops.host, SMOKE) as load:
        time.sleep(2)
        rolled = ops.provision("roll", detector_threshold=threshold)
        time.sleep(2)
    load.save("config-roll", rolled.seconds)
    assert rolled.returncode == 0, rolled.stdout[-3000:] + rolled.stderr[-2000:]
    assert load.failed() == []
    assert len(load.results) >= 8
    new = scores(ops.host)  # the same image: the weakest detection is now below threshold
    assert len(new) < len(old) and all(score >= threshold for score in new)
    assert ops.sh(f"cat {record}").strip() == commands.other_color(live)
    assert served_release(ops.host) == release
    assert ops.sh(f"test -e {lock} && echo held || echo free").strip() == "free"
    again = ops.provision("roll-again", detector_threshold=threshold)
    assert again.returncode == 0
    assert again.stats[ops.bed_host.name]["changed"] == 0, again.changed_tasks()
