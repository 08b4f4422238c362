"""A release directory holds the venv and only the files something reads (real install over SSH)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest
from ssh_helpers import local_server

from deploy import commands
from deploy import history
from deploy import release
from deploy import remote
from deploy.inventory import Host

ROOT = Path(__file__).resolve().parents[2]
RID = "20261126T010203Z-ab12cd34"


class _LocalSftp(paramiko.SFTPServerInterface):
    """SFTP on this machine's files (what sshd's sftp-server does), for fab's c.put."""

    def _stat(self, fn, path):
        try:
            return paramiko.SFTPAttributes.from_stat(fn(path))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    def stat(self, path):
        return self._stat(os.stat, path)

    def lstat(self, path):
        return self._stat(os.lstat, path)

    def chattr(self, path, attr):
        if attr.st_mode is not None:
            os.chmod(path, attr.st_mode & 0o7777)
        return paramiko.SFTP_OK

    def open(self, path, flags, attr):
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        handle = paramiko.SFTPHandle(flags)
        mode = "wb" if flags & (os.O_WRONLY | os.O_RDWR) else "rb"
        handle.readfile = handle.writefile = os.fdopen(fd, mode)
        return handle


@pytest.fixture
def ssh_host(tmp_path, monkeypatch):
    """A real SSH server on 127.0.0.1 running commands here; the host's base env is this venv."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    server, known = local_server(tmp_path)
    host = Host(
        name="local",
        address="127.0.0.1",
        user="deploy",
        ssh_port=server.port,
        key_file=str(tmp_path / "id_ed25519"),
        service="detector",
        app_root=str(tmp_path / "app"),
        env_link=sys.prefix,  # a venv, like detector_env_link with the venv backend
        domain="detector.test",
        https_ports=(443,),
        releases_keep=5,
        socket_dir=str(tmp_path / "run"),
        upstream_conf=str(tmp_path / "upstream.conf"),
        upstream_name="detector",
        renew_service="detector-certbot-renew.service",
        known_hosts=(str(known),),
    )
    c = remote.connect(host)
    c.open()  # the server's transport for this client now exists: give it SFTP
    server.transports[-1].set_subsystem_handler("sftp", paramiko.SFTPServer, _LocalSftp)
    yield c, host
    c.close()
    server.close()


def _readers(name: str) -> list[str]:
    """Python files of deploy/ and the service that name a release file."""
    found = []
    for path in [*(ROOT / "deploy").glob("*.py"), *(ROOT / "service" / "detector").rglob("*.py")]:
        if f'"{name}"' in path.read_text() or f"/{name}" in path.read_text():
            found.append(path.name)
    return found


@pytest.mark.slow
def test_a_release_dir_holds_the_venv_revision_and_complete_only(ssh_host, tmp_path):
    c, host = ssh_host
    art = release.build("HEAD", allow_dirty=True, out=tmp_path / "build")
    rel = Path(release.install(c, host, art, RID))
    reference = tmp_path / "empty-venv"  # what the venv command alone makes
    subprocess.run(commands.make_venv(host.base_python, str(reference)), check=True, timeout=120)
    extra = {p.name for p in rel.iterdir()} - {p.name for p in reference.iterdir()}
    assert extra == {release.REVISION, history.COMPLETE}  # no release.env, RELEASE or dist/
    assert (rel / release.REVISION).read_text() == art.sha + "\n"
    # Each extra file has a reader: `fab status` shows the sha, rollback wants COMPLETE.
    assert "status.py" in _readers(release.REVISION)
    assert "history.py" in _readers(history.COMPLETE)
    assert release.state(c, host).complete == {RID}
    out = subprocess.run(
        commands.import_check(str(rel / "bin" / "python")), capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith(str(rel)), out.stderr
