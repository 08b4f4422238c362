"""The sizing rule reaches nginx's upstream bound: provision.yml sizes before the helper config."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import yaml
from detector import cors

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


def _helper():
    path = ROLES / "deploy_access" / "files" / "detector-activate"
    loader = importlib.machinery.SourceFileLoader("detector_activate_bounds", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_lb_upstream_bounds_each_detector_at_its_own_max_conns():
    cfg = {
        "upstream_name": "detector",
        "port": 8080,
        "max_fails": 1,
        "fail_timeout_s": 10,
        "keepalive": 16,
        "servers": [["d1", "10.0.0.2", 4], ["d2", "10.0.0.3", 6]],
    }
    assert _helper().lb_upstream(cfg, ["d2"]).splitlines() == [
        "upstream detector {",
        "    zone detector_upstream 64k;",  # the bound and least_conn over all nginx workers
        "    least_conn;",
        "    server 10.0.0.2:8080 max_fails=1 fail_timeout=10s max_conns=4;",
        "    server 10.0.0.3:8080 max_fails=1 fail_timeout=10s max_conns=6 down;",
        "    keepalive 16;",
        "}",
    ]
    # A config written before the bound existed renders as before (no zone, no max_conns).
    cfg["servers"] = [["d1", "10.0.0.2"]]
    assert "max_conns" not in _helper().lb_upstream(cfg, []) and "zone" not in (
        _helper().lb_upstream(cfg, [])
    )


def test_the_lb_helper_config_takes_each_detectors_bound_from_its_sizing():
    template = (ROLES / "deploy_access" / "templates" / "detector-activate.json.j2").read_text()
    assert "hostvars[host]._detector_sizing" in template
    assert "deploy_access_lb_max_conns" in template


def test_nginx_exposes_the_headers_the_service_exposes():
    defaults = yaml.safe_load((ROLES / "nginx" / "defaults" / "main.yml").read_text())
    assert defaults["nginx_cors_expose_headers"] == cors.EXPOSE_HEADERS
    assert defaults["nginx_cors_origins"] == "{{ detector_cors_origins }}"  # one allowlist
