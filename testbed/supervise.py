"""Run systemd-nspawn for one host and boot it again when the host reboots, as a hypervisor would.

Standalone (stdlib only): ``python supervise.py --record FILE -- systemd-nspawn ...``. The nspawn
PID is written to FILE in the process table's format, so teardown can stop it by PID even if this
supervisor dies. SIGTERM powers the host off (nspawn forwards a clean shutdown) and exits.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

REBOOT_STATUS = 133  # systemd-nspawn's exit status when the container asked for a reboot
STOP_TIMEOUT = 15.0


def start_time(pid: int) -> int:
    """Return the kernel start time of pid, the identity check used by the process table."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def main() -> int:
    """Boot the machine until it powers off or this supervisor is told to stop."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    stopping = False
    child: subprocess.Popen | None = None

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    boots = 0
    while not stopping:
        boots += 1
        print(f"supervise: boot {boots} of {args.name}", flush=True)
        child = subprocess.Popen(argv)
        record = {
            "name": args.name,
            "pid": child.pid,
            "start_time": start_time(child.pid),
            "argv": argv,
        }
        tmp = args.record.with_name(f".{args.record.name}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.rename(args.record)
        while child.poll() is None:
            try:
                child.wait(timeout=1)
            except subprocess.TimeoutExpired:
                continue
        rc = child.returncode
        print(f"supervise: {args.name} exited with {rc}", flush=True)
        if stopping or rc != REBOOT_STATUS:
            break
        time.sleep(0.2)
    if child is not None and child.poll() is None:
        try:
            child.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    args.record.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
