"""Fabric tasks for detector hosts: thin wrappers over deploy/ (see README "Deploy")."""

from __future__ import annotations

import shutil
import time

from fabric import task

from deploy import boot
from deploy import cert
from deploy import commands
from deploy import hostkeys
from deploy import inventory
from deploy import lock
from deploy import release
from deploy import remote
from deploy import rollback as rollback_module
from deploy import rolling
from deploy import status as status_module
from deploy.remote import DeployError

INVENTORY_HELP = (
    "inventory name under ansible/inventories/ (default production) or a path"
    " (env DETECTOR_INVENTORY); no vault password needed"
)
HOSTS_HELP = "comma-separated inventory host names (default: every detector host)"


def _hosts(inventory_arg: str, hosts: str) -> list[inventory.Host]:
    """Detector hosts; behind an lb each knows its private port (gates and status use it)."""
    return _hosts_and_lb(inventory_arg, hosts)[0]


def _hosts_and_lb(inventory_arg: str, hosts: str):
    try:
        limit = [h for h in hosts.split(",") if h] or None
        return inventory.load_with_balancer(inventory_arg or None, limit)
    except inventory.InventoryError as exc:
        remote.fail(f"error: {exc}")


def _named_hosts(inventory_arg: str, hosts: str):
    """The inventory's hosts named in `hosts` (all when empty), the lb included, and the lb."""
    detectors, balancer = _hosts_and_lb(inventory_arg, "")
    everyone = detectors + ([balancer.host] if balancer else [])
    wanted = [h for h in hosts.split(",") if h]
    unknown = sorted(set(wanted) - {h.name for h in everyone})
    if unknown:
        remote.fail(f"error: host(s) {', '.join(unknown)} not in the inventory; see --inventory")
    return [h for h in everyone if not wanted or h.name in wanted], balancer


def _each(hosts: list[inventory.Host], action, locked: str = "") -> None:
    """Run action(c, host) per host, in order; stop at the first failure with its reason."""
    for host in hosts:
        c = remote.connect(host)
        try:
            if locked:
                with lock.held(c, host.lock_dir, locked, f"fab {locked}"):
                    action(c, host)
            else:
                action(c, host)
        except remote.FAILURES as exc:
            remote.fail(f"error: {exc}")
        finally:
            c.close()


@task(
    help={
        "ref": "git ref to ship (default HEAD); built from a clean `git archive` of it",
        "allow_dirty": "ship REF although the working tree has uncommitted changes",
        "hosts": HOSTS_HELP,
        "inventory": INVENTORY_HELP,
        "batch": "with an lb: how many detectors are drained and deployed at a time (default 1)",
        "continue_on_failure": "with an lb: hosts updated before a failing one keep the release",
    }
)
def deploy(
    c, ref="HEAD", allow_dirty=False, hosts="", inventory="", batch=1, continue_on_failure=False
):
    """Ship a git ref as a new release with zero downtime.

    Builds the wheel on this machine, installs it into releases/<UTC-ts>-<sha>/ next to the
    running one, boots it on the idle color and smoke-checks it, switches `current` and nginx,
    then gates on /readyz and a real detection over HTTPS (the answer must name the new release).
    Needs the deploy lock. A failed gate switches back automatically and exits non-zero.
    Undo with `fab rollback`. Keeps detector_releases_keep releases.
    With an `lb` inventory group: rolls over the detectors --batch at a time, each batch drained
    at the lb first; a failure stops the roll and the hosts already updated go back to their
    previous release unless --continue-on-failure. Prints a per-host summary.
    """
    targets, balancer = _hosts_and_lb(inventory, hosts)
    started = time.monotonic()
    try:
        art = release.build(ref, allow_dirty)
    except DeployError as exc:
        remote.fail(f"error: {exc}")
    rid = commands.release_id(art.sha)
    print(
        f"built {art.wheel.name} from {ref} ({art.sha[:12]}) in {time.monotonic() - started:.1f}s"
    )
    if balancer:
        try:
            outcomes = rolling.roll(
                targets, balancer, art, rid, int(batch), bool(continue_on_failure)
            )
        except remote.FAILURES as exc:
            remote.fail(f"error: {exc}")
        finally:
            shutil.rmtree(art.wheel.parent.parent, ignore_errors=True)
        if any(o.state == rolling.FAILED for o in outcomes):
            remote.fail(f"error: the roll of {rid} failed; see the summary above")
        return
    for host in targets:
        c = remote.connect(host)
        try:
            with lock.held(c, host.lock_dir, rid, f"fab deploy {ref}"):
                boot.deploy(c, host, art, rid)
        except remote.FAILURES as exc:
            remote.fail(f"error: {exc}")
        finally:
            c.close()
    shutil.rmtree(art.wheel.parent.parent, ignore_errors=True)
    print(f"release {rid} live on {len(targets)} host(s) in {time.monotonic() - started:.1f}s")


@task(
    help={
        "to": "release id to go back to (default: the last complete one that was live before)",
        "hosts": HOSTS_HELP,
        "inventory": INVENTORY_HELP,
    }
)
def rollback(c, to="", hosts="", inventory=""):
    """Serve the previous (or a named) release again.

    No rebuild: boots a kept release on the idle color, smoke-checks it, switches, and gates it
    like a deploy (failure switches back). Needs the deploy lock. Only a complete release that
    was live before qualifies (never a half-installed or failed one; a release rolled back from
    only with --to). `fab status` lists releases and their states.
    """
    _each(_hosts(inventory, hosts), lambda cc, h: rollback_module.rollback(cc, h, to), "rollback")


