"""provision.yml on Debian 11 (Python 3.9): the venv backend and an lb host stop early, cleanly."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
import yaml

from testbed import Testbed
from testbed import leftovers
from testbed.paths import CACHE_DIR
from testbed.provisioning import BIN
from testbed.provisioning import PLAYBOOK
from testbed.provisioning import REPO
from testbed.rootfs import SUITES
from tests.e2e.conftest import missing_prerequisite

SUITE = "bullseye"
ROLES = REPO / "ansible" / "roles"
MIN_PYTHON = yaml.safe_load((ROLES / "python_env" / "defaults" / "main.yml").read_text())[
    "python_env_min_python"
]
CERTBOT_MIN_PYTHON = yaml.safe_load((ROLES / "certbot" / "defaults" / "main.yml").read_text())[
    "certbot_min_python"
]
# What provisioning would have put there, had it not stopped first.
NOTHING_INSTALLED = (
    "test ! -e /opt/certbot && test ! -e /opt/detector && test ! -e /opt/miniconda3"
    " && ! dpkg -s ufw python3-venv nginx >/dev/null 2>&1"
    " && ! python3 -c 'import torch' 2>/dev/null"
)


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    """A bed of its own (the session's bookworm bed is not touched) with one bare bullseye host."""
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    bed = Testbed.allocate(suite=SUITE, owner_pid=os.getpid(), log=lambda m: print(m, flush=True))
    bed.up(hosts=1)
    try:
        yield bed
    finally:
        bed.down()
    left = leftovers(bed.id)
    assert not any(left.values()), f"test bed {bed.id} left things behind: {left}"


def provision(bed: Testbed) -> tuple[int, dict, str]:
    """Run the README's test-bed command line on the bed's inventory: rc, JSON result, stderr."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    argv = [str(BIN / "ansible-playbook"), "-i", str(bed.inventory_path), str(PLAYBOOK)]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    try:
        return result.returncode, json.loads(result.stdout), result.stderr
    except ValueError:
        pytest.fail(f"no JSON from ansible-playbook:\n{result.stdout[-3000:]}\n{result.stderr}")


def ran(output: dict, host: str) -> list[tuple[str, dict]]:
    """(task name without its role, result) of every task that ran on host, in order."""
    return [
        (task["task"]["name"].split(" : ", 1)[-1], task["hosts"][host])
        for play in output["plays"]
        for task in play["tasks"]
        if host in task["hosts"]
    ]


def stopped_at(output: dict, host: str) -> tuple[str, str]:
    """The failed task's name and its message (whitespace folded); fails unless exactly one."""
    failed = [(name, result) for name, result in ran(output, host) if result.get("failed")]
    assert len(failed) == 1, [name for name, _ in failed]
    name, result = failed[0]
    return name, " ".join(str(result.get("msg", "")).split())


def test_host_is_debian_11_with_python_3_9(bed: Testbed):
    release = bed.ssh("host1", "cat /etc/debian_version").stdout
    python = bed.ssh("host1", "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
    assert release.startswith("11.")
    assert python.stdout.strip() == SUITES[SUITE] == "3.9"


def test_venv_backend_stops_before_installing_anything(bed: Testbed):
    bed.write_inventory(extra_groups=("detector",))
    assert bed.variables()["detector_python_backend"] == "venv"
    rc, output, _ = provision(bed)
    assert rc != 0, "provisioning a Python 3.9 host with the venv backend went through"
    task, message = stopped_at(output, "host1")
    assert task == "Check the system Python is new enough for the venv backend"
    assert message == (
        f"system Python 3.9 on host1 (/usr/bin/python3) is older than {MIN_PYTHON}, which the"
        " service needs (its pinned packages, ansible/files/requirements-host.txt); set"
        f" detector_python_backend: conda (Miniconda brings its own Python {MIN_PYTHON}) or use"
        f" a release whose python3 is {MIN_PYTHON} or newer (Debian 12, Ubuntu 24.04)."
    )
    # Early: only facts and the read-only checks ran, before any role.
    assert output["stats"]["host1"]["changed"] == 0
    assert {name for name, _ in ran(output, "host1")} <= {
        "Gathering Facts",
        "Check this host can get the service's Python",
        "Check the backend setting",
        "Read the system Python's version",
        task,
    }
    bed.ssh("host1", NOTHING_INSTALLED)


def test_lb_host_stops_before_installing_anything(bed: Testbed):
    """An lb host has no service env: certbot's fallback, the system python3, is too old."""
    bed.write_inventory(extra_groups=("lb",))
    try:
        rc, output, _ = provision(bed)
    finally:
        bed.write_inventory()
    assert rc != 0, "provisioning a Python 3.9 lb host went through"
    task, message = stopped_at(output, "host1")
    assert task == "Check certbot's interpreter is new enough"
    assert message.startswith(
        f"Python 3.9 (/usr/bin/python3.9) on host1 is older than {CERTBOT_MIN_PYTHON}, which"
        " certbot "
    )
    assert "this host has no service env to borrow a newer one from (an lb host)" in message
    assert output["stats"]["host1"]["changed"] == 0
    assert {name for name, _ in ran(output, "host1")} <= {
        "Gathering Facts",
        "Check this host's Python can run certbot",
        "Resolve certbot's interpreter to its real path",
        "Check certbot's interpreter exists",
        "Read the owner and mode of the interpreter and every directory above it",
        "Check root owns certbot's interpreter and nobody else can write it",
        "Read the version of certbot's interpreter",
        task,
    }
    bed.ssh("host1", NOTHING_INSTALLED)


def test_rootfs_is_cached_by_suite(bed: Testbed):
    """The bullseye rootfs the bed booted sits in the cache under its own key, sha256-checked."""
    tarballs = sorted(CACHE_DIR.glob(f"rootfs-{SUITE}-*.tar.zst"))
    assert tarballs, f"no {SUITE} rootfs in {CACHE_DIR}"
    assert all(t.with_name(t.name + ".sha256").is_file() for t in tarballs)
