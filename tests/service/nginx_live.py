"""Render the real nginx site and upstream with Ansible and the switch helper; run nginx by PID."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from svc_live import free_port

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "ansible" / "roles"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HELPER = ROLES / "deploy_access" / "files" / "detector-activate"
TEMPLATES = {
    "nginx/templates/detector.conf.j2": "conf.d/detector.conf",
    "nginx/templates/detector-errors.conf.j2": "snippets/detector-errors.conf",
    "deploy_access/templates/detector-activate.json.j2": "detector-activate.json",
}
MAIN_CONF = """\
user root;
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    include {dir}/conf.d/detector.conf;
}}
"""


def require_nginx() -> None:
    """Skip unless the nginx binary is installed (Makefile APT_PACKAGES has it)."""
    if not os.access(NGINX, os.X_OK):
        pytest.skip(f"nginx is not installed ({NGINX}); run `make apt` as root")
    if os.geteuid() != 0:
        pytest.skip("the nginx tests run nginx as root (its workers read the test's 0700 dirs)")


def helper_module():
    """The root switch helper (deploy_access files/detector-activate) as a module."""
    loader = importlib.machinery.SourceFileLoader("detector_activate", str(HELPER))
    spec = importlib.util.spec_from_loader("detector_activate", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (openssl) that clients can verify against itself."""
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def render_site(directory: Path, sizing: dict, socket_dir: Path, overrides: dict) -> dict:
    """Render the site, the error snippet and the helper's config from the role defaults.

    `sizing` stands for what detector/sizing.py prints on the host (_detector_sizing); the
    helper's own function then writes the upstream include from its rendered config, as
    `detector-activate --sync` does. Returns the helper's config.
    """
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    if not playbook_bin.exists():
        pytest.skip("ansible-playbook is not installed in the venv; run `make setup`")
    for sub in ("conf.d", "snippets", "tmp", "logs"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    defaults = [ROLES / r / "defaults" / "main.yml" for r in ("detector", "nginx", "deploy_access")]
    play = [
        {
            "name": "Render the nginx site",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [str(path) for path in defaults],
            "tasks": [
                {
                    "name": f"Render {dest}",
                    "ansible.builtin.template": {
                        "src": str(ROLES / src),
                        "dest": str(directory / dest),
                        "mode": "0644",
                    },
                }
                for src, dest in TEMPLATES.items()
            ],
        }
    ]
    (directory / "render.yml").write_text(yaml.safe_dump(play))
    extra = {
        "_detector_sizing": sizing,
        "deploy_access_socket_dir": str(socket_dir),
        "nginx_upstream_conf": str(directory / "upstream.conf"),
        "nginx_release_link": str(directory),  # exists: a release is deployed
        **overrides,
    }
    env = {
        **os.environ,
        "ANSIBLE_LOCAL_TEMP": str(directory / ".ansible"),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
    }
    result = subprocess.run(
        [str(playbook_bin), "-i", "localhost,", str(directory / "render.yml")]
        + ["-e", f"ansible_python_interpreter={sys.executable}", "-e", json.dumps(extra)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    site = directory / "conf.d" / "detector.conf"
    # The one test-only change: logs go to the test's directory, not /var/log/nginx.
    site.write_text(site.read_text().replace("/var/log/nginx/", f"{directory}/logs/"))
    cfg = json.loads((directory / "detector-activate.json").read_text())
    upstream = helper_module().detector_upstream(cfg, cfg["colors"][0])
    (directory / "upstream.conf").write_text(upstream)
    (directory / "nginx.conf").write_text(MAIN_CONF.format(dir=directory, workers=2))
    return cfg


def nginx_test(directory: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on the rendered configuration."""
    return subprocess.run(
        [NGINX, "-t", "-p", str(directory), "-c", str(directory / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )


class LiveNginx:
    """One nginx master (2 workers) on the rendered configuration; stopped by its PID."""

    def __init__(self, directory: Path, port: int, cert: Path, proxied: bool = True) -> None:
        self.directory = directory
        self.proxied = proxied
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        self.verify = ssl.create_default_context(cafile=str(cert))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> LiveNginx:
        """Start nginx and wait until it proxies /status_check to the service (or, with
        proxied=False, until it answers at all: a site whose service is down)."""
        command = [NGINX, "-p", str(self.directory), "-c", str(self.directory / "nginx.conf")]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "error.log").read_text(errors="replace")
                self.process = None
                raise RuntimeError(f"nginx exited at start: {log[-2000:]}")
            try:
                with self.client() as client:
                    status = client.get(self.url + "/status_check").status_code
                if status == 200 or not self.proxied:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"nginx did not proxy {self.url}/status_check within {timeout} s")

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(verify=self.verify, timeout=timeout)

    def error_log(self) -> str:
        return (self.directory / "logs" / "detector.error.log").read_text(errors="replace")

    def stop(self) -> None:
        """Fast shutdown (SIGTERM to the master's PID; it stops its workers), SIGKILL if stuck."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None

    def __enter__(self) -> LiveNginx:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# Per-client limits out of the way: the tests are about the upstream bound alone.
NO_CLIENT_LIMITS = {
    "nginx_rate_limit": "1000r/s",
    "nginx_rate_burst": 1000,
    "nginx_conn_limit": 100,
}


def prepare_site(tmp_path: Path, sizing: dict, **overrides) -> dict:
    """Render the TLS site on a free 127.0.0.1 port with a self-signed certificate.

    Returns the directory, port, certificate, helper config and the socket directory (where
    the live color's socket, blue.sock, must be).
    """
    require_nginx()
    directory = tmp_path / "nginx"
    directory.mkdir()
    cert, key = self_signed(tmp_path)
    port = free_port()
    overrides = {
        **NO_CLIENT_LIMITS,
        "nginx_listen_ports": [f"127.0.0.1:{port}"],
        "nginx_tls_certificate": str(cert),
        "nginx_tls_certificate_key": str(key),
        **overrides,
    }
    sockets = tmp_path / "run"
    sockets.mkdir()
    cfg = render_site(directory, sizing, sockets, overrides)
    return {"dir": directory, "port": port, "cert": cert, "cfg": cfg, "sockets": sockets}
