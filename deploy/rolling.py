"""Rolling deploy behind the load balancer: drain a batch at the lb, deploy it, put it back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from fabric import Connection

from deploy import boot
from deploy import commands
from deploy import lock
from deploy import release
from deploy import remote
from deploy import rollback as rollback_module
from deploy import switch
from deploy.inventory import Balancer
from deploy.inventory import Host
from deploy.remote import say
from deploy.remote import step

UPDATED = "updated"
FAILED = "FAILED"
ROLLED_BACK = "rolled back"
KEPT = "kept new release"
SKIPPED = "not attempted"


@dataclass
class Outcome:
    """What the roll did to one detector host."""

    host: str
    state: str = SKIPPED
    previous: str = ""  # release served before the roll ('' = none)
    detail: str = ""


def batches(items: list, size: int) -> list[list]:
    """Consecutive groups of at most size items (size < 1 counts as 1)."""
    size = max(int(size), 1)
    return [items[i : i + size] for i in range(0, len(items), size)]


def drained_names(batch: list[str], all_servers: list[str]) -> list[str]:
    """Which servers to mark down for a batch: none when that would leave the lb with no server."""
    keep = [n for n in all_servers if n not in batch]
    return list(batch) if keep else []


def to_roll_back(outcomes: list[Outcome], continue_on_failure: bool) -> list[Outcome]:
    """Hosts updated before a failure that go back to their previous release (newest first).

    None with continue_on_failure, and never a host that had no previous release.
    """
    if continue_on_failure or not any(o.state == FAILED for o in outcomes):
        return []
    return [o for o in reversed(outcomes) if o.state == UPDATED and o.previous]


def summary(rid: str, outcomes: list[Outcome], seconds: float) -> list[str]:
    """The lines printed at the end of a roll: one per host, then the verdict."""
    lines = [f"{o.host}: {o.state}{' (' + o.detail + ')' if o.detail else ''}" for o in outcomes]
    failed = [o.host for o in outcomes if o.state == FAILED]
    live = [o.host for o in outcomes if o.state in (UPDATED, KEPT)]
    if failed:
        lines.append(
            f"roll of {rid} FAILED on {', '.join(failed)} after {seconds:.1f}s; "
            f"{rid} live on {len(live)} of {len(outcomes)} host(s)"
        )
    else:
        lines.append(f"release {rid} live on {len(live)} host(s) in {seconds:.1f}s")
    return lines


def set_down(c: Connection, bal: Balancer, down: list[str]) -> None:
    """These detectors down at the lb, every other one up (root helper), wait for old workers."""
    switch.set_drained(c, bal.host, [name for name, _ in bal.servers], down)
    if down:
        left = switch.drain(c, bal.host)
        if left:
            say(bal.host, f"warning: {left} lb worker(s) still draining; going on")


def drained(c: Connection, bal: Balancer) -> list[str]:
    """The detectors the lb's record has down (a roll cut off between drain and undrain)."""
    ok, text = remote.probe(c, ["cat", commands.live_record(bal.host.service, lb=True)])
    try:
        names = json.loads(text) if ok and text else []
    except ValueError:
        return [f"unreadable record: {text[:80]!r}"]
    return [str(n) for n in names] if isinstance(names, list) else []


def _current(c: Connection, host: Host) -> str:
    return switch.release_of(switch.target_of(c, host.current_link))


def roll(
    hosts: list[Host],
    bal: Balancer,
    art: release.Artifact,
    rid: str,
    batch_size: int = 1,
    continue_on_failure: bool = False,
    deploy_one: Callable[[Connection, Host, release.Artifact, str], None] = boot.deploy,
) -> list[Outcome]:
    """Deploy rid batch by batch, each drained at the lb; returns one Outcome per host.

    A failing host (already switched back by the deploy) stops the roll; the hosts updated
    before it go back to their previous release unless continue_on_failure.
    """
    started = time.monotonic()
    outcomes = [Outcome(h.name) for h in hosts]
    by_name = {o.host: o for o in outcomes}
    names = [name for name, _ in bal.servers]
    lb = remote.connect(bal.host)
    failed = False
    try:
        with lock.held(lb, bal.host.lock_dir, rid, f"fab deploy (rolling) {rid}"):
            for batch in batches(hosts, batch_size):
                down = drained_names([h.name for h in batch], names)
                with step(bal.host, f"drain {', '.join(down) or 'nothing (last server)'}"):
                    set_down(lb, bal, down)
                try:
                    for host in batch:
                        failed = not _deploy_host(host, art, rid, by_name[host.name], deploy_one)
                        if failed:
                            break
                finally:
                    with step(bal.host, f"undrain {', '.join(down) or 'nothing'}"):
                        set_down(lb, bal, [])
                if failed:
                    break
            for o in to_roll_back(outcomes, continue_on_failure):
                _roll_back_host(lb, bal, next(h for h in hosts if h.name == o.host), o, names)
            if failed and continue_on_failure:
                for o in outcomes:
                    if o.state == UPDATED:
                        o.state, o.detail = KEPT, "--continue-on-failure"
    finally:
        lb.close()
    for line in summary(rid, outcomes, time.monotonic() - started):
        print(line, flush=True)
    return outcomes


def _deploy_host(host: Host, art, rid: str, outcome: Outcome, deploy_one) -> bool:
    c = remote.connect(host)
    try:
        outcome.previous = _current(c, host)
        with lock.held(c, host.lock_dir, rid, f"fab deploy {rid}"):
            deploy_one(c, host, art, rid)
        outcome.state = UPDATED
        return True
    except remote.FAILURES as exc:
        outcome.state, outcome.detail = FAILED, str(exc)
        say(host, f"error: {exc}")
        return False
    finally:
        c.close()


def _roll_back_host(lb: Connection, bal: Balancer, host: Host, o: Outcome, names: list[str]):
    down = drained_names([host.name], names)
    c = remote.connect(host)
    try:
        with step(bal.host, f"drain {host.name} for its rollback"):
            set_down(lb, bal, down)
        with lock.held(c, host.lock_dir, o.previous, "fab deploy (rolling back)"):
            rollback_module.rollback(c, host, o.previous)
        o.state, o.detail = ROLLED_BACK, f"to {o.previous}"
    except remote.FAILURES as exc:
        o.detail = f"rollback to {o.previous} FAILED: {exc}; run `fab rollback --hosts {host.name}`"
        say(host, o.detail)
    finally:
        c.close()
        set_down(lb, bal, [])
