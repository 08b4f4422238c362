"""Python-version checks and rendered env commands of python_env and certbot, run by Ansible.

Each case is a host of one run (every host is this machine, connection local): an old Python is
a stand-in script that prints its version (no Python but 3.11 exists here); 3.11 is the real one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
ROLES = ANSIBLE / "roles"
BIN = Path(sys.executable).parent
PYTHON_ENV_DEFAULTS = yaml.safe_load((ROLES / "python_env" / "defaults" / "main.yml").read_text())
CERTBOT_DEFAULTS = yaml.safe_load((ROLES / "certbot" / "defaults" / "main.yml").read_text())
MIN_PYTHON = PYTHON_ENV_DEFAULTS["python_env_min_python"]
CERTBOT_MIN_PYTHON = CERTBOT_DEFAULTS["certbot_min_python"]
OLD = ("3.8", "3.9", "3.10")
VENV_REFUSAL = (
    "system Python {version} on {host} ({python}) is older than {min}, which the service needs"
    " (its pinned packages, ansible/files/requirements-host.txt); set detector_python_backend:"
    " conda (Miniconda brings its own Python {min}) or use a release whose python3 is {min} or"
    " newer (Debian 12, Ubuntu 24.04)."
)
LB_REFUSAL = (
    "Python {version} ({python}) on {host} is older than {min}, which certbot {certbot}'s pinned"
    " env needs (ansible/files/requirements-certbot.txt); this host has no service env to borrow"
    " a newer one from (an lb host): use a release whose python3 is {min} or newer (Debian 12,"
    " Ubuntu 24.04) for it, or set certbot_python to a root-owned Python {min} or newer."
)


def settings() -> dict:
    """Every detector_* default (the detector role's defaults)."""
    for path in (ROLES / "detector" / "defaults" / "main.yml", ANSIBLE / "group_vars" / "all.yml"):
        if path.is_file() and "detector_python_backend:" in path.read_text():
            return yaml.safe_load(path.read_text())
    raise AssertionError("no file defines detector_python_backend; where did the settings go?")


def ansible_playbook(tmp: Path, play: list | Path, hosts: dict[str, dict], *args: str) -> dict:
    """Run a playbook on hosts (each this machine, connection local) with their vars; JSON."""
    playbook = BIN / "ansible-playbook"
    if not playbook.exists():
        pytest.skip(f"ansible-playbook is not installed in {BIN}; run `make setup`")
    common = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    groups: dict[str, dict] = {}
    for host, variables in hosts.items():
        group = variables.pop("group", "detector")
        groups.setdefault(group, {"hosts": {}})["hosts"][host] = variables
    inventory = {"all": {"vars": {**settings(), **common}, "children": groups}}
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory))
    if isinstance(play, list):
        (tmp / "play.yml").write_text(yaml.safe_dump(play))
        play = tmp / "play.yml"
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "ANSIBLE_LOCAL_TEMP": str(tmp / ".ansible-tmp"),
        "ANSIBLE_FILTER_PLUGINS": str(ANSIBLE / "filter_plugins"),
    }
    argv = [str(playbook), "-i", str(tmp / "hosts.yml"), *args, str(play)]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    try:
        return json.loads(result.stdout)
    except ValueError as err:
        raise AssertionError(f"no JSON:\n{result.stdout}\n{result.stderr}") from err


def run_tasks(
    tmp: Path, role: str, tasks_from: str, hosts: dict, show: tuple = (), *args: str
) -> dict:
    """Run tasks files of role (comma-separated) on hosts, then print the variables in show."""
    tasks = [
        {
            "name": f"Run {role} {name}",
            "ansible.builtin.include_role": {"name": str(ROLES / role), "tasks_from": name},
        }
        for name in tasks_from.split(",")
    ]
    tasks += [{"name": f"Show {name}", "ansible.builtin.debug": {"var": name}} for name in show]
    play = [{"name": "Checks", "hosts": "all", "gather_facts": False, "tasks": tasks}]
    return ansible_playbook(tmp, play, hosts, *args)


def host_results(output: dict, host: str) -> list[tuple[str, dict]]:
    """(task name without its role, the host's result) for every task that ran on host."""
    return [
        (task["task"]["name"].split(" : ", 1)[-1], task["hosts"][host])
        for play in output["plays"]
        for task in play["tasks"]
        if host in task["hosts"]
    ]


def failures(output: dict, host: str) -> list[str]:
    """The messages of the tasks that failed on host, whitespace folded."""
    return [
        " ".join(str(result.get("msg", "")).split())
        for _, result in host_results(output, host)
        if result.get("failed")
    ]


