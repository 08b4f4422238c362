"""Atomic switches: symlinks (`ln -s` + `mv -T`) and the nginx upstream of the live color."""

from __future__ import annotations

import time

from fabric import Connection

from deploy import commands
from deploy.inventory import Host
from deploy.remote import DeployError
from deploy.remote import output
from deploy.remote import probe
from deploy.remote import put_text
from deploy.remote import run


def point(c: Connection, target: str, link: str) -> None:
    """Rename a fresh symlink to target over link."""
    run(c, commands.switch_symlink(target, link))


def target_of(c: Connection, link: str) -> str:
    """Where link points, or '' when it does not exist."""
    ok, out = probe(c, commands.read_symlink(link))
    return out if ok else ""


def release_of(path: str) -> str:
    """The release id at the end of a release path ('' for none)."""
    return path.rstrip("/").rsplit("/", 1)[-1] if path else ""


def live_color(c: Connection, host: Host) -> str:
    """The color nginx sends traffic to, read from the upstream include ('' before any deploy)."""
    ok, text = probe(c, ["cat", host.upstream_conf])
    if ok:
        for color in commands.COLORS:
            if host.socket(color) in text:
                return color
    return ""


def upstream(c: Connection, host: Host, color: str) -> None:
    """Send new requests to color: write the include, validate, graceful nginx reload.

    An include that nginx rejects is replaced by the previous one before raising.
    """
    text = commands.upstream_conf(host.upstream_name, host.socket(color))
    install_upstream(c, host, text, color)


def install_upstream(c: Connection, host: Host, text: str, what: str) -> None:
    """Write host's upstream include, validate, graceful reload; restore it if nginx rejects it."""
    staged = f"{host.staging_dir}/nginx-upstream.conf"
    _, previous = probe(c, ["cat", host.upstream_conf])
    run(c, ["mkdir", "-p", host.staging_dir])
    put_text(c, text, staged)
    run(c, commands.sudo(commands.install_root_file(staged, host.upstream_conf)))
    res = run(c, commands.sudo(commands.nginx_test()), warn=True)
    if res.failed:
        if previous:
            put_text(c, previous + "\n", staged)
            run(c, commands.sudo(commands.install_root_file(staged, host.upstream_conf)))
        reason = (res.stderr or res.stdout).strip()
        raise DeployError(f"nginx -t rejected {host.upstream_conf} for {what}: {reason}")
    run(c, commands.sudo(commands.systemctl("reload", "nginx.service")))


def drain(c: Connection, host: Host) -> int:
    """Wait until nginx workers of the previous generation have finished (bounded)."""
    deadline = time.monotonic() + max(host.drain_s, 1.0) + 60
    time.sleep(host.drain_s)
    while time.monotonic() < deadline:
        left = int(output(c, commands.nginx_draining()) or 0)
        if left == 0:
            return 0
        time.sleep(1)
    return left


def start_color(c: Connection, host: Host, color: str) -> None:
    """(Re)start one color's unit; it is not serving public traffic until `upstream`."""
    name = commands.unit(host.service, color)
    probe(c, commands.sudo(commands.systemctl("reset-failed", name)))
    run(c, commands.sudo(commands.systemctl("stop", name)), timeout=120)
    run(c, commands.sudo(commands.systemctl("start", name)), timeout=180)


def stop_color(c: Connection, host: Host, color: str) -> None:
    """Stop one color (graceful: gunicorn finishes in-flight requests) and keep it off at boot."""
    name = commands.unit(host.service, color)
    run(c, commands.sudo(commands.systemctl("stop", name)), timeout=180)
    run(c, commands.sudo(commands.systemctl("disable", name)))


def enable_color(c: Connection, host: Host, color: str) -> None:
    """Start this color at boot (the live one only)."""
    run(c, commands.sudo(commands.systemctl("enable", commands.unit(host.service, color))))
