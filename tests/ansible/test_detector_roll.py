"""The detector role rolls a changed config like `fab restart`, under fab's own deploy lock."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from deploy import lock

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "detector"


def tasks(name: str) -> list[dict]:
    """Every task of a task file, blocks flattened (rescue and always included)."""
    out, todo = [], list(yaml.safe_load((ROLE / "tasks" / name).read_text()))
    while todo:
        task = todo.pop(0)
        out.append(task)
        for key in ("block", "rescue", "always"):
            todo += task.get(key, [])
    return out


def test_no_handler_or_task_restarts_both_colors_at_once():
    assert yaml.safe_load((ROLE / "handlers" / "main.yml").read_text()) == []
    for path in (ROLE / "tasks").glob("*.yml"):
        text = path.read_text()
        assert "try-restart" not in text and "notify:" not in text, path.name


def test_the_roll_takes_and_frees_fabs_lock_in_fabs_format():
    roll = tasks("roll.yml")
    (outer,) = [
        t for t in roll if t.get("name") == "Roll the colors onto the changed configuration"
    ]
    lock_dir = outer["vars"]["_detector_roll_lock"]
    assert lock_dir.endswith("/deploy.lock")  # fab: Host.lock_dir = <shared>/deploy.lock
    by_name = {t["name"]: t for t in roll}
    # root's module starts the shell as the deploy user (never a module run as that user)
    as_deploy = ["/usr/sbin/runuser", "-u", "{{ detector_deploy_user }}", "--"]
    argv = by_name["Take the deploy lock"]["ansible.builtin.command"]["argv"]
    assert argv[:4] == as_deploy
    take = argv[4:]
    assert take[2] == lock.TAKE_SH  # the same all-or-nothing shell as fab's
    assert lock.take_command("L", "D") == f"sh -c {shlex.quote(take[2])} sh L D"
    assert by_name["Take the deploy lock"]["failed_when"] == (
        "_detector_roll_lock_taken.rc not in [0, 1]"  # 1 = held; 2 = details not written
    )
    details = lock.describe(take[5])
    assert set(details) == {"holder", "since", "release", "message"}
    argv = by_name["Release the deploy lock"]["ansible.builtin.command"]["argv"]
    assert argv[:4] == as_deploy
    free = argv[4:]
    assert free[2] == lock.FREE_SH
    assert lock.free_command("L") == f"sh -c {shlex.quote(free[2])} sh L"


def test_the_roll_switches_through_the_root_helper_and_stops_the_old_color_last():
    names = [t["name"] for t in tasks("roll.yml")]
    order = [
        "Take the deploy lock",
        "Start the idle color with the new configuration",
        "Wait until the idle color answers /readyz on its socket",
        "Switch nginx to the idle color (root-owned helper)",
        "Stop the color that served the old configuration",
        "Release the deploy lock",
    ]
    assert [n for n in names if n in order] == order
    switch = next(t for t in tasks("roll.yml") if t["name"] == order[3])
    assert switch["ansible.builtin.command"]["argv"] == [
        "{{ deploy_access_helper }}",
        "{{ _detector_roll_idle }}",
    ]
