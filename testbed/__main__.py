"""CLI: ``python -m testbed up [--hosts N] | status | ssh HOST [CMD] | down``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys

from .bed import Testbed
from .bed import bed_ids
from .bed import live_owner
from .bed import teardown
from .hosts import ssh_argv
from .network import link_bed_id
from .network import owned_links


def _pick(bed_id: int | None) -> int:
    ids = bed_ids()
    if bed_id is not None:
        if bed_id not in ids:
            raise SystemExit(f"testbed: no bed {bed_id}; running beds: {ids or 'none'}")
        return bed_id
    if len(ids) == 1:
        return ids[0]
    unowned = [i for i in ids if live_owner(i) is None]
    if len(unowned) == 1:
        return unowned[0]
    if not ids:
        raise SystemExit("testbed: no bed is up; run `python -m testbed up`")
    raise SystemExit(f"testbed: several beds are up ({ids}); pick one with --bed N")


def _on_term(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one verb."""
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    parser.add_argument("--bed", type=int, help="bed id (default: the only one up)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="create a bed and boot hosts")
    up.add_argument("--hosts", type=int, default=1)
    up.add_argument("--suite", default="bookworm", choices=["bookworm", "bullseye"])
    up.add_argument("--wheelhouse", metavar="REQUIREMENTS", help="also build and serve wheels")
    status = verbs.add_parser("status", help="show beds, hosts, processes")
    status.add_argument("--all", action="store_true")
    ssh = verbs.add_parser("ssh", help="ssh to a host as admin")
    ssh.add_argument("host")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    down = verbs.add_parser("down", help="tear a bed down (also a crashed one)")
    down.add_argument("--all", action="store_true", help="every bed, and links left without state")
    down.add_argument(
        "--force", action="store_true", help="also beds a running pytest session owns"
    )
    for sub in (up, status, ssh, down):
        sub.add_argument("--bed", type=int, default=argparse.SUPPRESS, help="bed id")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("testbed: must run as root (systemd-nspawn, bridges)")
    signal.signal(signal.SIGTERM, _on_term)

    if args.verb == "up":
        bed = Testbed.allocate(args.suite).up(args.hosts)
        if args.wheelhouse:
            bed.build_wheelhouse(args.wheelhouse)
        print(json.dumps(bed.status(), indent=2))
        print(f"ssh: python -m testbed --bed {bed.id} ssh host1")
        return 0
    if args.verb == "status":
        ids = bed_ids() if args.all or args.bed is None else [_pick(args.bed)]
        print(json.dumps([Testbed.load(i).status() for i in ids], indent=2))
        return 0
    if args.verb == "ssh":
        bed = Testbed.load(_pick(args.bed))
        command = " ".join(args.command) if args.command else None
        argv_ = ssh_argv(bed.host(args.host), command, tty=command is None and sys.stdin.isatty())
        os.execvp(argv_[0], argv_)
    if args.verb == "down":
        ids = bed_ids() if args.all else [_pick(args.bed)]
        for bed_id in ids:
            owner = live_owner(bed_id)
            if owner is not None and not args.force:
                who = "a session starting now" if owner < 0 else f"running process {owner}"
                print(
                    f"testbed {bed_id}: left up, it belongs to {who} "
                    "(a pytest session tears its bed down itself); add --force to take it down"
                )
                continue
            teardown(bed_id)
            print(f"testbed {bed_id}: down")
        if args.all:
            remaining = set(bed_ids())
            for link in owned_links():  # links of beds whose state dir is gone
                if link_bed_id(link) not in remaining:
                    subprocess.run(["ip", "link", "del", link], check=False)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
