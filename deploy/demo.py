"""`make demo`: test bed (1 host) up, provision, deploy, print URL and curl; `down` stops it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from deploy import inventory

REPO = inventory.REPO
STATE = REPO / "test-artifacts" / "demo"
BIN = Path(sys.executable).parent
SAMPLE = REPO / "deploy" / "smoke.jpg"


def _stage(times: dict, name: str, func):
    start = time.monotonic()
    print(f"== {name} ...", flush=True)
    result = func()
    times[name] = round(time.monotonic() - start, 1)
    print(f"== {name}: {times[name]} s", flush=True)
    return result


def up() -> int:
    """Bring everything up and leave it running."""
    if os.geteuid() != 0:
        raise SystemExit("demo: the test bed needs root (systemd-nspawn, bridges)")
    if (STATE / "bed.json").exists():
        raise SystemExit("demo: already up (test-artifacts/demo/bed.json); run `make demo-down`")
    sys.path.insert(0, str(REPO))
    from testbed import Testbed
    from testbed.provisioning import playbook
    from testbed.provisioning import variables
    from testbed.provisioning import wheelhouse_requirements

    STATE.mkdir(parents=True, exist_ok=True)
    times: dict = {}
    bed = _stage(times, "test bed up (1 host)", lambda: Testbed.allocate().up(1))
    host = bed.hosts[0]
    (STATE / "bed.json").write_text(json.dumps({"id": bed.id, "host": host.name}))
    reqs = STATE / "requirements.txt"
    _stage(times, "wheelhouse", lambda: bed.build_wheelhouse(wheelhouse_requirements(reqs)))
    values = variables(bed)
    (STATE / "variables.json").write_text(json.dumps(values))
    run = _stage(times, "provision", lambda: playbook(bed, host.name, STATE / "variables.json"))
    (STATE / "provision.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        print((run.stdout + run.stderr)[-3000:], file=sys.stderr)
        raise SystemExit("demo: provisioning failed; see test-artifacts/demo/provision.log")
    inv = STATE / "inventory"
    (inv / "host_vars").mkdir(parents=True, exist_ok=True)
    (inv / "hosts.yml").write_text(
        json.dumps({"all": {"children": {"detector": {"hosts": {host.name: {}}}}}})
    )
    values.update(ansible_host=host.address, ansible_ssh_private_key_file=host.key_path)
    (inv / "host_vars" / f"{host.name}.yml").write_text(json.dumps(values))
    deploy = [str(BIN / "fab"), "deploy", "--allow-dirty", "--inventory", str(inv)]
    proc = _stage(times, "fab deploy", lambda: subprocess.run(deploy, cwd=REPO, timeout=1800))
    if proc.returncode != 0:
        raise SystemExit("demo: fab deploy failed (output above)")
    (STATE / "times.json").write_text(json.dumps(times, indent=2) + "\n")
    dns = f"@{values['detector_dns_server']} -p {values['detector_dns_port']}"
    domain = values["detector_domain"]
    print(
        "\nThe demo is up and stays up; `make demo-down` stops everything it started.\n"
        f"  page: https://{domain}:5000/  (host {host.name} at {host.address})\n"
        f"  stage times (s): {json.dumps(times)}\n"
        "Try it: the name resolves through the test bed's DNS, the chain is checked against\n"
        "Pebble's root:\n"
        f"  curl --cacert {values['detector_acme_root_ca']} \\\n"
        f"       --resolve {domain}:5000:$(dig +short {dns} {domain} | head -n1) \\\n"
        f"       -F file=@{SAMPLE} https://{domain}:5000/api/v1/detect\n"
        f"  {BIN / 'fab'} status --inventory {inv}\n",
        flush=True,
    )
    return 0


def down() -> int:
    """Stop the demo's test bed (by the PIDs it recorded) and forget it."""
    state = STATE / "bed.json"
    if not state.exists():
        print("demo: nothing to stop")
        return 0
    bed_id = str(json.loads(state.read_text())["id"])
    argv = [str(BIN / "python"), "-m", "testbed", "--bed", bed_id, "down"]
    proc = subprocess.run(argv, cwd=REPO, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"demo: `{' '.join(argv)}` failed")
    state.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(down() if sys.argv[1:] == ["down"] else up())
