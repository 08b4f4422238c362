"""What runs on a host: release, sha, uptime, model, workers, memory, health, certificates.

`fab status` exits non-zero when a served certificate has under ALERT_DAYS days left, cannot be
read, or the last renewal run failed (the certbot role's OnFailure= unit leaves a marker).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
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
from deploy import tls
from deploy.inventory import Host
from deploy.remote import FAILURES
from deploy.remote import probe

ALERT_DAYS = 14
RENEWAL_MARKER = "renewal-failed"


@dataclass
class Report:
    """Status lines for one host and the problems that make `fab status` fail."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


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


def engine_label(version: dict) -> str:
    """Return the engine a served /version reports, with its precision (e.g. openvino-bf16)."""
    engine = version.get("engine")
    if not engine:
        return "- (model not loaded)"
    precision = version.get("precision")
    return f"{engine}-{precision}" if precision else engine


def expiry_problem(served: cert.Served, now: datetime | None = None) -> str:
    """Why a served certificate fails `fab status` (under ALERT_DAYS days left), or ""."""
    days = served.days_left(now)
    if days >= ALERT_DAYS:
        return ""
    return (
        f":{served.port} certificate expires {served.not_after:%Y-%m-%d %H:%M}Z, in {days:.1f} "
        f"days (under {ALERT_DAYS}); renew it with `fab renew-cert --force` and find out why "
        "the timer did not"
    )


def renewal_problem(marker: str) -> str:
    """The renewal-failed marker's content (unit=..., at=...) as a problem, or ""."""
    fields = dict(line.split("=", 1) for line in marker.splitlines() if "=" in line)
    if not fields:
        return ""
    unit = fields.get("unit", "the renewal unit")
    return (
        f"certificate renewal FAILED ({unit} at {fields.get('at', '?')}); see "
        f"`journalctl -u {unit}` on the host, fix the cause, then run `fab renew-cert`"
    )


def certificates(c: Connection, host: Host, now: datetime | None = None) -> Report:
    """The TLS part: how the chain is trusted, each port's leaf and expiry, a failed renewal."""
    out = Report()
    if host.cert_state_dir:
        _, marker = probe(c, ["cat", f"{host.cert_state_dir}/{RENEWAL_MARKER}"])
        problem = renewal_problem(marker)
        out.lines.append(problem or "last certificate renewal run: ok")
        out.problems += [problem] if problem else []
    for port in host.https_ports:
        try:
            served = cert.served(host, port)
        except (OSError, ValueError) as exc:  # its expiry is unknown: that fails the check too
            out.lines.append(f"cert :{port} unreadable: {exc}")
            out.problems.append(
                f":{port} serves no readable certificate ({exc}), so its expiry is unknown; "
                f"check nginx on {host.name} (`systemctl status nginx`) and the port's firewall"
            )
            continue
        out.lines.append("cert " + cert.describe(served))
        problem = expiry_problem(served, now)
        out.problems += [problem] if problem else []
    return out


def check(c: Connection, host: Host) -> Report:
    """Status lines and problems for one host; unreachable parts say so instead of failing."""
    out = Report(lines=report(c, host))
    if not host.backend_port:  # behind an lb the certificate is the lb's (fab status checks it)
        tls_part = certificates(c, host)
        out.lines += tls_part.lines
        out.problems += tls_part.problems
    return out


def report(c: Connection, host: Host) -> list[str]:
    """Status lines for one host (certificates: see certificates()); never raises on a check."""
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
    trust = None
    if not host.backend_port:
        try:
            trust = tls.trust_for(c, host)
            lines.append(f"TLS: {trust.describe()}")
        except FAILURES as exc:
            lines.append(f"TLS: cannot read the installed certificate: {exc}")
    for port in host.https_ports if trust else ():
        try:
            ver = health.https(host, port, "GET", "/version", timeout=10, trust=trust)
            ready = health.https(host, port, "GET", "/readyz", timeout=10, trust=trust)
            info = ver.json() if ver.status == 200 else {}
            lines.append(
                f":{port} /readyz {ready.status}, release "
                f"{ready.headers.get(health.RELEASE_HEADER.lower(), '-')}, "
                f"model {info.get('model', '-')}, engine {engine_label(info)}"
            )
        except (OSError, ValueError) as exc:
            lines.append(f":{port} unreachable: {exc}")
    kept = release.state(c, host)
    lines.append(f"releases kept ({len(kept.releases)}), oldest first:")
    lines += ["  " + line for line in history.describe(kept)] or ["  none"]
    held = lock.status(c, host.lock_dir)
    lines.append(held or "deploy lock free")
    return lines
