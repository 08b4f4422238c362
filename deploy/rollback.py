"""Choose the release to go back to and boot it (no rebuild)."""

from __future__ import annotations

from fabric import Connection

from deploy import boot
from deploy import release
from deploy import switch
from deploy.inventory import Host
from deploy.remote import DeployError
from deploy.remote import say


def choose(releases: list[str], current: str, to: str = "") -> str:
    """The named release, else the newest one older than current; errors say how to list them."""
    if to:
        if to not in releases:
            raise DeployError(
                f"release {to} is not on this host; `fab status` lists the kept releases"
            )
        if to == current:
            raise DeployError(f"release {to} is already current")
        return to
    older = [r for r in releases if r < current] if current else []
    if not older:
        raise DeployError(
            f"no release older than {current or 'none'} to roll back to; `fab status` lists them"
        )
    return older[-1]


def rollback(c: Connection, host: Host, to: str = "") -> str:
    """Boot the previous (or named) release with the same switch and gate as a deploy."""
    current = switch.release_of(switch.target_of(c, host.current_link))
    target = choose(release.listing(c, host), current, to)
    say(host, f"rollback {current or 'none'} -> {target}")
    boot.boot(c, host, target)
    return target
