"""Static checks of ansible/: syntax, lint (production profile), each role's interface."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.inventory import REQUIRED

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
ROLES = sorted(p for p in (ANSIBLE / "roles").iterdir() if p.is_dir())
BIN = Path(sys.executable).parent
EXAMPLE_INVENTORY = ANSIBLE / "inventories" / "example"


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN}; run `make setup`")
    return str(path)


def _env() -> dict:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["ANSIBLE_LOCAL_TEMP"] = env["ANSIBLE_REMOTE_TEMP"] = "/tmp/.ansible-tests"
    return env


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def test_playbook_syntax_check_passes():
    result = subprocess.run(
        [_tool("ansible-playbook"), "-i", str(EXAMPLE_INVENTORY), "--syntax-check"]
        + [str(ANSIBLE / "provision.yml")],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_ansible_lint_production_profile_passes():
    result = subprocess.run(
        [_tool("ansible-lint"), "--offline", "--profile", "production", "--format", "pep8"]
        + [str(ANSIBLE)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_document_every_default(role: Path):
    defaults = _load(role / "defaults" / "main.yml") or {}
    options = _load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, value in defaults.items():
        spec = options[name]
        assert spec["default"] == value, name
        assert spec.get("description"), f"{role.name}: {name} has no description"
        assert spec.get("type") in {"str", "int", "bool", "list", "dict", "float", "path"}, name


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_variables_are_prefixed_and_derived_from_group_vars(role: Path):
    defaults = _load(role / "defaults" / "main.yml") or {}
    group_vars = _load(ANSIBLE / "group_vars" / "all.yml")
    for name in defaults:
        assert name.startswith(role.name + "_"), name
    # A role default that is a plain literal must not repeat a group_vars value.
    literals = {str(v) for v in group_vars.values() if isinstance(v, (str, int)) and str(v)}
    repeated = [
        name
        for name, value in defaults.items()
        if isinstance(value, str) and "{{" not in value and value in literals and len(value) > 3
    ]
    assert not repeated, f"{role.name} repeats group_vars literals in {repeated}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_tasks_main_is_a_table_of_contents(role: Path):
    tasks = _load(role / "tasks" / "main.yml")
    modules = set()
    for task in tasks:
        modules |= {k for k in task if k.startswith("ansible.builtin.")}
    assert modules <= {"ansible.builtin.import_tasks", "ansible.builtin.include_tasks"}, modules
    assert (role / "meta" / "main.yml").is_file()


def test_group_vars_are_the_single_source_of_names():
    group_vars = _load(ANSIBLE / "group_vars" / "all.yml")
    assert all(name.startswith("detector_") for name in group_vars)
    # Fabric reads these with ansible-inventory, which does not render Jinja: they are literals.
    for name in (n for n in REQUIRED if n.startswith("detector_")):
        assert "{{" not in str(group_vars[name]), name


def test_example_inventory_overrides_the_defaults():
    """Inventory values rank above ansible/group_vars/all.yml only from group_vars/<group>/."""
    result = subprocess.run(
        [_tool("ansible-inventory"), "-i", str(EXAMPLE_INVENTORY), "--playbook-dir", str(ANSIBLE)]
        + ["--host", "detector-vm"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    host = yaml.safe_load(result.stdout)
    assert host["detector_acme_staging"] is True  # all.yml says false
    assert host["detector_dns_records"] is True
    assert host["detector_app_root"] == "/opt/detector"
