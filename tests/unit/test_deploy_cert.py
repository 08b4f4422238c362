"""`fab renew-cert --dry-run` never hides a failed renewal: the rendered units, run for real."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy import commands
from deploy.status import RENEWAL_MARKER

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "ansible" / "roles"
SERVICE = "detector-certbot-renew.service"


@pytest.fixture(scope="module")
def units(tmp_path_factory) -> Path:
    """The timer's renewal unit, its two twins and the state script, rendered by ansible."""
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    if not playbook_bin.exists():
        pytest.skip("ansible-playbook is not installed in the venv; run `make setup`")
    out = tmp_path_factory.mktemp("renew-units")
    template = str(ROLES / "certbot" / "templates" / "renew.service.j2")
    tasks = [
        {
            "name": "Render the state script",
            "ansible.builtin.template": {
                "src": str(ROLES / "certbot" / "templates" / "cert-state.sh.j2"),
                "dest": str(out / "detector-cert-state"),
                "mode": "0755",
            },
        }
    ]
    for unit in (SERVICE, *(commands.renew_unit(SERVICE, f, not f) for f in (True, False))):
        instance = unit.partition("@")[2].removesuffix(".service")
        tasks.append(
            {
                "name": f"Render {unit}",
                "ansible.builtin.template": {"src": template, "dest": str(out / unit)},
                "vars": {"_certbot_renew_flag": commands.RENEW_INSTANCES.get(instance, "")},
            }
        )
    play = [
        {
            "name": "Render the renewal units",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [
                str(ROLES / r / "defaults" / "main.yml") for r in ("detector", "certbot")
            ],
            "vars": {"_certbot_bin": "/opt/certbot/bin/certbot"},
            "tasks": tasks,
        }
    ]
    (out / "render.yml").write_text(yaml.safe_dump(play))
    overrides = {  # extra vars outrank the defaults loaded as vars_files
        "detector_tls_dir": str(out / "tls"),
        "detector_cert_state_dir": str(out / "state"),
        "detector_metrics_textfile_dir": str(out / "textfile"),
        "certbot_state_script": str(out / "detector-cert-state"),
    }
    (out / "overrides.yml").write_text(yaml.safe_dump(overrides))
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(out / ".tmp")}
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    result = subprocess.run(
        [str(playbook_bin), "-i", "localhost,", str(out / "render.yml")]
        + ["-e", f"ansible_python_interpreter={sys.executable}", "-e", f"@{out / 'overrides.yml'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _after_success(units: Path, unit: str) -> None:
    """Run what systemd runs after the unit's ExecStart= succeeded: its ExecStartPost= lines."""
    for line in (units / unit).read_text().splitlines():
        if line.startswith("ExecStartPost="):
            subprocess.run(shlex.split(line.split("=", 1)[1]), check=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="the state script installs files owned by root")
def test_a_successful_dry_run_keeps_a_recorded_failure_and_a_real_renewal_clears_it(units):
    marker = units / "state" / RENEWAL_MARKER
    metric = units / "textfile" / "detector_certificate.prom"
    state = [str(units / "detector-cert-state")]
    subprocess.run([*state, "failed", SERVICE], check=True, capture_output=True, timeout=60)
    assert marker.read_text().startswith(f"unit={SERVICE}\n")

    dry_run = commands.renew_unit(SERVICE, False, True)
    assert "--dry-run" in (units / dry_run).read_text()
    _after_success(units, dry_run)  # `fab renew-cert --dry-run` passed
    assert marker.read_text().startswith(f"unit={SERVICE}\n")  # still loud
    assert "detector_certificate_renewal_failed{" in metric.read_text()
    assert metric.read_text().rstrip().endswith(" 1")

    for real in (commands.renew_unit(SERVICE, True, False), SERVICE):  # forced, the timer's
        subprocess.run([*state, "failed", SERVICE], check=True, capture_output=True, timeout=60)
        _after_success(units, real)
        assert not marker.exists(), real
        assert metric.read_text().rstrip().endswith(" 0")
