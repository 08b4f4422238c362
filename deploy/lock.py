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
    return (
        f"deploy lock held by {d.get('holder', '?')} since {d.get('since', '?')} "
        f"(release {d.get('release', '?')}: {d.get('message', '')}); "
        f"run `fab unlock` if it is stale ({lock_dir})"
    )


def acquire(c: Connection, lock_dir: str, release: str, message: str) -> None:
    """Take the lock or raise LockHeld naming the holder."""
    run(c, ["mkdir", "-p", lock_dir.rsplit("/", 1)[0]])
    details = commands.lock_details(holder(), datetime.now(timezone.utc), release, message)
    ok, _ = probe(c, commands.lock_acquire(lock_dir, details))
    if not ok:
        _, current = probe(c, ["cat", f"{lock_dir}/details"])
        raise LockHeld(held_message(lock_dir, current))


def release(c: Connection, lock_dir: str) -> None:
    """Drop the lock."""
    run(c, commands.lock_release(lock_dir))


def status(c: Connection, lock_dir: str) -> str:
    """The holder line, or '' when free."""
    ok, details = probe(c, ["cat", f"{lock_dir}/details"])
    return held_message(lock_dir, details) if ok else ""


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
