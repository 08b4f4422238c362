"""Choose the release to go back to (complete, once live, not current) and boot it (no rebuild)."""

from __future__ import annotations

from fabric import Connection

from deploy import boot
from deploy import history
from deploy import release
from deploy.inventory import Host
from deploy.remote import say


def rollback(c: Connection, host: Host, to: str = "") -> str:
    """Boot the previous (or named) release with the same switch and gate as a deploy.

    The target comes from the release markers and the live history (deploy/history.py), never
    from directory names alone: a half-installed, failed or never-live release is refused.
    """
    st = release.state(c, host)
    target = history.choose(st, to)
    say(host, f"rollback {st.current or 'none'} -> {target}")
    boot.boot(c, host, target, kind="rollback")
    return target
