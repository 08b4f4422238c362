"""The root switch helper (ansible deploy_access files/detector-activate) on a scratch tree.

nginx and systemctl are replaced by tiny scripts that log their argv (the real ones run in
tests/e2e/test_attacker.py on a provisioned host); everything else is the helper's own code.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "ansible" / "roles" / "deploy_access" / "files" / "detector-activate"


def _module():
    loader = importlib.machinery.SourceFileLoader("detector_activate", str(HELPER))
    spec = importlib.util.spec_from_loader("detector_activate", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


act = _module()


def _tool(path: Path, log: Path, rc: int = 0) -> str:
    path.write_text(f'#!/bin/sh\necho "$(basename $0) $*" >> {log}\nexit {rc}\n')
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def tree(tmp_path: Path) -> dict:
    """A host's layout under tmp_path and the helper's config for it (kind detector)."""
    for d in ("etc/nginx", "var/lib/detector", "opt/detector/colors/blue/bin", "bin"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "opt/detector/colors/blue/bin/python").write_text("")
    log = tmp_path / "calls.log"
    cfg = {
        "kind": "detector",
        "record": str(tmp_path / "var/lib/detector/live-color"),
        "upstream_conf": str(tmp_path / "etc/nginx/detector-upstream.conf"),
        "upstream_name": "detector",
        "nginx": _tool(tmp_path / "bin/nginx", log),
        "systemctl": _tool(tmp_path / "bin/systemctl", log),
        "service": "detector",
        "colors": ["blue", "green"],
        "socket_dir": "/run/detector",
        "colors_dir": str(tmp_path / "opt/detector/colors"),
        "current_link": str(tmp_path / "opt/detector/current"),
        "servers": [],
        "port": 8080,
        "max_fails": 1,
        "fail_timeout_s": 10,
        "keepalive": 16,
    }
    path = tmp_path / "activate.json"
    path.write_text(json.dumps(cfg))
    path.chmod(0o644)
    return {"cfg": cfg, "path": str(path), "log": log, "root": tmp_path}


def _run(tree: dict, *args: str) -> str:
    return act.main(list(args), config=tree["path"])


@pytest.mark.parametrize(
    "args",
    [
        ["/etc/shadow"],
        ["blue;", "include /tmp/x"],
        ["blue", "extra"],
        ["server unix:/tmp/evil.sock"],
        ["down", "blue"],
        [],
    ],
)
def test_only_a_configured_color_is_accepted(tree: dict, args: list[str]):
    with pytest.raises(act.Refused, match="usage: detector-activate COLOR"):
        _run(tree, *args)
    assert not Path(tree["cfg"]["upstream_conf"]).exists()


def test_activate_writes_record_include_current_then_reloads(tree: dict):
    assert _run(tree, "green") == "changed: green"
    cfg = tree["cfg"]
    assert Path(cfg["record"]).read_text() == "green\n"
    assert Path(cfg["upstream_conf"]).read_text() == (
        "upstream detector {\n    server unix:/run/detector/green.sock;\n}\n"
    )
    assert os.readlink(cfg["current_link"]) == f"{cfg['colors_dir']}/green"
    assert oct(Path(cfg["upstream_conf"]).stat().st_mode & 0o777) == "0o644"
    calls = tree["log"].read_text().splitlines()
    assert calls == [
        "nginx -t -q",
        "systemctl --quiet is-active nginx.service",
        "systemctl --no-pager reload nginx.service",
    ]
    assert _run(tree, "green") == "unchanged: green"  # no second reload
    assert len(tree["log"].read_text().splitlines()) == 3


def test_a_rejected_include_is_rolled_back_with_the_record(tree: dict):
    _run(tree, "blue")
    cfg = tree["cfg"]
    before = Path(cfg["upstream_conf"]).read_text()
    _tool(Path(cfg["nginx"]), tree["log"], rc=1)
    with pytest.raises(act.Refused, match="nginx -t rejected"):
        _run(tree, "green")
    assert Path(cfg["upstream_conf"]).read_text() == before
    assert Path(cfg["record"]).read_text() == "blue\n"


def test_an_interrupted_switch_is_rederived_from_the_record(tree: dict):
    """Record says green (the helper's first write), include and `current` still say blue."""
    _run(tree, "blue")
    cfg = tree["cfg"]
    Path(cfg["record"]).write_text("green\n")
    assert _run(tree, "--sync") == "changed: green"
    assert "green.sock" in Path(cfg["upstream_conf"]).read_text()
    assert os.readlink(cfg["current_link"]).endswith("/colors/green")
    tree["log"].write_text("")
    assert _run(tree, "--boot") == "unchanged: green"
    assert tree["log"].read_text().splitlines() == [
        "systemctl --no-pager --no-block start detector@green.service"
    ]


def test_a_host_deployed_before_the_record_adopts_its_include(tree: dict):
    cfg = tree["cfg"]
    Path(cfg["upstream_conf"]).write_text(act.detector_upstream(cfg, "blue"))
    assert _run(tree, "--sync") == "changed: blue"
    assert Path(cfg["record"]).read_text() == "blue\n"


def test_a_fresh_host_has_no_live_color_and_starts_nothing(tree: dict):
    assert _run(tree, "--boot") == "changed: no live color yet"
    assert "blue.sock" in Path(tree["cfg"]["upstream_conf"]).read_text()
    assert not Path(tree["cfg"]["current_link"]).exists()
    assert not tree["log"].exists()  # neither nginx nor systemctl was called


def test_a_config_or_directory_others_can_write_is_refused(tree: dict):
    Path(tree["path"]).chmod(0o666)
    with pytest.raises(act.Refused, match="not group/world-writable"):
        _run(tree, "blue")
    Path(tree["path"]).chmod(0o644)
    (tree["root"] / "opt/detector").chmod(0o777)  # a deploy-writable app root
    with pytest.raises(act.Refused, match="opt/detector must be owned"):
        _run(tree, "blue")


def test_lb_drains_only_configured_detectors(tree: dict):
    cfg = {
        **tree["cfg"],
        "kind": "lb",
        "record": str(tree["root"] / "var/lib/detector/lb-drained"),
        "servers": [["d1", "10.0.0.2"], ["d2", "10.0.0.3"], ["d3", "10.0.0.4"]],
    }
    Path(tree["path"]).write_text(json.dumps(cfg))
    with pytest.raises(act.Refused, match="down\\|up NAME"):
        _run(tree, "down", "d9")
    with pytest.raises(act.Refused, match="down\\|up NAME"):
        _run(tree, "green")
    assert _run(tree, "down", "d2") == "changed: down: d2"
    assert Path(cfg["upstream_conf"]).read_text().splitlines() == [
        "upstream detector {",
        "    least_conn;",
        "    server 10.0.0.2:8080 max_fails=1 fail_timeout=10s;",
        "    server 10.0.0.3:8080 max_fails=1 fail_timeout=10s down;",
        "    server 10.0.0.4:8080 max_fails=1 fail_timeout=10s;",
        "    keepalive 16;",
        "}",
    ]
    assert json.loads(Path(cfg["record"]).read_text()) == ["d2"]
    assert _run(tree, "up", "d1") == "unchanged: down: d2"
    assert _run(tree, "up", "d2") == "changed: down: none"
    assert " down;" not in Path(cfg["upstream_conf"]).read_text()


def test_the_helper_runs_isolated_and_as_a_script(tree: dict):
    first = HELPER.read_text().splitlines()[0]
    assert first == "#!/usr/bin/python3 -I"  # root's interpreter; no PYTHON* env, no user site
    proc = subprocess.run(
        [sys.executable, "-I", str(HELPER), "../../etc/shadow"], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "detector-activate:" in proc.stderr
