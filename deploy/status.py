"""What runs on a host: release, sha, uptime, model, workers, memory, health, certificates."""

from __future__ import annotations

from datetime import datetime
from datetime import timezone

from fabric import Connection

from deploy import cert
from deploy import commands
from deploy import health
from deploy import history
from deploy import lock
from deploy import release
from deploy import switch
from deploy.inventory import Host
from deploy.remote import probe


def parse_show(text: str) -> dict:
    """systemctl show KEY=VALUE lines as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def parse_workers(text: str) -> list[tuple[int, int, int]]:
    """ps lines `pid rss threads` as tuples."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return rows


def uptime(since: str, now: datetime | None = None) -> str:
    """A systemd timestamp (`Thu 2026-11-26 01:02:03 UTC`) as a duration."""
    try:
        start = datetime.strptime(" ".join(since.split()[1:3]), "%Y-%m-%d %H:%M:%S")
    except (ValueError, IndexError):
        return "-"
    now = now or datetime.now(timezone.utc)
    secs = int((now.replace(tzinfo=None) - start).total_seconds())
    return f"{secs // 86400}d {secs % 86400 // 3600}h {secs % 3600 // 60}m"


def report(c: Connection, host: Host) -> list[str]:
    """Status lines for one host; unreachable parts say so instead of failing."""
    lines = []
    current = switch.release_of(switch.target_of(c, host.current_link))
    _, sha = probe(c, ["cat", f"{host.release_dir(current)}/REVISION"]) if current else (0, "")
    color = switch.live_color(c, host) or "-"
    lines.append(f"release {current or 'none'} (git {sha[:12] or '-'}), live color {color}")
    if color != "-":
        name = commands.unit(host.service, color)
        _, text = probe(c, commands.systemctl_show(name))
        show = parse_show(text)
        pid = int(show.get("MainPID", "0") or 0)
        _, ps = probe(c, commands.worker_stats(pid)) if pid else (False, "")
        workers = parse_workers(ps)
        _, master = probe(c, commands.process_rss(pid)) if pid else (False, "0")
        rss = sum(w[1] for w in workers) + int(master or 0)
        threads = "/".join(str(w[2]) for w in workers) or "-"
        lines.append(
            f"{name}: {show.get('ActiveState', '?')}/{show.get('SubState', '?')}, "
            f"up {uptime(show.get('ActiveEnterTimestamp', ''))}, "
            f"restarts {show.get('NRestarts', '?')}, "
            f"{len(workers)} worker(s), threads {threads}, RSS {rss / 1024:.0f} MiB"
        )
    if host.backend_port:  # behind the lb: its public ports are the lb's; check on the host
        url = f"http://127.0.0.1:{host.backend_port}/readyz"
        _, out = probe(c, commands.curl_http(url, 10), timeout=20)
        code, headers, _ = commands.parse_included(out)
        served = headers.get(health.RELEASE_HEADER.lower(), "-")
        lines.append(f":{host.backend_port} (behind the lb) /readyz {code}, release {served}")
    for port in () if host.backend_port else host.https_ports:
        try:
            ver = health.https(host, port, "GET", "/version", timeout=10)
            ready = health.https(host, port, "GET", "/readyz", timeout=10)
            info = ver.json() if ver.status == 200 else {}
            lines.append(
                f":{port} /readyz {ready.status}, release "
                f"{ready.headers.get(health.RELEASE_HEADER.lower(), '-')}, "
                f"model {info.get('model', '-')}"
            )
        except (OSError, ValueError) as exc:
            lines.append(f":{port} unreachable: {exc}")
        try:
            lines.append("cert " + cert.describe(cert.served(host, port)))
        except (OSError, ValueError) as exc:
            lines.append(f"cert :{port} unreadable: {exc}")
    kept = release.state(c, host)
    lines.append(f"releases kept ({len(kept.releases)}), oldest first:")
    lines += ["  " + line for line in history.describe(kept)] or ["  none"]
    held = lock.status(c, host.lock_dir)
    lines.append(held or "deploy lock free")
    return lines