def shown(output: dict, host: str, name: str):
    """The value a `Show <name>` debug task printed for host."""
    for task, result in host_results(output, host):
        if task == f"Show {name}":
            return result[name]
    raise AssertionError(f"{name} was not shown on {host}: {failures(output, host)}")


@pytest.fixture
def interpreters() -> Iterator[Path]:
    """A root-owned directory (0700 under /run) for stand-in interpreters."""
    if os.geteuid() != 0:
        pytest.skip("needs root: certbot's check wants a root-owned interpreter path")
    path = Path(tempfile.mkdtemp(prefix="detector-test-python-", dir="/run"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def old_python(directory: Path, version: str) -> str:
    """A stand-in for an old python3 that reports version (no such Python exists here)."""
    path = directory / f"python{version}"
    path.write_text(f"#!/bin/sh\n# stands in for Python {version}\necho {version}\n")
    path.chmod(0o755)
    return str(path)


def real_python() -> str:
    """The system python3 of this machine, if it is 3.11 (Debian 12)."""
    version = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if version != "3.11":
        pytest.skip(f"this machine's /usr/bin/python3 is {version}, the cases want 3.11")
    return "/usr/bin/python3"


def test_python_env_checks_the_system_python_and_renders_its_commands(tmp_path):
    """venv: 3.8-3.10 refused with the real minimum, 3.11 accepted; conda: no system Python."""
    hosts = {
        f"venv{v}": {
            "python_env_backend": "venv",
            "python_env_system_python": old_python(tmp_path, v),
        }
        for v in OLD
    }
    hosts["venv3.11"] = {"python_env_backend": "venv", "python_env_system_python": real_python()}
    hosts["venv-missing"] = {
        "python_env_backend": "venv",
        "python_env_system_python": str(tmp_path / "python3"),
    }
    hosts["conda-on-3.8"] = {  # Ubuntu 20.04: conda brings its own Python
        "python_env_backend": "conda",
        "python_env_system_python": old_python(tmp_path, "3.8"),
        "detector_pip_index_url": "http://10.0.0.1:8080/simple/",
        "detector_pip_find_links": "http://10.0.0.1:8080/",
        "detector_pip_trusted_host": "10.0.0.1",
    }
    show = (
        "python_env_interpreter",
        "_python_env_venv_argv",
        "_python_env_miniconda_argv",
        "_python_env_conda_argv",
        "_python_env_conda_update_argv",
        "_python_env_pip",
        "_python_env_torch_args",
        "_python_env_lock_args",
    )
    output = run_tasks(tmp_path, "python_env", "assert.yml", hosts, show)
    for version in OLD:
        python = tmp_path / f"python{version}"
        assert failures(output, f"venv{version}") == [
            VENV_REFUSAL.format(
                version=version, host=f"venv{version}", python=python, min=MIN_PYTHON
            )
        ]
    (missing,) = failures(output, "venv-missing")
    assert missing.startswith(f"the venv backend builds from {tmp_path}/python3, which did not run")
    assert missing.endswith("(Debian 12, Ubuntu 24.04).")

    conf = settings()
    venv = conf["detector_venv_dir"]
    assert failures(output, "venv3.11") == []
    assert shown(output, "venv3.11", "python_env_interpreter") == "/usr/bin/python3"
    assert shown(output, "venv3.11", "_python_env_venv_argv") == [
        "/usr/bin/python3", "-m", "venv", venv
    ]  # fmt: skip
    assert shown(output, "venv3.11", "_python_env_pip") == f"{venv}/bin/pip"

    assert failures(output, "conda-on-3.8") == []
    root, name = conf["detector_conda_root"], conf["detector_conda_env"]
    installer = "/root/" + conf["detector_miniconda_url"].rsplit("/", 1)[1]
    env_file = f"{root}/detector-environment.yml"
    conda = {key: shown(output, "conda-on-3.8", key) for key in show}
    assert conda["python_env_interpreter"] == f"{root}/envs/{name}/bin/python"
    assert conda["_python_env_miniconda_argv"] == ["bash", installer, "-b", "-p", root]
    assert conda["_python_env_conda_argv"] == [
        f"{root}/bin/conda", "env", "create", "--yes", "--name", name, "--file", env_file
    ]  # fmt: skip
    assert conda["_python_env_conda_update_argv"] == [
        f"{root}/bin/conda", "env", "update", "--prune", "--name", name, "--file", env_file
    ]  # fmt: skip
    assert conda["_python_env_pip"] == f"{root}/envs/{name}/bin/pip"
    sources = ["--find-links", "http://10.0.0.1:8080/", "--trusted-host", "10.0.0.1"]
    torch_index = conf["detector_torch_index_url"]
    assert conda["_python_env_torch_args"] == ["--index-url", torch_index, *sources]
    assert conda["_python_env_lock_args"] == [
        "--index-url",
        "http://10.0.0.1:8080/simple/",
        *sources,
    ]


def test_certbot_interpreter_is_the_service_envs_or_a_new_enough_root_owned_one(
    tmp_path, interpreters
):
    """lb hosts fall back to the system python3 (3.8-3.10 refused); root-owned paths only."""
    hosts = {f"lb{v}": {"certbot_system_python": old_python(interpreters, v)} for v in OLD}
    hosts["lb3.11"] = {"certbot_system_python": real_python()}
    hosts["service-env3.11"] = {
        "python_env_interpreter": real_python(),
        "certbot_system_python": "/nonexistent/python3",  # not used: the service env's wins
    }
    hosts["service-env3.9"] = {"python_env_interpreter": old_python(interpreters, "3.9")}
    writable = Path(tempfile.mkdtemp(prefix="detector-test-python-", dir="/tmp"))
    shutil.copy2(os.path.realpath(real_python()), writable / "python3")
    hosts["writable"] = {"python_env_interpreter": str(writable / "python3")}
    try:
        output = run_tasks(tmp_path, "certbot", "python.yml", hosts, ("_certbot_python_real",))
    finally:
        shutil.rmtree(writable)
    certbot = settings()["detector_certbot_version"]
    for version in OLD:
        python = interpreters / f"python{version}"
        assert failures(output, f"lb{version}") == [
            LB_REFUSAL.format(
                version=version, python=python, host=f"lb{version}", min=CERTBOT_MIN_PYTHON,
                certbot=certbot,
            )
        ]  # fmt: skip
    real = os.path.realpath(real_python())
    assert shown(output, "lb3.11", "_certbot_python_real") == real
    assert shown(output, "service-env3.11", "_certbot_python_real") == real
    (old,) = failures(output, "service-env3.9")
    assert old.startswith(f"Python 3.9 ({interpreters}/python3.9) on service-env3.9 is older than")
    assert "it is the service env's interpreter: set detector_python_backend: conda" in old
    (unsafe,) = failures(output, "writable")
    assert unsafe.startswith(f"certbot runs as root, but its interpreter {writable}/python3")
    assert "sits under /tmp, which is not root-owned or is writable by others" in unsafe


@contextlib.contextmanager
def served(directory: Path):
    """Serve directory over HTTP on 127.0.0.1 (a free port) for the block; yield the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.slow
def test_conda_backend_check_mode_on_a_bare_host(tmp_path):
    """The whole role in check mode with conda (no channel here): every step it would take."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the installer's destination is /root")
    www = tmp_path / "www"
    www.mkdir()
    installer = www / "Miniconda3-stand-in.sh"  # only HEAD-requested in check mode
    installer.write_text("#!/bin/sh\nexit 1\n")
    root, link = tmp_path / "miniconda3", tmp_path / "env"
    with served(www) as url:
        host = {
            "python_env_backend": "conda",
            "python_env_conda_root": str(root),
            "python_env_link": str(link),
            "python_env_miniconda_url": f"{url}/{installer.name}",
            "python_env_miniconda_sha256": hashlib.sha256(installer.read_bytes()).hexdigest(),
            "python_env_conda_env_file": str(ANSIBLE / "files" / "environment.yml"),
            "python_env_requirements_file": str(ANSIBLE / "files" / "requirements-host.txt"),
        }
        output = run_tasks(tmp_path, "python_env", "main.yml", {"bare": host}, (), "--check")
    assert failures(output, "bare") == []
    changed = [name for name, result in host_results(output, "bare") if result.get("changed")]
    assert changed == [
        "Download the pinned Miniconda installer",
        "Install Miniconda without touching any shell profile",
        "Copy the environment file",
        "Create the conda env",
        "Link the env to its stable path",
        "Copy the pinned requirements",
        "Install the CPU build of torch",
        "Install the pinned requirements",
    ]
    assert not root.exists() and not link.is_symlink()
    assert not Path("/root", installer.name).exists()


@pytest.mark.slow
def test_certbot_venv_is_rebuilt_when_its_interpreter_changed(tmp_path):
    """A venv made from another interpreter or version is replaced; a rerun changes nothing."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the task keeps the venv root-owned")
    python = real_python()
    stale = tmp_path / "stale"
    (stale / "bin").mkdir(parents=True)
    (stale / "pyvenv.cfg").write_text("home = /opt/old-python/bin\nversion = 3.9.2\n")
    (stale / "bin" / "python").symlink_to("/opt/old-python/bin/python3.9")
    hosts = {
        "fresh": {"certbot_venv": str(tmp_path / "fresh"), "python_env_interpreter": python},
        "stale": {"certbot_venv": str(stale), "python_env_interpreter": python},
    }
    first = run_tasks(tmp_path, "certbot", "python.yml,venv.yml", json.loads(json.dumps(hosts)))
    real = Path(os.path.realpath(python))
    for host in hosts:
        assert failures(first, host) == []
        venv = tmp_path / host
        assert f"home = {real.parent}\n" in (venv / "pyvenv.cfg").read_text()
        assert os.path.realpath(venv / "bin" / "python") == str(real)
        assert (venv.stat().st_uid, venv.stat().st_mode & 0o777) == (0, 0o755)
    assert first["stats"]["stale"]["changed"] >= 2  # removed, created
    again = run_tasks(tmp_path, "certbot", "python.yml,venv.yml", hosts)
    assert again["stats"]["fresh"]["changed"] == again["stats"]["stale"]["changed"] == 0


@pytest.mark.slow
def test_provision_checks_python_before_any_role(tmp_path, interpreters):
    """The real provision.yml (check mode, not as root): Python 3.9 stops it at its first task."""
    old = old_python(interpreters, "3.9")
    check = ("--check", "-e", "ansible_become=false")
    playbook = ANSIBLE / "provision.yml"
    hosts = {"venv-host": {"python_env_backend": "venv", "python_env_system_python": old}}
    output = ansible_playbook(tmp_path, playbook, hosts, *check)
    venv = [name for name, _ in host_results(output, "venv-host")]
    assert venv[-1] == "Check the system Python is new enough for the venv backend", venv
    assert set(venv) <= {
        "Gathering Facts",
        "Check this host can get the service's Python",
        "Check the backend setting",
        "Read the system Python's version",
        venv[-1],
    }, venv
    assert output["stats"]["venv-host"]["failures"] == 1
    hosts = {"lb-host": {"group": "lb", "certbot_system_python": old}}
    output = ansible_playbook(tmp_path, playbook, hosts, *check)
    lb = [name for name, _ in host_results(output, "lb-host")]
    assert lb[-1] == "Check certbot's interpreter is new enough", lb
    assert set(lb) <= {
        "Gathering Facts",
        "Check this host's Python can run certbot",
        "Resolve certbot's interpreter to its real path",
        "Check certbot's interpreter exists",
        "Read the owner and mode of the interpreter and every directory above it",
        "Check root owns certbot's interpreter and nobody else can write it",
        "Read the version of certbot's interpreter",
        lb[-1],
    }, lb
    assert output["stats"]["lb-host"]["failures"] == 1


def _pins(lock: str) -> dict[str, str]:
    pins = {}
    for line in (ANSIBLE / "files" / lock).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name] = version
    return pins


def _derived_minimum(pins: dict[str, str]) -> str:
    """The oldest 3.x every pin's Requires-Python admits, read from its installed metadata."""
    from importlib import metadata

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    specs = []
    for name, version in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed here; `make setup` installs the pinned set")
        if Version(dist.version) != Version(version):
            pytest.skip(f"{name} {dist.version} installed, {version} pinned: no metadata to read")
        specs.append(SpecifierSet(dist.metadata.get("Requires-Python") or ""))
    for minor in range(6, 20):
        if all(spec.contains(f"3.{minor}.99") for spec in specs):
            return f"3.{minor}"
    raise AssertionError(f"no Python 3 satisfies every pin: {specs}")


def test_minimum_pythons_are_derived_from_the_pins():
    """python_env_min_python and certbot_min_python are the pins' real minimum, not a guess."""
    conf = settings()
    host = _pins("requirements-host.txt")
    host["torch"] = conf["detector_torch_spec"].split("==")[1]
    assert _derived_minimum(host) == MIN_PYTHON
    certbot = _pins("requirements-certbot.txt")
    certbot["certbot-dns-rfc2136"] = conf["detector_certbot_version"]
    assert _derived_minimum(certbot) == CERTBOT_MIN_PYTHON


def test_the_service_env_satisfies_certbot():
    """certbot builds from the service env's interpreter, so its minimum must cover certbot's."""
    from packaging.version import Version

    assert Version(MIN_PYTHON) >= Version(CERTBOT_MIN_PYTHON)
    env = yaml.safe_load((ANSIBLE / "files" / "environment.yml").read_text())
    assert f"python={MIN_PYTHON}" in env["dependencies"]
