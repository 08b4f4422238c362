"""Static checks of ansible/: syntax, lint (production profile), each role's interface."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.inventory import REQUIRED
from deploy.inventory import read

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
ROLES = sorted(p for p in (ANSIBLE / "roles").iterdir() if p.is_dir())
BIN = Path(sys.executable).parent
EXAMPLE_INVENTORY = ANSIBLE / "inventories" / "example"
SETTINGS = ANSIBLE / "roles" / "detector" / "defaults" / "main.yml"  # every detector_* default


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
def test_role_variables_are_prefixed_and_derived_from_the_settings(role: Path):
    defaults = _load(role / "defaults" / "main.yml") or {}
    settings = _load(SETTINGS)
    for name in defaults:
        assert name.startswith(role.name + "_"), name
    if role.name == "detector":
        return  # its defaults ARE the settings
    # A role default that is a plain literal must not repeat a detector_* setting's value.
    literals = {str(v) for v in settings.values() if isinstance(v, (str, int)) and str(v)}
    repeated = [
        name
        for name, value in defaults.items()
        if isinstance(value, str) and "{{" not in value and value in literals and len(value) > 3
    ]
    assert not repeated, f"{role.name} repeats detector_* literals in {repeated}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_tasks_main_is_a_table_of_contents(role: Path):
    tasks = _load(role / "tasks" / "main.yml")
    modules = set()
    for task in tasks:
        modules |= {k for k in task if k.startswith("ansible.builtin.")}
    assert modules <= {"ansible.builtin.import_tasks", "ansible.builtin.include_tasks"}, modules
    assert (role / "meta" / "main.yml").is_file()


def test_detector_defaults_are_the_single_source_of_names():
    settings = _load(SETTINGS)
    assert all(name.startswith("detector_") for name in settings)
    assert not (ANSIBLE / "group_vars").exists()  # playbook group_vars would outrank inventories
    # Fabric reads these as literals (it renders no Jinja).
    for name in (n for n in REQUIRED if n.startswith("detector_")):
        assert "{{" not in str(settings[name]), name


def test_example_inventory_overrides_the_defaults():
    """fab's view of the example inventory: its values over the detector role's defaults."""
    _tool("ansible-inventory")
    host = read(EXAMPLE_INVENTORY)["_meta"]["hostvars"]["detector-vm"]
    assert host["detector_acme_staging"] is True  # the defaults say false
    assert host["detector_dns_records"] is True
    assert host["detector_app_root"] == "/opt/detector"
