"""Facts about the machine this process runs on: CPUs and memory, cgroup limits included."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_count() -> int:
    """Return the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _meminfo_mb(key: str) -> int:
    """Return one /proc/meminfo value in MB, or 0 if unknown."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def cgroup_limit_mb() -> int:
    """Return the tightest cgroup memory limit over this process's cgroup and its parents, or 0.

    cgroup v2 (memory.max; under systemd the unit's MemoryMax) or v1 (memory.limit_in_bytes).
    """
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            lines = [line.strip().split(":", 2) for line in f]
    except OSError:
        return 0
    places = []
    for _, controllers, path in (parts for parts in lines if len(parts) == 3):
        if controllers == "":
            places += [("/sys/fs/cgroup", path, "memory.max")]
            places += [("/sys/fs/cgroup/unified", path, "memory.max")]
        elif "memory" in controllers.split(","):
            places += [("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes")]
    limits = []
    for root, path, name in places:
        folder = Path(root, path.lstrip("/"))
        for directory in (folder, *folder.parents):
            if len(directory.parts) < len(Path(root).parts):
                break
            try:
                value = (directory / name).read_text().strip()
            except OSError:
                continue
            if value.isdigit() and int(value) < 1 << 60:  # v1 "unlimited" is near 2**63
                limits.append(int(value) >> 20)
    return min(limits, default=0)


def memory_total_mb() -> int:
    """Return the machine's RAM (MemTotal), capped by a cgroup v2 memory limit; 0 if unknown."""
    total = _meminfo_mb("MemTotal")
    limit = cgroup_limit_mb()
    return min(total, limit) if total and limit else total or limit


def memory_available_mb() -> int:
    """Return the memory free for new processes (MemAvailable), capped by a cgroup limit."""
    available = _meminfo_mb("MemAvailable")
    limit = cgroup_limit_mb()
    return min(available, limit) if available and limit else available or limit
