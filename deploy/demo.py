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


def _run(argv: list[str], timeout: int, capture: bool = False) -> str:
    print("$ " + " ".join(argv), flush=True)
    proc = subprocess.run(
        argv, cwd=REPO, timeout=timeout, text=True, capture_output=capture, check=False
    )
    if proc.returncode != 0:
        if capture:
            print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"demo: `{' '.join(argv[:4])} ...` failed ({proc.returncode})")
    return proc.stdout if capture else ""


def _stage(times: dict, name: str, func):
    start = time.monotonic()
    result = func()
    times[name] = round(time.monotonic() - start, 1)
    print(f"== {name}: {times[name]} s", flush=True)
    return result


def _bed_status(out: str) -> dict:
    """The JSON object `python -m tests.testbed up` prints before its ssh hint."""
    return json.loads(out[out.index("{") : out.rindex("}") + 1])


def up() -> int:
    """Bring everything up and leave it running."""
    if (STATE / "bed.json").exists():
        raise SystemExit("demo: already up (test-artifacts/demo/bed.json); run `make demo-down`")
    STATE.mkdir(parents=True, exist_ok=True)
    times: dict = {}
    wheels = str(REPO / "tests" / "testbed" / "wheelhouse-requirements.txt")
    out = _stage(
        times,
        "test bed up (1 host)",
        lambda: _run(
            [
                str(BIN / "python"),
                "-m",
                "tests.testbed",
                "up",
                "--hosts",
                "1",
                "--wheelhouse",
                wheels,
            ],
            1800,
            capture=True,
        ),
    )
    bed = _bed_status(out)
    (STATE / "bed.json").write_text(json.dumps(bed, indent=2))
    inv = bed["inventory"]
    env_inv = {**os.environ, inventory.INVENTORY_ENV: inv}
    os.environ.update(env_inv)
    _stage(
        times,
        "provision (ansible-playbook)",
        lambda: _run(
            [str(BIN / "ansible-playbook"), "-i", inv, str(REPO / "ansible" / "provision.yml")],
            3600,
        ),
    )
    _stage(
        times,
        "fab deploy",
        lambda: _run([str(BIN / "fab"), "deploy", "--allow-dirty", "--inventory", inv], 1800),
    )
    data = inventory.read(Path(inv))
    (host,) = inventory.hosts_from(data)[:1]
    hv = data["_meta"]["hostvars"][host.name]
    dns, port = hv.get("detector_dns_server", ""), hv.get("detector_dns_port", 53)
    resolve = f"$(dig +short @{dns} -p {port} {host.domain} | head -n1)" if dns else host.address
    times_file = STATE / "times.json"
    times_file.write_text(json.dumps(times, indent=2))
    print(
        "\nThe demo is up (left running; `make demo-down` stops it).\n"
        f"  page:   https://{host.domain}:5000/  (host {host.name} at {host.address})\n"
        f"  stages: {json.dumps(times)}\n"
        "Try it (name resolved through the test bed's DNS, chain checked against Pebble's root):\n"
        f"  curl --cacert {host.ca_bundle} \\\n"
        f"       --resolve {host.domain}:5000:{resolve} \\\n"
        f"       -F file=@{SAMPLE} https://{host.domain}:5000/api/v1/detect\n"
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
    bed = json.loads(state.read_text())
    _run([str(BIN / "python"), "-m", "tests.testbed", "--bed", str(bed["id"]), "down"], 600)
    state.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(down() if sys.argv[1:] == ["down"] else up())
