"""Connections to inventory hosts and bounded remote calls that print one timed line per step."""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Iterator
from typing import NoReturn

from fabric import Connection
from invoke.exceptions import CommandTimedOut
from invoke.exceptions import UnexpectedExit
from paramiko.ssh_exception import BadHostKeyException
from paramiko.ssh_exception import SSHException

from deploy import commands
from deploy import hostkeys
from deploy.inventory import Host

DEFAULT_TIMEOUT = 60


class DeployError(RuntimeError):
    """A deploy step failed; the message says what, with which value, and what to do next."""


FAILURES = (DeployError, OSError, SSHException)  # what a task reports as one line


class VerifiedConnection(Connection):
    """A Connection that trusts only known_hosts keys and says so clearly when a key differs."""

    def open(self):
        try:
            return super().open()
        except BadHostKeyException as exc:
            files = hostkeys.trusted_files(self.deploy_host.known_hosts)
            name = hostkeys.key_name(self.host, self.port)
            raise hostkeys.HostKeyError(
                hostkeys.changed_message(
                    self.deploy_host.name, name, exc.key, exc.expected_key, files
                )
            ) from None


def connect(host: Host) -> Connection:
    """An SSH connection as the deploy user with the inventory's key or the agent.

    The host's key must be in the inventory's known_hosts file or ~/.ssh/known_hosts; an
    unknown or changed key stops before login (`fab trust-host` records a confirmed one).
    """
    kwargs = {"key_filename": [host.key_file]} if host.key_file else {}
    conn = VerifiedConnection(
        host=host.address,
        user=host.user,
        port=host.ssh_port,
        connect_timeout=15,
        connect_kwargs={**kwargs, "look_for_keys": not host.key_file, "allow_agent": True},
    )
    conn.deploy_host = host
    hostkeys.verify(conn.client, host.name, host.known_hosts)
    # A ProxyJump hop from ~/.ssh/config is a Connection of Fabric's own, which adds any key:
    # each hop is checked against the same files (a ProxyCommand is ssh's, which checks).
    hop = conn.gateway
    while isinstance(hop, Connection):
        hostkeys.verify(hop.client, f"{host.name}'s ProxyJump {hop.host}", host.known_hosts, True)
        hop = hop.gateway
    return conn


def say(host: Host, message: str) -> None:
    """One progress line, prefixed with the host."""
    print(f"[{host.name}] {message}", flush=True)


@contextlib.contextmanager
def step(host: Host, what: str) -> Iterator[None]:
    """Print `what`, then its duration or failure."""
    start = time.monotonic()
    say(host, f"{what} ...")
    try:
        yield
    except BaseException:
        say(host, f"{what}: FAILED after {time.monotonic() - start:.1f}s")
        raise
    say(host, f"{what}: done in {time.monotonic() - start:.1f}s")


def run(c: Connection, argv_or_cmd, timeout: int = DEFAULT_TIMEOUT, warn: bool = False):
    """Run argv (or a prepared shell string) with a remote timeout and no pager; hide output."""
    argv = ["sh", "-c", argv_or_cmd] if isinstance(argv_or_cmd, str) else argv_or_cmd
    cmd = commands.bounded(argv, timeout)
    try:
        return c.run(cmd, hide=True, warn=warn, timeout=timeout + 15, in_stream=False)
    except CommandTimedOut:
        raise DeployError(f"{c.host}: `{cmd}` did not finish within {timeout}s") from None
    except hostkeys.HostKeyError as exc:
        raise DeployError(str(exc)) from None
    except (SSHException, OSError) as exc:
        raise DeployError(
            f"{c.host}: ssh as {c.user} failed ({exc}); check the inventory"
        ) from None
    except UnexpectedExit as exc:
        res = exc.result
        detail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        shown = commands.shell(argv)
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        raise DeployError(
            f"{c.host}: `{shown}` exited {res.exited}: {' | '.join(detail) or 'no output'}"
        ) from None


def output(c: Connection, argv_or_cmd, timeout: int = DEFAULT_TIMEOUT) -> str:
    """stdout of a command that must succeed."""
    return run(c, argv_or_cmd, timeout).stdout.strip()


def probe(c: Connection, argv_or_cmd, timeout: int = DEFAULT_TIMEOUT) -> tuple[bool, str]:
    """Run without raising; (succeeded, stdout)."""
    res = run(c, argv_or_cmd, timeout, warn=True)
    return res.ok, res.stdout.strip()


def stream(c: Connection, argv: list[str], timeout: int | None) -> None:
    """Run with output shown live (logs); timeout None only for an explicit follow."""
    if timeout is None:
        cmd = "SYSTEMD_PAGER= " + commands.shell(argv)
    else:
        cmd = commands.bounded(argv, timeout)
    c.run(cmd, pty=False, warn=True, in_stream=False)


def put_text(c: Connection, text: str, remote_path: str) -> None:
    """Upload text content to a path the deploy user owns."""
    c.put(io.BytesIO(text.encode()), remote=remote_path)


def fail(message: str) -> NoReturn:
    """Stop with a one-line reason on stderr."""
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(1)
