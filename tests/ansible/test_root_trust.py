"""Root never runs an Ansible module as the deploy or service user, nor reads their files' bytes."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


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
