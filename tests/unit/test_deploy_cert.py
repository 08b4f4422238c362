"""`fab renew-cert --dry-run` never hides a failed renewal: the rendered units, run for real."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from deploy import commands
from deploy.status import RENEWAL_MARKER
from tests.certbot_render import render
from tests.certbot_render import template_task

SERVICE = "detector-certbot-renew.service"


@pytest.fixture(scope="module")
def units(tmp_path_factory) -> Path:
    """The timer's renewal unit, its two twins and the state script, rendered by ansible."""
    out = tmp_path_factory.mktemp("renew-units")
    tasks = [template_task("cert-state.sh.j2", out / "detector-cert-state", "0755")]
    for unit in (SERVICE, *(commands.renew_unit(SERVICE, f, not f) for f in (True, False))):
        instance = unit.partition("@")[2].removesuffix(".service")
        flag = commands.RENEW_INSTANCES.get(instance, "")
        tasks.append(template_task("renew.service.j2", out / unit, _certbot_renew_flag=flag))
    return render(out, "Render the renewal units", tasks)


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
