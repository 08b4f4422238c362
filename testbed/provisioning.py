"""Run ansible/provision.yml on test-bed hosts: wheelhouse, weights mirror, variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.inventory_source import defaults
from testbed.bed import Testbed

REPO = Path(__file__).resolve().parents[1]
ANSIBLE = REPO / "ansible"
PLAYBOOK = ANSIBLE / "provision.yml"
BIN = Path(sys.executable).parent
MODEL = "yolov3-tiny"


@dataclass
class Run:
    """One ansible-playbook run: exit code, output, wall time and (JSON callback) per-host stats."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    stats: dict

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported a change (JSON callback only)."""
        try:
            plays = json.loads(self.stdout)["plays"]
        except (ValueError, KeyError):
            return []
        return [
            f"{task['task']['name']} on {host}: {json.dumps(result.get('diff'))[:2000]}"
            for play in plays
            for task in play["tasks"]
            for host, result in task["hosts"].items()
            if result.get("changed")
        ]


def wheelhouse_requirements(path: Path) -> Path:
    """Write the requirements the hosts install (torch, the host lock, certbot) into one file."""
    settings = defaults()
    lines = [
        settings["detector_torch_spec"],
        f"certbot-dns-rfc2136=={settings['detector_certbot_version']}",
    ]
    for lock in ("requirements-host.txt", "requirements-certbot.txt"):
        lines += [
            line
            for line in (ANSIBLE / "files" / lock).read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    path.write_text("\n".join(sorted(set(lines))) + "\n")
    return path


def weights_mirror(bed: Testbed) -> str:
    """Serve the repo's weights file over the bed's wheelhouse server; return the mirror URL."""
    weights = REPO / "weights" / f"{MODEL}.weights"
    served = bed.dir / "wheelhouse" / "weights"
    served.mkdir(parents=True, exist_ok=True)
    link = served / weights.name
    if not link.exists():
        link.symlink_to(weights)
    return f"{bed.wheelhouse_url}weights"


def variables(bed: Testbed, extra: dict | None = None) -> dict:
    """The bed's variables plus what this provisioning needs on the bed, for `playbook()`.

    Tests that vary settings per run pass these as extra vars; the README's path (an inventory
    directory, no extra vars) is testbed.userpath.user_inventory.
    """
    return {
        **bed.variables(),
        "detector_model": MODEL,
        "detector_weights_mirror": weights_mirror(bed),
        "detector_dns_records": True,
        "detector_dns_propagation_s": 1,
        **(extra or {}),
    }


def playbook(
    bed: Testbed,
    host: str,
    variables_file: Path,
    *args: str,
    json_output: bool = False,
    playbook_path: Path = PLAYBOOK,
    timeout: float = 1800,
) -> Run:
    """Run a playbook against one host of the bed with the variables file; return the Run."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    if json_output:
        env["ANSIBLE_STDOUT_CALLBACK"] = "json"
    argv = [str(BIN / "ansible-playbook"), "-i", str(bed.inventory_path), "--limit", host]
    argv += ["-e", f"@{variables_file}", *args, str(playbook_path)]
    start = time.monotonic()
    result = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.monotonic() - start
    stats = {}
    if json_output:
        try:
            stats = json.loads(result.stdout)["stats"]
        except (ValueError, KeyError):
            stats = {}
    return Run(result.returncode, result.stdout, result.stderr, seconds, stats)
