"""fabfile.py: `fab --list` shows every task with a one-line help; every argument has help."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import fabfile

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["deploy", "logs", "renew-cert", "restart", "rollback", "status", "trust-host", "unlock"]


def _fab(*args: str) -> str:
    fab = Path(sys.executable).with_name("fab")
    proc = subprocess.run(
        [str(fab), *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return proc.stdout


def test_fab_list_shows_every_task_with_a_one_line_summary():
    listed = {}
    for line in _fab("--list").splitlines():
        parts = line.split(None, 1)
        if line.startswith("  ") and len(parts) == 2:
            listed[parts[0]] = parts[1]
    assert sorted(listed) == TASKS
    for name, summary in listed.items():
        assert 10 < len(summary) <= 60, (name, summary)


def test_every_task_argument_has_help():
    tasks = {name: getattr(fabfile, name.replace("-", "_")) for name in TASKS}
    for name, task in tasks.items():
        params = list(inspect.signature(task.body).parameters)[1:]
        assert sorted(task.help) == sorted(params), name


def test_task_help_names_the_lock_and_the_undo():
    text = _fab("--help", "deploy")
    assert "deploy lock" in text
    assert "fab rollback" in text
    assert "--allow-dirty" in text and "--inventory" in text and "--ref" in text
