"""fab's SSH host key checks against a real SSH server (paramiko) on 127.0.0.1."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import paramiko
import pytest
from ssh_helpers import SshServer
from ssh_helpers import ed25519_key as _ed25519

from deploy import hostkeys
from deploy import remote
from deploy.inventory import Host
from deploy.remote import DeployError


@pytest.fixture
def keys(tmp_path):
    return {
        "host": _ed25519(tmp_path / "host_key"),
        "other": _ed25519(tmp_path / "other_host_key"),
        "client": _ed25519(tmp_path / "id_ed25519"),
        "client_path": str(tmp_path / "id_ed25519"),
    }


@pytest.fixture
def server(keys, monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # an empty ~/.ssh/known_hosts, no agent
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    srv = SshServer(keys["host"], keys["client"])
    yield srv
    srv.close()


def _host(port: int, key_file: str, known_hosts: tuple[str, ...]) -> Host:
    return Host(
        name="web1",
        address="127.0.0.1",
        user="deploy",
        ssh_port=port,
        key_file=key_file,
        service="detector",
        app_root="/opt/detector",
        env_link="/opt/detector/env",
        domain="detector.test",
        https_ports=(443,),
        releases_keep=5,
        socket_dir="/run/detector",
        upstream_conf="/etc/nginx/detector-upstream.conf",
        upstream_name="detector",
        renew_service="detector-certbot-renew.service",
        known_hosts=known_hosts,
    )


def _line(port: int, key: paramiko.PKey) -> str:
    return f"[127.0.0.1]:{port} {key.get_name()} {key.get_base64()}\n"


def _run(host: Host) -> str:
    c = remote.connect(host)
    try:
        return remote.output(c, ["echo", "hello"])
    finally:
        c.close()


def test_an_unknown_host_key_is_refused_naming_host_fingerprint_and_next_step(
    server, keys, tmp_path
):
    known = tmp_path / "known_hosts"
    host = _host(server.port, keys["client_path"], (str(known),))
    with pytest.raises(DeployError) as info:
        _run(host)
    message = str(info.value)
    fingerprint = keys["host"].fingerprint
    assert fingerprint.startswith("SHA256:")
    assert (
        f"web1 ([127.0.0.1]:{server.port}) offered SSH host key ssh-ed25519 {fingerprint}"
        in message
    )
    assert f"fab trust-host --hosts web1 --fingerprint {fingerprint}" in message
    assert str(known) in message
    assert not known.exists()  # nothing was added behind the user's back


def test_a_known_host_key_in_the_inventory_file_lets_commands_run(server, keys, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(_line(server.port, keys["host"]))
    out = _run(_host(server.port, keys["client_path"], (str(known),)))
    assert out == "hello"


def test_the_user_known_hosts_file_counts_too(server, keys):
    ssh_dir = Path(hostkeys.os.environ["HOME"]) / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "known_hosts").write_text(_line(server.port, keys["host"]))
    assert "hello" == _run(_host(server.port, keys["client_path"], ()))


def test_a_changed_host_key_is_refused_with_both_fingerprints(server, keys, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(_line(server.port, keys["other"]))
    with pytest.raises(DeployError) as info:
        _run(_host(server.port, keys["client_path"], (str(known),)))
    message = str(info.value)
    assert keys["host"].fingerprint in message
    assert keys["other"].fingerprint in message
    assert f"ssh-keygen -R '[127.0.0.1]:{server.port}'" in message
    assert "intercepting" in message


def test_trust_host_refuses_a_wrong_fingerprint_and_records_the_right_one(server, keys, tmp_path):
    known = tmp_path / "inv" / "known_hosts"
    with pytest.raises(hostkeys.HostKeyError) as info:
        hostkeys.trust("web1", "127.0.0.1", server.port, (str(known),), keys["other"].fingerprint)
    assert keys["host"].fingerprint in str(info.value)
    assert not known.exists()
    done = hostkeys.trust("web1", "127.0.0.1", server.port, (str(known),), keys["host"].fingerprint)
    assert f"trusted ssh-ed25519 {keys['host'].fingerprint}" in done
    assert known.read_text() == _line(server.port, keys["host"])
    again = hostkeys.trust("web1", "127.0.0.1", server.port, (str(known),), "")
    assert "already trusted" in again
    assert "hello" == _run(_host(server.port, keys["client_path"], (str(known),)))


def test_trust_host_asks_and_writes_nothing_on_no(server, keys, tmp_path):
    known = tmp_path / "known_hosts"
    asked = []

    def no(prompt):
        asked.append(prompt)
        return "n"

    with pytest.raises(hostkeys.HostKeyError):
        hostkeys.trust("web1", "127.0.0.1", server.port, (str(known),), confirm=no)
    assert keys["host"].fingerprint in asked[0]
    assert not known.exists()
    hostkeys.trust("web1", "127.0.0.1", server.port, (str(known),), confirm=lambda _: "yes")
    assert known.read_text() == _line(server.port, keys["host"])


def test_trust_host_refuses_to_replace_a_changed_key(server, keys, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(_line(server.port, keys["other"]))
    with pytest.raises(hostkeys.HostKeyError) as info:
        hostkeys.trust("web1", "127.0.0.1", server.port, (str(known),), keys["host"].fingerprint)
    assert "ssh-keygen -R" in str(info.value)
    assert known.read_text() == _line(server.port, keys["other"])


@pytest.mark.parametrize(
    ("hostvars", "files"),
    [
        ({}, ()),
        ({"detector_ssh_known_hosts": "/inv/known_hosts"}, ("/inv/known_hosts",)),
        ({"detector_ssh_known_hosts": ["/a", "/b"]}, ("/a", "/b")),
        (
            {"ansible_ssh_common_args": "-o UserKnownHostsFile=/k -o StrictHostKeyChecking=yes"},
            ("/k",),
        ),
        ({"ansible_ssh_common_args": "-oUserKnownHostsFile=/k2"}, ("/k2",)),
        ({"ansible_ssh_extra_args": "-o 'UserKnownHostsFile /k3 /k4'"}, ("/k3", "/k4")),
        ({"ansible_ssh_common_args": "-o UserKnownHostsFile=/dev/null"}, ()),
        (
            {
                "detector_ssh_known_hosts": "/k",
                "ansible_ssh_common_args": "-o userknownhostsfile=/k",
            },
            ("/k",),
        ),
    ],
)
def test_known_hosts_files_come_from_the_inventory(hostvars, files):
    assert hostkeys.known_hosts_files(hostvars) == files


def test_trust_host_without_a_terminal_wants_the_fingerprint(server, keys, tmp_path, monkeypatch):
    known = tmp_path / "known_hosts"
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(hostkeys.HostKeyError, match="no terminal to confirm it") as info:
        hostkeys.trust("web1", "127.0.0.1", server.port, (str(known),))
    assert f"--fingerprint {keys['host'].fingerprint}" in str(info.value)
    assert not known.exists()


def _through_gateway(server, keys, known: Path) -> Host:
    """web1 at 127.0.0.2, reached through ~/.ssh/config's ProxyJump to the server (127.0.0.1),
    with the deploy key where Fabric's hop looks for one (~/.ssh/id_ed25519)."""
    ssh_dir = Path(hostkeys.os.environ["HOME"]) / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    (ssh_dir / "id_ed25519").write_bytes(Path(keys["client_path"]).read_bytes())
    (ssh_dir / "id_ed25519").chmod(0o600)
    (ssh_dir / "config").write_text(f"Host 127.0.0.2\n  ProxyJump deploy@127.0.0.1:{server.port}\n")
    host = _host(22, keys["client_path"], (str(known),))
    return dataclasses.replace(host, address="127.0.0.2")


def test_a_proxyjump_hop_with_an_unknown_key_is_refused_before_login(server, keys, tmp_path):
    """Fabric makes the hop a Connection of its own that adds any key (AutoAddPolicy): a
    machine in the middle of the hop got the login; fab checks the hop like the host."""
    known = tmp_path / "known_hosts"
    host = _through_gateway(server, keys, known)
    with pytest.raises(DeployError) as info:
        _run(host)
    message = str(info.value)
    assert f"ProxyJump 127.0.0.1 ([127.0.0.1]:{server.port}) offered SSH host key" in message
    assert keys["host"].fingerprint in message
    assert f"add it to {known}" in message
    assert not server.logins  # refused before the hop was logged into
    assert not known.exists()


def test_a_proxyjump_hop_with_a_known_key_is_logged_into(server, keys, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(_line(server.port, keys["host"]))  # the hop's key, not web1's
    with pytest.raises(DeployError) as info:
        _run(_through_gateway(server, keys, known))
    assert "offered SSH host key" not in str(info.value)  # past the hop's key check ...
    assert server.logins == ["deploy"]  # ... and its login; the test hop forwards nothing
