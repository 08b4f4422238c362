"""Choose the release to go back to (complete, once live, not current) and boot it (no rebuild)."""

from __future__ import annotations

from collections.abc import Callable

from fabric import Connection

from deploy import boot
from deploy import history
from deploy import release
from deploy.inventory import Host
from deploy.remote import DeployError
from deploy.remote import say


def rollback(
    c: Connection,
    host: Host,
    to: str = "",
    boot_one: Callable[..., str] = boot.boot,
) -> str:
    """Boot the previous (or named) release with the same switch and gate as a deploy.

    The target comes from the release markers and the live history (deploy/history.py), never
    from directory names alone: a half-installed, failed or never-live release is refused.
    A target that fails its smoke check or gate is marked FAILED (kept on disk to inspect), so
    a later rollback does not pick it again.
    """
    st = release.state(c, host)
    target = history.choose(st, to)
    say(host, f"rollback {st.current or 'none'} -> {target}")
    try:
        boot_one(c, host, target, kind="rollback")
    except history.ReleaseFailed as exc:  # not a host problem (lock, sudo, ssh): those raise
        why = f"rollback: smoke check or gate failed: {exc}".replace("\n", " ")
        try:
            marked = release.mark_failed(c, host, target, why)
        except DeployError as undo:
            marked, exc = False, DeployError(f"{exc}; marking {target} FAILED also failed: {undo}")
        if not marked:
            raise exc from None
        raise DeployError(
            f"{exc}; marked {target} {history.FAILED}: later rollbacks skip it (after fixing "
            f"the cause, remove {host.release_dir(target)}/{history.FAILED} to allow it again)"
        ) from None
    return target
