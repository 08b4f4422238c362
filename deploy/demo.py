"""`make demo`: test bed (1 host) up, provision, deploy, print URL and curl; `down` stops it."""

from __future__ import annotations

import json
import os
import shutil
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
    from testbed.provisioning import wheelhouse_requirements
    from testbed.userpath import user_inventory

    STATE.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(STATE / "production", ignore_errors=True)  # a previous demo's inventory
    times: dict = {}
    bed = _stage(times, "test bed up (1 host)", lambda: Testbed.allocate().up(1))
    host = bed.hosts[0]
    (STATE / "bed.json").write_text(json.dumps({"id": bed.id, "host": host.name}))
    reqs = STATE / "requirements.txt"
    _stage(times, "wheelhouse", lambda: bed.build_wheelhouse(wheelhouse_requirements(reqs)))
    # The README's path: a copy of the example inventory, an encrypted vault, its commands.
    user = user_inventory(bed, [host], STATE, checkout=REPO)
    print(f"== $ {' '.join(user.provision_argv())}", flush=True)
    run = _stage(times, "provision", user.provision)
    (STATE / "provision.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        print((run.stdout + run.stderr)[-3000:], file=sys.stderr)
        raise SystemExit("demo: provisioning failed; see test-artifacts/demo/provision.log")
    deploy = user.fab_argv("deploy", "--allow-dirty")  # the demo ships the working tree
    print(f"== $ {' '.join(deploy)}", flush=True)
    proc = _stage(
        times,
        "fab deploy",
        lambda: subprocess.run(deploy, cwd=REPO, env=user.env(), timeout=1800),
    )
    if proc.returncode != 0:
        raise SystemExit("demo: fab deploy failed (output above)")
    (STATE / "times.json").write_text(json.dumps(times, indent=2) + "\n")
    values = bed.variables()
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
        f"  {' '.join(user.fab_argv('status'))}   (with {BIN} on PATH)\n",
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
