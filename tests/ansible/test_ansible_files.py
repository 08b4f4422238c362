"""Files provisioning ships: pinned requirements, conda env, weights manifest, templates."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
FILES = ANSIBLE / "files"
GROUP_VARS = yaml.safe_load((ANSIBLE / "roles" / "detector" / "defaults" / "main.yml").read_text())
HOST_PYTHON = {**default_environment(), "python_version": "3.11", "extra": ""}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(HOST_PYTHON)]


def test_host_requirements_pin_every_runtime_dependency():
    pins = _pins(FILES / "requirements-host.txt")
    torch = Requirement(GROUP_VARS["detector_torch_spec"])
    for req in _runtime_requirements():
        name = canonicalize_name(req.name)
        if name == "torch":
            assert torch.specifier.contains("2.13.0+cpu") or "+cpu" in str(torch.specifier)
            assert req.specifier.contains(next(iter(torch.specifier)).version), req
            continue
        assert name in pins, f"{name} (pyproject) is not pinned in requirements-host.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


@pytest.mark.parametrize("lock", ["requirements-host.txt", "requirements-certbot.txt"])
def test_locks_are_closed_under_dependencies(lock: str):
    """Every dependency of a pinned package is pinned too (read from installed metadata)."""
    pins = _pins(FILES / lock)
    if lock == "requirements-host.txt":
        pins["torch"] = next(iter(Requirement(GROUP_VARS["detector_torch_spec"]).specifier)).version
    for name, version in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed here; `make setup` installs the pinned set")
        if dist.version != version:
            pytest.skip(f"{name} {dist.version} installed, {version} pinned: cannot read its deps")
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate(HOST_PYTHON):
                continue
            dep = canonicalize_name(req.name)
            assert dep in pins, f"{name} needs {dep}, which {lock} does not pin"
            assert req.specifier.contains(pins[dep], prereleases=True), (name, raw, pins[dep])


def test_conda_environment_equals_the_pinned_requirements():
    env = yaml.safe_load((FILES / "environment.yml").read_text())
    assert env["name"] == GROUP_VARS["detector_conda_env"]
    conda_deps = [d for d in env["dependencies"] if isinstance(d, str)]
    pip_deps = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in conda_deps and "pip" in conda_deps
    assert not any(d.startswith(("pytorch", "torch")) for d in conda_deps)
    as_pins = dict(line.split("==") for line in pip_deps)
    assert {canonicalize_name(k): v for k, v in as_pins.items()} == _pins(
        FILES / "requirements-host.txt"
    )
    assert pip_deps == sorted(pip_deps)


def test_miniconda_installer_and_torch_are_pinned():
    url = GROUP_VARS["detector_miniconda_url"]
    assert url.startswith("https://repo.anaconda.com/miniconda/Miniconda3-py311_")
    assert re.fullmatch(r"[0-9a-f]{64}", GROUP_VARS["detector_miniconda_sha256"])
    assert GROUP_VARS["detector_torch_spec"].endswith("+cpu")
    assert GROUP_VARS["detector_torch_index_url"] == "https://download.pytorch.org/whl/cpu"
    # make setup reads the same two settings: tests/unit/test_setup.py


def _filters():
    path = ANSIBLE / "filter_plugins" / "manifest.py"
    spec = importlib.util.spec_from_file_location("manifest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_filter_reads_the_service_manifest():
    filters = _filters()
    manifest = filters.from_toml((REPO / "weights" / "manifest.toml").read_text())
    for model in (GROUP_VARS["detector_model"], "yolov3-tiny"):
        entry = filters.weights_entry(manifest, model)
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        assert entry["urls"] and entry["file"]
    with pytest.raises(ValueError, match="yolov9"):
        filters.weights_entry(manifest, "yolov9")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """detector.toml, the unit, the nginx site and sudoers rendered by ansible from the defaults."""
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    if not playbook_bin.exists():
        pytest.skip("ansible-playbook is not installed in the venv; run `make setup`")
    out = tmp_path_factory.mktemp("rendered")
    roles = ANSIBLE / "roles"
    templates = {
        "detector/templates/detector.toml.j2": "detector.toml",
        "detector/templates/detector@.service.j2": "detector@blue.service",
        "nginx/templates/detector.conf.j2": "detector.conf",
        "nginx/templates/detector-errors.conf.j2": "detector-errors.conf",
        "deploy_access/templates/sudoers.j2": "sudoers",
        "certbot/templates/renew.service.j2": "renew.service",
    }
    play = [
        {
            "name": "Render templates",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [
                str(roles / r / "defaults" / "main.yml") for r in ("detector", "nginx", "certbot")
            ]
            + [str(roles / "deploy_access" / "defaults" / "main.yml")],
            "vars": {
                "_detector_sizing": {  # what detector/sizing.py prints on the host
                    "workers": 1,
                    "threads": 3,
                    "torch_threads": 2,
                    "worker_memory_mb": 900,
                    "memory_max_mb": 3000,
                    "memory_high_mb": 2625,
                    "max_inflight": 2,
                    "rate_per_s": 20,
                },
                "_certbot_bin": "/opt/certbot/bin/certbot",
                "ansible_processor_vcpus": 2,
            },
            "tasks": [
                {
                    "name": f"Render {dest}",
                    "ansible.builtin.template": {"src": str(roles / src), "dest": str(out / dest)},
                }
                for src, dest in templates.items()
            ],
        }
    ]
    (out / "render.yml").write_text(yaml.safe_dump(play))
    env = {
        **os.environ,
        "ANSIBLE_LOCAL_TEMP": str(out / ".tmp"),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
    }
    result = subprocess.run(
        [str(playbook_bin), "-i", "localhost,", str(out / "render.yml")]
        + ["-e", f"ansible_python_interpreter={sys.executable}"]
        + ["-e", "detector_acme_ca_bundle=/tmp/pebble-ca.pem"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_rendered_config_is_accepted_by_the_service(rendered: Path):
    from detector import config

    loaded = config.load(rendered / "detector.toml", environ={})
    assert loaded.model == GROUP_VARS["detector_model"]
    assert loaded.max_upload_bytes == GROUP_VARS["detector_max_upload_bytes"]
    assert loaded.weights_dir == GROUP_VARS["detector_weights_dir"]
    assert loaded.workers == 1 and loaded.threads == 2
    assert loaded.worker_timeout_s == GROUP_VARS["detector_request_timeout_s"]
    assert loaded.graceful_timeout_s == GROUP_VARS["detector_graceful_timeout_s"]
    assert loaded.max_requests == GROUP_VARS["detector_max_requests"]
    assert loaded.max_requests_jitter == GROUP_VARS["detector_max_requests_jitter"]


# Service config key -> the Ansible setting production renders it from. Their defaults must be
# the same number, so `detector serve` by hand, production and the README say one thing.
SAME_DEFAULT = {
    "worker_timeout_s": "detector_request_timeout_s",
    "graceful_timeout_s": "detector_graceful_timeout_s",
    "max_requests": "detector_max_requests",
    "max_requests_jitter": "detector_max_requests_jitter",
    "request_deadline_s": "detector_request_deadline_s",
    "decode_memory_mb": "detector_decode_memory_mb",
    "max_upload_bytes": "detector_max_upload_bytes",
    "max_pixels": "detector_max_pixels",
    "threshold": "detector_threshold",
    "nms_threshold": "detector_nms_threshold",
}


@pytest.mark.parametrize("key", sorted(SAME_DEFAULT))
def test_service_and_ansible_defaults_agree(key: str):
    from detector import config

    assert getattr(config.Config(), key) == GROUP_VARS[SAME_DEFAULT[key]], (
        f"config.{key} and {SAME_DEFAULT[key]} must have the same default"
    )


def test_the_sizing_rule_and_ansible_reserve_the_same_memory():
    from detector import sizing

    assert sizing.RESERVE_MB == GROUP_VARS["detector_memory_reserve_mb"]
    assert sizing.DECODE_MEMORY_MB == GROUP_VARS["detector_decode_memory_mb"]


def test_gunicorn_settings_come_from_the_config():
    from detector import config
    from detector import gunicorn_conf

    defaults = config.load(environ={})
    assert gunicorn_conf.timeout == defaults.worker_timeout_s
    assert gunicorn_conf.graceful_timeout == defaults.graceful_timeout_s
    assert gunicorn_conf.max_requests == defaults.max_requests
    assert gunicorn_conf.max_requests_jitter == defaults.max_requests_jitter


def test_rendered_unit_is_hardened(rendered: Path):
    unit = (rendered / "detector@blue.service").read_text()
    assert "IPAddressDeny=any" in unit and "IPAddressAllow=localhost" in unit
    assert f"Environment=DETECTOR_CONFIG={GROUP_VARS['detector_config_file']}" in unit
    assert "OMP_NUM_THREADS=2" in unit and "MemoryMax=3000M" in unit
    stop = int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1))
    assert stop > GROUP_VARS["detector_graceful_timeout_s"]
    # gunicorn's timeouts and recycling come from the config file alone (one source), no flags.
    assert "--timeout" not in unit and "--max-requests" not in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt: systemd); exposure not scored")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=30"]
        + [str(rendered / "detector@blue.service")],
        capture_output=True,
        text=True,
    )
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert exposure, result.stdout + result.stderr
    print(f"systemd-analyze security (offline) exposure: {exposure.group(1)}")
    assert float(exposure.group(1)) <= 1.0, result.stdout  # issue 13's bound


def test_rendered_nginx_site_limits_and_errors(rendered: Path):
    site = (rendered / "detector.conf").read_text()
    errors = (rendered / "detector-errors.conf").read_text()
    assert f"client_max_body_size {GROUP_VARS['detector_max_upload_bytes']};" in site
    timeout = int(re.search(r"proxy_read_timeout (\d+)s;", site).group(1))
    assert timeout > 25
    for port in GROUP_VARS["detector_https_ports"]:
        assert f"listen {port} ssl" in site
    assert "limit_req_status 429;" in site and "Strict-Transport-Security" in site
    assert '{"error": "no release deployed yet"}' in errors
    assert 'return 429 \'{"error"' in errors
    assert f"include {GROUP_VARS['detector_nginx_upstream_conf']};" in site


def test_rendered_sudoers_grants_only_the_contract_commands(rendered: Path):
    sudoers = (rendered / "sudoers").read_text()
    assert "NOPASSWD: DETECTOR_UNITS, DETECTOR_NGINX, DETECTOR_RENEW" in sudoers
    assert "ALL=(ALL)" not in sudoers and "NOPASSWD: ALL" not in sudoers
    renew = (rendered / "renew.service").read_text()
    assert "Environment=REQUESTS_CA_BUNDLE=" in renew
    (exec_start,) = [line for line in renew.splitlines() if line.startswith("ExecStart=")]
    assert "--no-random-sleep-on-renew" in exec_start and "$" not in exec_start
    assert "--force-renewal" not in exec_start and "--dry-run" not in exec_start  # timer's run
    assert "set-environment" not in sudoers  # also catches unset-environment
    assert "@force.service" in sudoers and "@dry-run.service" in sudoers


def test_pip_missing_filter_compares_freeze_with_pins():
    path = ANSIBLE / "filter_plugins" / "requirements.py"
    spec = importlib.util.spec_from_file_location("requirements_filter", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    freeze = "Flask==3.1.3\ntorch==2.13.0+cpu\nprometheus_client==0.26.0\n"
    pins = ["# comment", "flask==3.1.3", "prometheus-client==0.26.0", "torch==2.13.0+cpu"]
    assert module.pip_missing(freeze, pins) == []
    assert module.pip_missing(freeze, ["flask==3.1.4", "numpy==2.4.6", "torch>=2"]) == [
        "flask==3.1.4",
        "numpy==2.4.6",
    ]
    assert module.pip_missing("", ["torch==2.13.0+cpu"]) == ["torch==2.13.0+cpu"]


def test_rendered_site_limits_to_the_sized_capacity_and_says_when_to_retry(rendered: Path):
    site = (rendered / "detector.conf").read_text()
    assert "rate=20r/s;" in site  # _detector_sizing.rate_per_s
    assert "limit_req zone=detector_req burst=2 nodelay;" in site  # _detector_sizing.max_inflight
    assert '"~^(429|502|503):$" 1;' in site
    retry = "add_header Retry-After $detector_retry_after always;"
    assert retry in site
    template = ANSIBLE / "roles" / "nginx" / "templates" / "detector.conf.j2"
    assert template.read_text().count(retry) == 2  # the TLS server and the lb's backend server
    errors = (rendered / "detector-errors.conf").read_text()
    assert 'return 503 \'{"error": "service unavailable or busy; retry shortly"}' in errors
