"""The deploy lock: a directory made with mkdir (atomic) plus a details file naming the holder."""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from datetime import timezone

from fabric import Connection

from deploy import commands
from deploy.remote import DeployError
from deploy.remote import probe
from deploy.remote import run

# The deploy lock's shell, "$1" the lock directory, "$2" the details: fab and the Ansible roll
# (ansible/roles/detector/tasks/roll.yml) run these same texts. Taking it is all or nothing: a
# details file that cannot be written (disk full) removes the directory again, exit 1 = held.
TAKE_SH = (
    'mkdir "$1" 2>/dev/null || exit 1; '
    'printf %s "$2" > "$1/details" || { rm -f "$1/details"; rmdir "$1"; exit 2; }'
)
FREE_SH = 'rm -f "$1/details" && rmdir "$1"'


def take_command(lock_dir: str, details: str) -> str:
    """Take the deploy lock: mkdir is the atomic test-and-set, then record who holds it."""
    return commands.shell(["sh", "-c", TAKE_SH, "sh", lock_dir, details])


def free_command(lock_dir: str) -> str:
    """Drop the deploy lock (also one left without details by a run cut off in between)."""
    return commands.shell(["sh", "-c", FREE_SH, "sh", lock_dir])


def read_command(lock_dir: str) -> str:
    """Print `free`, or `held` and the details file (empty when a cut-off run left none)."""
    script = 'test -d "$1" || { echo free; exit 0; }; echo held; cat "$1/details" 2>/dev/null; true'
    return commands.shell(["sh", "-c", script, "sh", lock_dir])


def details_text(
    holder: str, when: datetime, release: str, message: str, pid: int | None = None
) -> str:
    """The lock's details file: one KEY=VALUE per line (pid: the holder's fab process)."""
    stamp = when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    text = f"holder={holder}\nsince={stamp}\nrelease={release}\nmessage={message}\n"
    return text + (f"pid={int(pid)}\n" if pid else "")


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
    held = (
        f"deploy lock held by {d.get('holder', '?')} since {d.get('since', '?')} "
        f"(release {d.get('release', '?')}: {d.get('message', '')})"
    )
    if stale(d):
        return (
            f"{held} is STALE: the fab process that took it (pid {d['pid']} on this machine) "
            f"is gone, killed or cut off; run `fab unlock`, then retry ({lock_dir})"
        )
    return f"{held}; run `fab unlock` if it is stale ({lock_dir})"


def stale(details: dict) -> bool:
    """True when this machine's fab process that took the lock no longer runs."""
    pid = details.get("pid", "")
    if details.get("holder") != holder() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, another user's: alive
        return False
    return False


def read(c: Connection, lock_dir: str) -> tuple[bool, str]:
    """(held, details); a lock directory without details counts as held."""
    ok, out = probe(c, read_command(lock_dir))
    state, _, details = out.partition("\n")
    if not ok or state not in ("free", "held"):
        raise DeployError(f"{c.host}: cannot read the deploy lock {lock_dir}: {out or 'no output'}")
    return state == "held", details


def acquire(c: Connection, lock_dir: str, release: str, message: str) -> None:
    """Take the lock or raise LockHeld naming the holder (all or nothing: see LOCK_TAKE_SH)."""
    parent = lock_dir.rsplit("/", 1)[0]
    run(c, ["mkdir", "-p", parent])
    now = datetime.now(timezone.utc)
    details = details_text(holder(), now, release, message, os.getpid())
    res = run(c, take_command(lock_dir, details), warn=True)
    if res.ok:
        return
    held, current = read(c, lock_dir) if res.exited == 1 else (False, "")
    if held:
        raise LockHeld(f"{c.host}: {held_message(lock_dir, current)}")
    why = (res.stderr or res.stdout).strip() or f"exit {res.exited}"
    raise DeployError(
        f"{c.host}: could not take the deploy lock {lock_dir}: {why}; it is not held, so "
        f"check that {c.user} can write {parent} (free space too), then retry"
    )


def release(c: Connection, lock_dir: str) -> None:
    """Drop the lock."""
    run(c, free_command(lock_dir))


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
