"""Scale out on the test bed: an lb host and two detectors, a rolling deploy under bounded load."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from detector import sizing

from deploy import commands
from deploy import health
from deploy import inventory
from deploy import remote
from deploy import rolling
from testbed import guard
from testbed.inventory import write_inventory
from testbed.provisioning import BIN
from testbed.provisioning import MODEL
from testbed.provisioning import variables
from testbed.provisioning import wheelhouse_requirements

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "scale-out"
FAB = str(Path(sys.executable).with_name("fab"))
RESULTS: dict = {}
# Load clients = the detections ONE detector admits at once (sizing.admitted: 1 per worker),
# set from the provisioning's printed sizing: a roll drains one detector, so the other alone
# must admit all of it; more clients would be refused 503 by design (test_overload), which
# these no-drop checks count as failed. fab's gate checks a drained detector over SSH.
CLIENTS: list[int] = []


class Load:
    """Bounded load through the lb: `clients` threads POST detections until stopped or limits."""

    def __init__(self, lb, image: bytes, clients=0, pause_s=0.5, max_s=600, max_requests=3000):
        clients = clients or CLIENTS[0]
        self.lb, self.image, self.pause_s = lb, image, pause_s
        self.deadline = time.monotonic() + max_s
        self.max_requests = max_requests
        self.stop_event = threading.Event()
        self.rows: list[tuple[float, int, str, str]] = []  # (time, status, host, error)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if len(self.rows) >= self.max_requests:
                    return
            try:
                res = health.detect(self.lb, self.lb.https_ports[0], self.image, timeout=60)
                row = (time.monotonic(), res.status, res.headers.get("x-detector-host", ""), "")
            except OSError as exc:
                row = (time.monotonic(), 0, "", f"{type(exc).__name__}: {exc}")
            with self.lock:
                self.rows.append(row)
            if self.pause_s:
                self.stop_event.wait(self.pause_s)

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=90)
        self.seconds = time.monotonic() - self.started

    def failed(self) -> list:
        return [r for r in self.rows if r[1] != 200]

    def per_host(self) -> dict:
        return dict(Counter(r[2] for r in self.rows if r[1] == 200))


def _record(name: str, value) -> None:
    RESULTS[name] = value
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "results.json").write_text(json.dumps(RESULTS, indent=2) + "\n")


def fab(*args: str, env: dict, timeout: int = 1200, name: str = ""):
    """Run the real `fab` CLI; keep its output under test-artifacts/scale-out/."""
    start = time.monotonic()
    proc = subprocess.run(
        [FAB, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name or args[0]}.log").write_text(
        f"$ fab {' '.join(args)}  # {time.monotonic() - start:.1f}s rc={proc.returncode}\n"
        f"{proc.stdout}\n{proc.stderr}"
    )
    return proc


@pytest.fixture(scope="module")
def scale(testbed, testbed_hosts, tmp_path_factory):
    """Three fresh bed hosts (lb + 2 detectors) provisioned by one playbook run, fab's inventory."""
    if not (ROOT / "weights" / f"{MODEL}.weights").is_file():
        pytest.skip(f"weights/{MODEL}.weights is missing: run `make setup` (make weights)")
    lb_host, *detectors = testbed_hosts(3, fresh=True)
    for h in (lb_host, *detectors):
        guard(h.address)
    work = tmp_path_factory.mktemp("scale-out")
    testbed.build_wheelhouse(wheelhouse_requirements(work / "requirements.txt"))
    # No A record moves (other e2e tests share the bed's DNS); unpaused clients stay under
    # the per-client limits; short fab deadlines so failing gates end quickly.
    values = variables(
        testbed,
        {"detector_dns_records": False, "detector_rate_limit": "200r/s", "detector_conn_limit": 50},
    )
    values.update(detector_deploy_gate_timeout_s=60, detector_deploy_drain_s=2)
    inv = work / "inventory"
    inv.mkdir()
    path = inv / "hosts.yml"
    everyone = [{"name": h.name, "address": h.address} for h in (lb_host, *detectors)]
    write_inventory(path, everyone, testbed.key_path, values, extra_groups=())
    groups = {
        "testbed": {h["name"]: {"ansible_host": h["address"]} for h in everyone},
        "detector": {h.name: {} for h in detectors},
        "lb": {lb_host.name: {}},
    }
    path.write_text(
        json.dumps({"all": {"children": {g: {"hosts": hs} for g, hs in groups.items()}}})
    )
    (work / "variables.json").write_text(json.dumps(values))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    argv = [str(BIN / "ansible-playbook"), "-i", str(path), "-e", f"@{work / 'variables.json'}"]
    start = time.monotonic()
    run = subprocess.run(
        [*argv, str(ROOT / "ansible" / "provision.yml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "provision.log").write_text(run.stdout + run.stderr)
    _record("provision_3_hosts_s", round(time.monotonic() - start, 1))
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    workers = [int(w) for w in re.findall(r"(\d+) worker\(s\) x", run.stdout)]
    assert workers, "provision.yml prints each detector's sizing"
    CLIENTS[:] = [sizing.admitted(min(workers))]
    _record("clients_per_load", CLIENTS[0])
    fab_env = {**os.environ, inventory.INVENTORY_ENV: str(path)}
    hosts, bal = inventory.load_with_balancer(str(path))
    assert bal is not None and bal.host.address == lb_host.address
    return fab_env, hosts, bal


@pytest.fixture(scope="module")
def image():
    return (ROOT / "deploy" / "smoke.jpg").read_bytes()


def test_only_the_lb_serves_tls_and_detectors_admit_their_port_only_from_it(scale):
    _, hosts, bal = scale
    for h in hosts:
        for port in (*bal.host.https_ports, bal.port):
            with pytest.raises(OSError):
                socket.create_connection((h.address, port), timeout=3).close()
    ready = health.https(bal.host, bal.host.https_ports[0], "GET", "/readyz", timeout=15)
    assert ready.status in (502, 503)  # the lb's verified TLS; nothing deployed behind it yet
    lb = remote.connect(bal.host)
    try:
        upstream = remote.run(lb, ["cat", bal.host.upstream_conf]).stdout
    finally:
        lb.close()
    # The lb passes each detector at most what that detector's own nginx passes on (its
    # sizing's max_conns = 2 per worker), counted over the lb's nginx workers (the zone).
    assert "zone " in upstream, upstream
    bound = f"max_conns={2 * CLIENTS[0]}"  # equal hosts: 2 x the detections one admits
    assert upstream.count(bound) == len(hosts), upstream


def test_first_deploy_then_both_detectors_serve_through_the_lb(scale, image):
    env, hosts, bal = scale
    proc = fab("deploy", "--allow-dirty", env=env, name="deploy-first")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "live on 2 host(s)" in proc.stdout
    with Load(bal.host, image, pause_s=0.2, max_s=60, max_requests=60) as load:
        for t in load.threads:
            t.join(timeout=60)
    assert not load.failed(), load.failed()[:5]
    assert len(load.per_host()) == 2, load.per_host()
    _record("first_deploy_load_per_host", load.per_host())


def test_rolling_deploy_under_load_fails_no_request(scale, image):
    env, hosts, bal = scale
    with Load(bal.host, image, pause_s=0.5, max_s=600) as load:
        load.stop_event.wait(3)
        proc = fab("deploy", "--allow-dirty", env=env, name="deploy-rolling")
        load.stop_event.wait(3)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("undrain") >= 2
    _record(
        "rolling_deploy",
        {"requests": len(load.rows), "failed": len(load.failed()), "per_host": load.per_host()},
    )
    assert len(load.rows) > 0
    assert not load.failed(), load.failed()[:5]
    assert len(load.per_host()) == 2, load.per_host()


def test_status_and_rollback_behind_the_lb(scale, image):
    env, hosts, bal = scale
    status = fab("status", env=env, name="status")
    assert status.returncode == 0, status.stdout[-2000:] + status.stderr[-2000:]
    assert status.stdout.count("(behind the lb) /readyz 200") == len(hosts), status.stdout
    with Load(bal.host, image, pause_s=0.5, max_s=600) as load:
        proc = fab("rollback", env=env, name="rollback")
        load.stop_event.wait(2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    _record("rollback_under_load", {"requests": len(load.rows), "failed": len(load.failed())})
    assert len(load.rows) > 0
    assert not load.failed(), load.failed()[:5]


def test_throughput_with_two_detectors_and_with_one(scale, image):
    _, hosts, bal = scale
    rates = {}
    lb = remote.connect(bal.host)
    try:
        for label, down in (("two", []), ("one", [bal.servers[1][0]])):
            rolling.set_down(lb, bal, down)
            with Load(bal.host, image, pause_s=0, max_s=20, max_requests=2000) as load:
                load.stop_event.wait(20)
            assert not load.failed(), load.failed()[:5]
            assert len(load.per_host()) == (2 if not down else 1), load.per_host()
            rates[label] = round(len(load.rows) / load.seconds, 2)
    finally:
        rolling.set_down(lb, bal, [])
        lb.close()
    rates["ratio_two_over_one"] = round(rates["two"] / rates["one"], 2)
    _record("throughput_req_per_s", rates)


def test_stopping_one_detector_fails_no_request(scale, image):
    _, hosts, bal = scale
    victim = hosts[1]
    c = remote.connect(victim)
    try:
        with Load(bal.host, image, pause_s=0.2, max_s=120) as load:
            load.stop_event.wait(5)
            stopped = time.monotonic()
            for color in commands.COLORS:
                stop = commands.systemctl("stop", commands.unit(victim.service, color))
                remote.run(c, commands.sudo(stop), timeout=120)
            load.stop_event.wait(20)
    finally:
        c.close()
    before = Counter(r[2] for r in load.rows if r[0] < stopped)
    after = [r for r in load.rows if r[0] >= stopped]
    from_victim = [r[0] - stopped for r in after if r[2] == victim.name]
    _record(
        "stop_one_detector",
        {
            "per_host_before_stop": dict(before),
            "per_host_after_stop": dict(Counter(r[2] for r in after)),
            "requests_after_stop": len(after),
            "failed": len(load.failed()),
            "last_answer_from_stopped_host_s": round(max(from_victim), 2) if from_victim else 0,
        },
    )
    assert before.get(victim.name), before  # it served before the stop
    assert len(after) > 0
    assert not load.failed(), load.failed()[:5]
