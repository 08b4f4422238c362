"""Render certbot role templates with the real ansible-playbook into a temp tree, for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ROLES = REPO / "ansible" / "roles"


def render(out: Path, name: str, tasks: list[dict], **overrides: str) -> Path:
    """Run `tasks` on localhost with the detector and certbot role defaults, state paths in out.

    The certificate state (tls, state, textfile dirs and the state script) points into `out`;
    `overrides` add extra vars (which outrank the defaults loaded as vars_files). Skips when
    ansible-playbook is not installed. Returns out.
    """
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    if not playbook_bin.exists():
        pytest.skip("ansible-playbook is not installed in the venv; run `make setup`")
    play = [
        {
            "name": name,
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
    extra = {
        "detector_tls_dir": str(out / "tls"),
        "detector_cert_state_dir": str(out / "state"),
        "detector_metrics_textfile_dir": str(out / "textfile"),
        "certbot_state_script": str(out / "detector-cert-state"),
        **overrides,
    }
    (out / "overrides.yml").write_text(yaml.safe_dump(extra))
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


def template_task(src: str, dest: Path, mode: str | None = None, **variables) -> dict:
    """An ansible.builtin.template task rendering the certbot role's `src` to `dest`."""
    args = {"src": str(ROLES / "certbot" / "templates" / src), "dest": str(dest)}
    if mode:
        args["mode"] = mode
    task = {"name": f"Render {dest.name}", "ansible.builtin.template": args}
    if variables:
        task["vars"] = variables
    return task
