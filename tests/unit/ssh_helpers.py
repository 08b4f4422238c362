"""A real SSH server (paramiko) on 127.0.0.1 that runs commands here, for fab's SSH code paths."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


def ed25519_key(path: Path) -> paramiko.Ed25519Key:
    """A fresh ed25519 key written in OpenSSH format (what ssh-keygen writes)."""
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return paramiko.Ed25519Key.from_private_key_file(str(path))


class _Server(paramiko.ServerInterface):
    """Accept one client key as user deploy; run each command with sh here (like sshd would)."""

    def __init__(self, client_key: paramiko.PKey, logins: list[str]):
        self.client_key, self.logins = client_key, logins

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        ok = key == self.client_key and username == "deploy"
        if ok:
            self.logins.append(username)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return (
            paramiko.OPEN_SUCCEEDED
            if kind == "session"
            else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        )

    def check_channel_exec_request(self, channel, command):
        def answer():
            proc = subprocess.run(
                ["sh", "-c", command.decode()], capture_output=True, timeout=60, check=False
            )
            channel.sendall(proc.stdout)
            channel.sendall_stderr(proc.stderr)
            channel.send_exit_status(proc.returncode)
            channel.close()

        threading.Thread(target=answer, daemon=True).start()
        return True


class SshServer:
    """A real SSH server on 127.0.0.1 with a swappable host key."""

    def __init__(self, host_key: paramiko.PKey, client_key: paramiko.PKey):
        self.host_key, self.client_key = host_key, client_key
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self.logins: list[str] = []  # users logged in, in order
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            self.transports.append(transport)
            try:
                transport.start_server(server=_Server(self.client_key, self.logins))
            except (paramiko.SSHException, EOFError, OSError):
                continue

    def close(self):
        self.sock.close()
        for transport in self.transports:
            transport.close()


def local_server(tmp_path: Path) -> tuple[SshServer, Path]:
    """Start an SshServer with fresh keys under tmp_path; return it and a known_hosts naming it.

    The client key is tmp_path/id_ed25519; the caller points HOME at tmp_path and drops
    SSH_AUTH_SOCK so that only this key is offered.
    """
    host_key = ed25519_key(tmp_path / "host_key")
    server = SshServer(host_key, ed25519_key(tmp_path / "id_ed25519"))
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {host_key.get_name()} {host_key.get_base64()}\n")
    return server, known
