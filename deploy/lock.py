"""The deploy lock: a directory made with mkdir (atomic) plus a details file naming the holder."""

from __future__ import annotations

import contextlib
import getpass
import socket
from collections.abc import Iterator
from datetime import datetime
from datetime import timezone

from fabric import Connection

from deploy import commands
from deploy.remote import DeployError
from deploy.remote import probe
from deploy.remote import run


class LockHeld(DeployError):
    """Another deploy holds the lock."""


def holder() -> str:
    """Who is deploying: user@control-machine."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def describe(details: str) -> dict:
    """Parse the details file."""
    return dict(line.split("=", 1) for line in details.splitlines() if "=" in line)


def held_message(lock_dir: str, details: str) -> str:
    """The refusal: who holds it, since when, for what, and how to clear a stale one."""
    d = describe(details)
    if not d.get("holder"):
        return (
            f"deploy lock {lock_dir} is held but names no holder: a run was cut off while "
            f"taking or releasing it; if no fab or provisioning run is going on, run `fab unlock`"
        )
    return (
        f"deploy lock held by {d.get('holder', '?')} since {d.get('since', '?')} "
        f"(release {d.get('release', '?')}: {d.get('message', '')}); "
        f"run `fab unlock` if it is stale ({lock_dir})"
    )


def read(c: Connection, lock_dir: str) -> tuple[bool, str]:
    """(held, details); a lock directory without details counts as held."""
    ok, out = probe(c, commands.lock_read(lock_dir))
    state, _, details = out.partition("\n")
    if not ok or state not in ("free", "held"):
        raise DeployError(f"{c.host}: cannot read the deploy lock {lock_dir}: {out or 'no output'}")
    return state == "held", details


def acquire(c: Connection, lock_dir: str, release: str, message: str) -> None:
    """Take the lock or raise LockHeld naming the holder (all or nothing: see LOCK_TAKE_SH)."""
    parent = lock_dir.rsplit("/", 1)[0]
    run(c, ["mkdir", "-p", parent])
    details = commands.lock_details(holder(), datetime.now(timezone.utc), release, message)
    res = run(c, commands.lock_acquire(lock_dir, details), warn=True)
    if res.ok:
        return
    held, current = read(c, lock_dir) if res.exited == 1 else (False, "")
    if held:
        raise LockHeld(held_message(lock_dir, current))
    why = (res.stderr or res.stdout).strip() or f"exit {res.exited}"
    raise DeployError(
        f"{c.host}: could not take the deploy lock {lock_dir}: {why}; it is not held, so "
        f"check that {c.user} can write {parent} (free space too), then retry"
    )


def release(c: Connection, lock_dir: str) -> None:
    """Drop the lock."""
    run(c, commands.lock_release(lock_dir))


def status(c: Connection, lock_dir: str) -> str:
    """The holder line, or '' when free."""
    held, details = read(c, lock_dir)
    return held_message(lock_dir, details) if held else ""


@contextlib.contextmanager
def held(c: Connection, lock_dir: str, release_name: str, message: str) -> Iterator[None]:
    """Hold the lock for the block; release it on success and on error without hiding the error."""
    acquire(c, lock_dir, release_name, message)
    try:
        yield
    finally:
        try:
            release(c, lock_dir)
        except DeployError as exc:  # keep the first error; report this one
            print(f"warning: could not release the deploy lock: {exc}", flush=True)
