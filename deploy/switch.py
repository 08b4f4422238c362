"""Switches: the colors' symlinks (`ln -s` + `mv -T`) and the live color via the root helper."""

from __future__ import annotations

import time

from fabric import Connection

from deploy import commands
from deploy.inventory import Host
from deploy.remote import DeployError
from deploy.remote import output
from deploy.remote import probe
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
    """The live color from THE record the root helper keeps ('' before any deploy)."""
    ok, text = probe(c, ["cat", commands.live_record(host.service)])
    return text if ok and text in commands.COLORS else ""


def sync(c: Connection, host: Host) -> None:
    """Re-derive the nginx include and `current` from the record (root helper, no argument).

    A switch interrupted after the record was written left them behind; fab runs this before
    it decides anything from the record, and the boot unit does the same before nginx starts.
    """
    helper(c, host, commands.sync_live(), "re-derive the include from the live record")


def activate(c: Connection, host: Host, color: str) -> None:
    """Send new requests to color: the root helper records it, renders the include, checks
    nginx, reloads it gracefully, and points `current` at colors/<color>."""
    helper(c, host, commands.activate(color), f"make {color} live")


def set_drained(c: Connection, host: Host, names: list[str], down: list[str]) -> None:
    """On the lb: the named detectors down, every other one of names up (no-op when unchanged)."""
    for name in names:
        what = f"{'drain' if name in down else 'undrain'} {name}"
        helper(c, host, commands.lb_drain(name, name in down), what)


def helper(c: Connection, host: Host, argv: list[str], what: str) -> None:
    """Run the root switch helper; its refusal becomes a DeployError saying what to do."""
    res = run(c, argv, warn=True, timeout=120)
    if res.failed:
        reason = (res.stderr or res.stdout).strip() or f"exit {res.exited}"
        raise DeployError(
            f"{host.name}: {what} failed: {reason}; nothing else was changed. If sudo refused, "
            f"re-provision the host (ansible-playbook ansible/provision.yml) to install the helper"
        )


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
    """Stop one color (graceful: gunicorn finishes in-flight requests); boot follows the record."""
    name = commands.unit(host.service, color)
    run(c, commands.sudo(commands.systemctl("stop", name)), timeout=180)
