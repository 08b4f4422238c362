"""`fab deploy|rollback|restart|renew-cert` on a provisioned test-bed host, under bounded load."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from detector import sizing

from deploy import cert
from deploy import health
from deploy import inventory
from testbed import guard
from testbed.provisioning import MODEL
from testbed.provisioning import playbook
from testbed.provisioning import variables
from testbed.provisioning import wheelhouse_requirements

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
ARTIFACTS = ROOT / "test-artifacts" / "deploy"
FAB = str(Path(sys.executable).with_name("fab"))
# Appended to service/detector/app.py in a throwaway clone to make deliberately broken releases.
BROKEN = {
    "import": '\nraise RuntimeError("broken release: fails at import")\n',
    "detect500": (
        "\n_create_app = create_app\n\n\n"
        "def create_app(config=None):\n"
        "    app = _create_app(config)\n\n"
        "    @app.before_request\n"
        "    def _broken():\n"
        "        from flask import request\n\n"
        "        if request.path == '/api/v1/detect':\n"
        "            return {'error': 'broken release: detect fails'}, 500\n"
        "        return None\n\n"
        "    return app\n"
    ),
    "stale-id": ("\n\ndef find_release(config):\n    return '20000101T000000Z-00000000'\n"),
}


class Load:
    """Bounded load: `clients` threads POST detections through nginx until stopped (or limits).

    The default load is what a deploy promises to serve without a failed request: one client
    (0.3 s pause, far under nginx's per-client rate) plus fab's own gate detection after the
    switch fit the 2 detections a 2-worker host admits (sizing.admitted, 1 per worker; bed_env
    checks the host has them). More concurrent detections than admitted are refused 503 by
    design (tests/e2e/test_overload.py), which these checks would count as failed.
    """

    def __init__(self, host, image: bytes, clients=1, pause_s=0.3, max_s=900, max_requests=4000):
        self.host, self.image, self.pause_s = host, image, pause_s
        self.deadline = time.monotonic() + max_s
        self.max_requests = max_requests
        self.stop_event = threading.Event()
        self.results: list[tuple[int, str, str]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if len(self.results) >= self.max_requests:
                    return
            try:
                res = health.detect(self.host, self.host.https_ports[0], self.image, timeout=60)
                row = (res.status, res.headers.get("x-detector-release", ""), "")
            except OSError as exc:
                row = (0, "", f"{type(exc).__name__}: {exc}")
            with self.lock:
                self.results.append(row)
            self.stop_event.wait(self.pause_s)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=90)

    def save(self, name: str, took_s: float) -> None:
        """Write a summary (requests, failures, releases seen) under test-artifacts/deploy/."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        summary = {
            "requests": len(self.results),
            "failed": self.failed()[:20],
            "releases": self.releases(),
            "clients": len(self.threads),
            "fab_s": round(took_s, 1),
        }
        (ARTIFACTS / f"load-{name}.json").write_text(json.dumps(summary, indent=2) + "\n")

    def failed(self) -> list[tuple[int, str, str]]:
        return [r for r in self.results if r[0] != 200]

    def releases(self) -> list[str]:
        """Release ids in the order they answered (consecutive duplicates collapsed)."""
        seen: list[str] = []
        for _, rid, _ in self.results:
            if rid and (not seen or seen[-1] != rid):
                seen.append(rid)
        return seen