@task(help={"hosts": HOSTS_HELP, "inventory": INVENTORY_HELP})
def restart(c, hosts="", inventory=""):
    """Restart the service without dropping a request.

    Boots the current release on the idle color, checks it, moves nginx to it and stops the
    old color after draining; a failed check leaves the running color in place. Needs the lock.
    """
    _each(_hosts(inventory, hosts), boot.restart, "restart")


@task(help={"hosts": HOSTS_HELP, "inventory": INVENTORY_HELP})
def status(c, hosts="", inventory=""):
    """Show release, uptime, workers, health and certificates.

    Read-only: release id and git sha, live color, unit state, workers/threads/RSS, /readyz and
    the model through nginx, days left on the certificate served on each port (warns under 20),
    the last renewal run (the lb's, with an `lb` group). Exits non-zero when a certificate has
    under 14 days left or cannot be read, or the last renewal failed, so cron or CI can alert.
    """
    problems = []

    def show(cc, host, part=status_module.check):
        found = part(cc, host)
        for line in found.lines:
            remote.say(host, line)
        problems.extend(f"{host.name}: {p}" for p in found.problems)

    targets, balancer = _hosts_and_lb(inventory, hosts)
    _each(targets, show)
    if balancer:
        _each([balancer.host], lambda cc, h: show(cc, h, status_module.certificates))
    if problems:
        remote.fail("error: " + "; ".join(problems))


@task(
    help={
        "follow": "keep streaming new lines (Ctrl-C to stop)",
        "lines": "how many recent lines (default 100)",
        "hosts": HOSTS_HELP,
        "inventory": INVENTORY_HELP,
    }
)
def logs(c, follow=False, lines=100, hosts="", inventory=""):
    """Print the service's journal from both colors.

    Read-only; `-f` follows until interrupted.
    """

    def show(cc, host):
        units = [commands.unit(host.service, col) for col in commands.COLORS]
        remote.stream(cc, commands.journal(units, int(lines), follow), None if follow else 60)

    _each(_hosts(inventory, hosts), show)


@task(
    help={
        "force": "renew now even if the certificate is not due (new serial)",
        "dry_run": "renew against the staging CA without saving; still runs the deploy hook;"
        " a recorded renewal failure stays (only a real renewal clears it)",
        "hosts": HOSTS_HELP,
        "inventory": INVENTORY_HELP,
    }
)
def renew_cert(c, force=False, dry_run=False, hosts="", inventory=""):
    """Run the certificate renewal the timer runs, then verify it.

    Runs the timer's own service (--force/--dry-run: its twin unit with that flag), then reads the
    certificate served on 443 and 5000 from here before and after; a forced renewal must show a
    new serial on every port. nginx reloads gracefully. Needs the deploy lock. With an `lb`
    inventory group it runs on the lb host (the only one with a certificate).
    """
    if force and dry_run:
        remote.fail("error: --dry-run always gets a test certificate; drop --force")
    targets, balancer = _hosts_and_lb(inventory, hosts)
    targets = [balancer.host] if balancer else targets  # with an lb only it has a certificate
    _each(targets, lambda cc, h: cert.renew(cc, h, force, dry_run), "renew-cert")


@task(
    help={
        "fingerprint": "the SHA256:... key fingerprint checked on the host's console (no prompt)",
        "hosts": "comma-separated inventory host names, the lb included (default: all)",
        "inventory": INVENTORY_HELP,
    }
)
def trust_host(c, fingerprint="", hosts="", inventory=""):
    """Record a host's SSH key after checking its fingerprint.

    fab refuses hosts whose key is not known. This shows the SHA256 fingerprint a host offers
    and asks whether it matches `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the host's
    console (or compares it with --fingerprint), then appends the key to the inventory's
    known_hosts file (detector_ssh_known_hosts, or UserKnownHostsFile in
    ansible_ssh_common_args), else ~/.ssh/known_hosts. A key that differs from a known one is
    refused: remove the old line with `ssh-keygen -R` only after checking why it changed.
    """
    targets, _ = _named_hosts(inventory, hosts)
    if fingerprint and len(targets) != 1:
        remote.fail("error: --fingerprint names one host's key; add --hosts NAME")
    for host in targets:
        try:
            print(
                hostkeys.trust(
                    host.name, host.address, host.ssh_port, host.known_hosts, fingerprint
                ),
                flush=True,
            )
        except (*remote.FAILURES, EOFError) as exc:
            remote.fail(f"error: {exc}")


@task(
    help={
        "hosts": "comma-separated inventory host names, the lb included (default: all)",
        "inventory": INVENTORY_HELP,
    }
)
def unlock(c, hosts="", inventory=""):
    """Remove a stale deploy lock, the lb's too.

    Only when no deploy is running: `fab status` shows who holds it and since when. A rolling
    deploy takes one on the lb; there this also names detectors a cut-off roll left drained
    (the next `fab deploy` puts them back).
    """
    targets, balancer = _named_hosts(inventory, hosts)

    def drop(cc, host):
        held = lock.status(cc, host.lock_dir)
        if held:
            lock.release(cc, host.lock_dir)
        remote.say(host, f"removed: {held}" if held else "no deploy lock")
        if balancer and host.name == balancer.host.name:
            down = rolling.drained(cc, balancer)
            remote.say(host, "detectors drained here: " + (", ".join(down) or "none"))

    _each(targets, drop)
