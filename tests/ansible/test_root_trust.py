"""Root never runs an Ansible module as the deploy or service user, nor reads their files' bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "ansible" / "roles"
BIN = Path(sys.executable).parent


def _all_tasks() -> list[tuple[str, dict]]:
    """Every task of every role and playbook (blocks flattened), with its file."""
    out = []
    for path in sorted((REPO / "ansible").rglob("*.yml")):
        if "inventories" in path.parts or "meta" in path.parts or "defaults" in path.parts:
            continue
        todo = yaml.safe_load(path.read_text()) or []
        todo = [t for t in todo if isinstance(t, dict)] if isinstance(todo, list) else []
        while todo:
            task = todo.pop(0)
            out.append((str(path.relative_to(REPO)), task))
            for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks"):
                todo += [t for t in task.get(key) or [] if isinstance(t, dict)]
    return out


def test_no_ansible_module_runs_as_the_deploy_or_service_user():
    """A module run as another user (become_user) is that user's Python: it loads the user's
    ~/.local usercustomize (deploy-writable homes: /home/deploy, the service's shared/), and
    the deploy user can rewrite a process of its own uid; its result, facts included, then
    steers root's later tasks (a fact deploy_access_helper=/its/script is run as root). So
    modules stay root and only a plain command drops to the user, through runuser."""
    tasks = _all_tasks()
    assert len(tasks) > 100
    as_user = [(path, t.get("name")) for path, t in tasks if "become_user" in t]
    assert as_user == []
    for path, task in tasks:
        env = {str(k).upper() for k in (task.get("environment") or {})}
        # HOME, PYTHON* or a user base in root's module environment: its Python loads from there
        assert not env & {"HOME", "PYTHONPATH", "PYTHONUSERBASE", "PYTHONSTARTUP"}, (path, task)
    dropped = [
        (path, t["name"])
        for path, t in tasks
        if (t.get("ansible.builtin.command") or {}).get("argv", [None])[0] == "/usr/sbin/runuser"
    ]
    assert (
        "ansible/roles/detector/tasks/prepare.yml",
        "Prepare the OpenVINO models of the configured model",
    ) in dropped
    assert {name for path, name in dropped if path.endswith("roll.yml")} == {
        "Take the deploy lock",
        "Read who holds the deploy lock",
        "Point the idle color at the live color's release",
        "Release the deploy lock",
    }


def test_root_never_reads_the_content_of_a_file_in_the_deploy_users_tree():
    """stat as root on the release: no checksum (a FIFO hangs root), no `file` on its bytes;
    no slurp of anything under the application root (the lock's details may link /etc/shadow)."""
    for path, task in _all_tasks():
        stat = task.get("ansible.builtin.stat")
        if stat and "detector_app_root" in str(stat.get("path")):
            assert stat.get("get_checksum") is False and stat.get("get_mime") is False, path
            assert stat.get("get_attributes") is False, path
        slurp = task.get("ansible.builtin.slurp")
        if slurp:
            src = str(slurp.get("src"))
            assert "detector_app_root" not in src and "_lock" not in src, (path, src)
            assert "shared_dir" not in src, (path, src)


def _env_check(tmp_path: Path, prefix: Path) -> subprocess.CompletedProcess:
    """The python_env role's ownership check of prefix, run by real Ansible here (as root)."""
    tasks = yaml.safe_load((ROLES / "python_env" / "tasks" / "packages.yml").read_text())
    names = (
        "Find what in or above the env someone other than root owns or can write",
        "Check only root can change the env root runs",
    )
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"_python_env_prefix": str(prefix)},
            "tasks": [t for t in tasks if t["name"] in names],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    env["ANSIBLE_LOCAL_TEMP"] = str(tmp_path / ".tmp")
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local"]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}", str(tmp_path / "play.yml")]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(os.geteuid() != 0, reason="chowns files to another user")
def test_root_refuses_to_run_an_env_someone_else_could_have_changed(tmp_path: Path):
    """A venv under a directory the deploy user owns (the layout before issue 13), or holding a
    file of another user, stops provisioning before root runs its python."""
    top = tmp_path / "opt" / "detector"
    prefix = top / "venv"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").write_text("#!/bin/sh\n")
    for path in (tmp_path / "opt", top, prefix, prefix / "bin"):
        path.chmod(0o755)
    ok = _env_check(tmp_path, prefix)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    os.chown(top, 65534, 65534)  # the old layout: /opt/detector the deploy user's
    refused = _env_check(tmp_path, prefix)
    assert refused.returncode != 0
    assert f"{top} is owned by a user other than root" in refused.stdout, refused.stdout
    os.chown(top, 0, 0)
    os.chown(prefix / "bin" / "python", 65534, 65534)  # a swapped interpreter
    refused = _env_check(tmp_path, prefix)
    assert refused.returncode != 0 and str(prefix / "bin" / "python") in refused.stdout
    os.chown(prefix / "bin" / "python", 0, 0)
    (prefix / "bin").chmod(0o777)
    assert _env_check(tmp_path, prefix).returncode != 0
