"""Start daemons with their PID recorded in the bed's state dir, and stop them by that PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path


def start_time(pid: int) -> int | None:
    """Return the kernel start time of pid (clock ticks), None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def alive(record: Mapping[str, int]) -> bool:
    """Return True if the recorded process still runs (same PID and same start time)."""
    return start_time(record["pid"]) == record["start_time"]


# Popen objects of daemons this process started: kept alive until stopped, then reaped.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class ProcessTable:
    """The processes one bed started: ``pids/<name>.json`` files holding pid, start time, argv."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "pids"
        self.logs = state_dir / "logs"

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start argv in its own session, log to ``logs/<name>.log``, record it, return its PID."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        self.record(name, proc.pid, argv)
        return proc.pid

    def record(self, name: str, pid: int, argv: Sequence[str] = ()) -> None:
        """Record a process started elsewhere (e.g. nspawn started by a host's supervisor)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        started = start_time(pid)
        data = {"name": name, "pid": pid, "start_time": started, "argv": list(argv)}
        tmp = self.dir / f".{name}.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.rename(self.dir / f"{name}.json")

    def records(self) -> list[dict]:
        """Return every recorded process, alive or not."""
        if not self.dir.is_dir():
            return []
        out = []
        for path in sorted(self.dir.glob("*.json")):
            with contextlib.suppress(ValueError, OSError):
                out.append(json.loads(path.read_text()))
        return out

    def get(self, name: str) -> dict | None:
        """Return the record of name, or None."""
        path = self.dir / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def running(self) -> list[dict]:
        """Return the recorded processes that still run."""
        return [r for r in self.records() if r.get("start_time") is not None and alive(r)]

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """Stop the recorded process name (SIGTERM to its PID, SIGKILL after timeout)."""
        record = self.get(name)
        if record is not None:
            stop_pids([record], timeout)
            (self.dir / f"{name}.json").unlink(missing_ok=True)

    def stop_all(self, timeout: float = 10.0, prefix: str = "") -> None:
        """Stop every recorded process whose name starts with prefix, all at once."""
        records = [r for r in self.records() if r["name"].startswith(prefix)]
        stop_pids(records, timeout)
        for r in records:
            (self.dir / f"{r['name']}.json").unlink(missing_ok=True)


def stop_pids(records: list[dict], timeout: float = 10.0) -> None:
    """SIGTERM each still-running recorded PID, wait up to timeout, then SIGKILL the rest."""
    live = [r for r in records if r.get("start_time") is not None and alive(r)]
    for r in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(r["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        for r in live:
            _reap(r["pid"])
        live = [r for r in live if alive(r)]
        if live:
            time.sleep(0.1)
    for r in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(r["pid"], signal.SIGKILL)
    for r in live:
        for _ in range(50):
            _reap(r["pid"])
            if not alive(r):
                break
            time.sleep(0.1)
    for r in records:
        child = _CHILDREN.pop(r["pid"], None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