def fab(*args: str, cwd: Path = ROOT, env: dict, timeout: int = 1200, name: str = ""):
    """Run the real `fab` CLI; keep its output under test-artifacts/deploy/."""
    start = time.monotonic()
    proc = subprocess.run(
        [FAB, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    took = time.monotonic() - start
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / f"{name or args[0]}-{int(time.time())}.log"
    log.write_text(
        f"$ fab {' '.join(args)}  # {took:.1f}s rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    proc.took = took
    return proc


def served_release(host) -> str:
    return health.https(host, host.https_ports[0], "GET", "/readyz").headers.get(
        "x-detector-release", ""
    )


@pytest.fixture(scope="module")
def bed_env(testbed, testbed_hosts, tmp_path_factory):
    """A freshly provisioned host and a fab inventory with short deadlines: (bed, env, host)."""
    if not (ROOT / "weights" / f"{MODEL}.weights").is_file():
        pytest.skip(f"weights/{MODEL}.weights is missing: run `make setup` (make weights)")
    bed_host = testbed_hosts(1, fresh=True)[0]
    guard(bed_host.address)
    work = tmp_path_factory.mktemp("deploy")
    testbed.build_wheelhouse(wheelhouse_requirements(work / "requirements.txt"))
    values = variables(testbed)
    (work / "variables.json").write_text(json.dumps(values))
    run = playbook(testbed, bed_host.name, work / "variables.json")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "provision.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    workers = min(int(w) for w in re.findall(r"(\d+) worker\(s\) x", run.stdout))
    assert sizing.admitted(workers) >= 2, f"Load's client + fab's gate need 2; {workers} worker"
    # fab's inventory: the bed's hosts, the same values as host vars (they outrank the
    # detector role's defaults), and short deadlines so failing gates end quickly.
    inv = work / "inventory"
    (inv / "host_vars").mkdir(parents=True)
    hosts = {"all": {"children": {"detector": {"hosts": {bed_host.name: {}}}}}}
    (inv / "hosts.yml").write_text(json.dumps(hosts))
    values.update(
        ansible_host=bed_host.address,
        ansible_ssh_private_key_file=bed_host.key_path,
        detector_deploy_gate_timeout_s=30,
        detector_deploy_drain_s=2,
    )
    (inv / "host_vars" / f"{bed_host.name}.yml").write_text(json.dumps(values))
    env = {**os.environ, inventory.INVENTORY_ENV: str(inv)}
    (host,) = inventory.load(str(inv), [bed_host.name])
    return testbed, env, host, bed_host


@pytest.fixture(scope="module")
def image():
    return (ROOT / "deploy" / "smoke.jpg").read_bytes()


def broken_clone(tmp_path: Path, kind: str) -> Path:
    """A clone of HEAD with one deliberately broken commit."""
    clone = tmp_path / f"clone-{kind}"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    app = clone / "service" / "detector" / "app.py"
    app.write_text(app.read_text() + BROKEN[kind])
    git = ["git", "-C", str(clone), "-c", "user.name=e2e", "-c", "user.email=e2e@detector.test"]
    subprocess.run([*git, "commit", "--quiet", "-am", f"broken: {kind}"], check=True)
    return clone


def test_first_deploy_serves_the_seed_contract_and_the_api(bed_env):
    _, env, host, _ = bed_env
    proc = fab("deploy", "--allow-dirty", env=env, name="deploy-first")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rid = served_release(host)
    assert rid in proc.stdout
    dog = SHARED / "testdata" / "dog.jpg"
    # Without ../shared (a user's clone) the contract is checked on the deploy's own smoke image;
    # the comparison with the reference detections needs ../shared.
    photo = dog.read_bytes() if dog.exists() else health.SMOKE_IMAGE.read_bytes()
    body, headers = health.multipart("file", "photo.jpg", photo)
    seed = health.https(host, 5000, "POST", "/", body, headers)
    assert seed.status == 200
    data = seed.json()
    assert sorted(data) == ["image", "name"]
    assert data["image"].startswith("data:image/jpeg;base64, ")
    api = health.detect(host, 443, photo)
    assert api.status == 200
    labels = {d["label"] for d in api.json()["detections"]}
    if not dog.exists():
        assert set(health.SMOKE_LABELS) <= labels, labels
        pytest.skip(f"the seed contract passed on smoke.jpg; {dog} is needed for the reference")
    reference = json.loads((SHARED / "reference" / "yolov3-tiny.json").read_text())
    (want,) = [r for r in reference if r["image"] == "dog.jpg"]
    assert labels == {d["label"] for d in want["detections"]}
    assert {"dog", "bicycle", "car"} <= labels


def test_deploy_under_load_switches_release_with_no_failed_request(bed_env, image):
    _, env, host, _ = bed_env
    before = served_release(host)
    with Load(host, image) as load:
        time.sleep(3)
        proc = fab("deploy", "--allow-dirty", env=env, name="deploy-under-load")
        time.sleep(3)
    load.save("deploy", proc.took)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    after = served_release(host)
    assert after != before
    assert load.failed() == []
    assert load.releases() == [before, after]
    assert len(load.results) >= 8


@pytest.mark.parametrize("kind", ["import", "detect500", "stale-id"])
def test_broken_release_is_refused_and_the_old_one_stays(bed_env, image, tmp_path, kind):
    _, env, host, _ = bed_env
    before = served_release(host)
    clone = broken_clone(tmp_path, kind)
    with Load(host, image) as load:
        proc = fab("deploy", cwd=clone, env=env, name=f"deploy-broken-{kind}")
        time.sleep(2)
    load.save(f"broken-{kind}", proc.took)
    assert proc.returncode != 0
    assert "error:" in proc.stderr
    if kind == "stale-id":  # passes the smoke check, fails the gate after the switch
        assert "rolled back to " + before in proc.stderr
    assert served_release(host) == before
    assert load.failed() == []
    stale = {"20000101T000000Z-00000000"} if kind == "stale-id" else set()
    assert set(load.releases()) - stale == {before}


def test_rollback_and_keep_five_of_seven(bed_env):
    bed, env, host, bed_host = bed_env
    for _ in range(5):  # with the two deploys above: seven
        proc = fab("deploy", "--allow-dirty", env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    kept = bed.ssh(bed_host, f"ls -1 {host.releases_dir}").stdout.split()
    assert len(kept) == 5
    current = served_release(host)
    assert current == kept[-1]
    proc = fab("rollback", env=env, name="rollback")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert served_release(host) == kept[-2]
    proc = fab("rollback", "--to", current, env=env, name="rollback-to")
    assert proc.returncode == 0
    assert served_release(host) == current
    missing = fab("rollback", "--to", "20000101T000000Z-00000000", env=env, name="rollback-bad")
    assert missing.returncode != 0
    assert "fab status" in missing.stderr


def test_concurrent_deploy_is_refused_naming_the_holder(bed_env):
    _, env, _, _ = bed_env
    first = subprocess.Popen(
        [FAB, "deploy", "--allow-dirty"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        lines = []
        for line in first.stdout:  # the lock is held once the first deploy installs
            lines.append(line)
            if "] install " in line:
                break
        second = fab("deploy", "--allow-dirty", env=env, name="deploy-locked")
    finally:
        out, _ = first.communicate(timeout=1200)
    assert first.returncode == 0, "".join(lines) + out[-3000:]
    assert second.returncode != 0
    assert "deploy lock held by" in second.stderr
    assert "fab unlock" in second.stderr


def test_renew_cert_force_serves_a_new_serial_with_no_failed_request(bed_env, image):
    _, env, host, _ = bed_env
    before = cert.served_all(host)
    with Load(host, image) as load:
        proc = fab("renew-cert", "--force", env=env, name="renew-cert")
    load.save("renew-cert", proc.took)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    after = cert.served_all(host)
    assert all(after[p].serial != before[p].serial for p in host.https_ports)
    assert load.failed() == []


def test_restart_and_reboot_keep_the_current_release(bed_env, image):
    bed, env, host, bed_host = bed_env
    current = served_release(host)
    with Load(host, image) as load:
        proc = fab("restart", env=env, name="restart")
    load.save("restart", proc.took)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert load.failed() == []
    bed.reboot(bed_host)
    deadline = time.monotonic() + 180
    served = ""
    while time.monotonic() < deadline and served != current:
        try:
            served = served_release(host)
        except OSError:
            time.sleep(2)
    assert served == current
    status = fab("status", env=env, name="status")
    assert status.returncode == 0
    assert current in status.stdout
