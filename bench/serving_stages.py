"""The serving benchmark's per-request breakdown: Server-Timing stages and CPU per request."""

from __future__ import annotations

import os
import statistics
from pathlib import Path


def worker_pids(master_pid: int) -> list[int]:
    """Return the PIDs of the gunicorn master's children (its workers)."""
    return [
        int(pid)
        for pid in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    ]


def cpu_seconds(pids: list[int]) -> float:
    """Return the CPU time (user + system, s) the processes have used; ended ones count 0."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (stat(5) 14, 15)
    return total


def parse_server_timing(value: str) -> dict[str, float]:
    """Return {name: ms} from a Server-Timing header (`decode;dur=3.6, total;dur=20.1`)."""
    result = {}
    for part in value.split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, number = param.strip().partition("=")
            if name and key == "dur":
                try:
                    result[name] = float(number)
                except ValueError:
                    pass
    return result


def stage_medians(timings: list[dict[str, float]]) -> dict[str, float]:
    """Return the median ms of each stage over the requests, in the server's stage order."""
    names = list(dict.fromkeys(name for timing in timings for name in timing))
    return {name: statistics.median(t[name] for t in timings if name in t) for name in names}


def stage_table(results: list[dict]) -> str:
    """Format each row's per-request breakdown: server stages, client p50, CPU per request."""
    names = list(dict.fromkeys(name for r in results for name in r.get("stages", {})))
    lines = [
        "Per request, medians over all windows (ms): the stages the server reports in its "
        "Server-Timing header (`total` = inside the app), the client's p50 (the difference is "
        "gunicorn, the socket and the client), the CPU per request (answers, 503s "
        "included; median of the windows without a worker restart) of the server (master + "
        "workers) and of the load client, and the workers restarted during the windows "
        "(gunicorn's max_requests counts every request).",
        "",
        "| model | layout | "
        + " | ".join(names)
        + " | client p50 | server CPU | client CPU | worker restarts |",
        "|---|---|" + "---:|" * (len(names) + 4),
    ]
    for r in results:
        stages = r.get("stages", {})
        cells = [f"{stages[n]:.1f}" if n in stages else "–" for n in names]
        lines.append(
            f"| {r['model']} | {r['layout']} | " + " | ".join(cells) + f" | {r['client_p50']:.1f}"
            f" | {r['server_cpu_ms']:.1f} | {r['client_cpu_ms']:.1f} | {r['restarts']} |"
        )
    return "\n".join(lines) + "\n"
