"""The sizing rule reaches nginx's upstream bound: provision.yml sizes before the helper config."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "ansible" / "roles"


def test_provisioning_sizes_the_service_before_the_helper_config_is_rendered():
    detector_play = yaml.safe_load((REPO / "ansible" / "provision.yml").read_text())[0]
    sizing = [
        task
        for task in detector_play["pre_tasks"]
        if task.get("ansible.builtin.include_role", {})
        == {"name": "detector", "tasks_from": "sizing"}
    ]
    assert sizing, "provision.yml must size the service (detector tasks_from sizing) in pre_tasks"
    roles = [role["role"] for role in detector_play["roles"]]
    assert "deploy_access" in roles  # rendered in roles, after every pre_task


def test_the_helper_config_takes_the_bound_from_the_sizing_fact():
    defaults = yaml.safe_load((ROLES / "deploy_access" / "defaults" / "main.yml").read_text())
    assert "_detector_sizing.max_conns" in defaults["deploy_access_upstream_max_conns"]
    template = (ROLES / "deploy_access" / "templates" / "detector-activate.json.j2").read_text()
    assert "'max_conns': deploy_access_upstream_max_conns | int" in template
