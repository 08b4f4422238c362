"""Pure builders of the remote commands a deploy runs: argv lists and shell strings, no I/O."""

from __future__ import annotations

import re
import shlex
from datetime import datetime
from datetime import timezone

COLORS = ("blue", "green")
SYSTEMCTL = "/usr/bin/systemctl"
JOURNALCTL = "/usr/bin/journalctl"
ACTIVATE = "/usr/local/sbin/detector-activate"  # root helper (ansible deploy_access role)
CURL = "/usr/bin/curl"
RELEASE_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{7,40}(?:-dirty)?$")
BASE_PTH = "_detector_base_env.pth"
STATUS_PROPERTIES = (
    "ActiveState",
    "SubState",
    "MainPID",
    "ActiveEnterTimestamp",
    "MemoryCurrent",
    "TasksCurrent",
    "NRestarts",
)


def shell(argv: list[str] | tuple[str, ...]) -> str:
    """Quote an argv for the remote shell."""
    return shlex.join(str(a) for a in argv)


def bounded(argv: list[str], seconds: int) -> str:
    """Wrap argv with a hard timeout and no pager, as every remote command must run."""
    return "SYSTEMD_PAGER= PAGER=cat " + shell(["timeout", "-k", "5", str(int(seconds)), *argv])


def sudo(argv: list[str]) -> list[str]:
    """Run argv as root without ever prompting (sudoers must allow this exact argv)."""
    return ["sudo", "-n", *argv]


def release_id(sha: str, when: datetime | None = None, dirty: bool = False) -> str:
    """Name a release `<UTC-timestamp>-<short sha>`: sortable, unique per second and commit."""
    when = (when or datetime.now(timezone.utc)).astimezone(timezone.utc)
    rid = f"{when:%Y%m%dT%H%M%SZ}-{sha[:8]}"
    return rid + "-dirty" if dirty else rid


def is_release_id(name: str) -> bool:
    """Tell a release directory name from anything else in releases/."""
    return bool(RELEASE_RE.match(name))


def unit(service: str, color: str) -> str:
    """The systemd instance that runs one color."""
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, got {color!r}")
    return f"{service}@{color}.service"


def other_color(color: str) -> str:
    """The idle color next to the live one."""
    return COLORS[1 - COLORS.index(color)]


def systemctl(verb: str, unit_name: str) -> list[str]:
    """A systemctl call in the exact form the sudoers rules allow."""
    return [SYSTEMCTL, "--no-pager", verb, unit_name]


def systemctl_show(unit_name: str, properties: tuple[str, ...] = STATUS_PROPERTIES) -> list[str]:
    """Unit state as KEY=VALUE lines (no root needed)."""
    return [SYSTEMCTL, "--no-pager", "show", unit_name, "-p", ",".join(properties)]


def journal(units: list[str], lines: int = 100, follow: bool = False) -> list[str]:
    """Recent log lines of the given units."""
    argv = [JOURNALCTL, "--no-pager", "-o", "short-iso"]
    for name in units:
        argv += ["-u", name]
    argv += ["-n", str(int(lines))]
    return argv + ["-f"] if follow else argv


def switch_symlink(target: str, link: str) -> str:
    """Point link at target atomically: a fresh temporary link renamed over it (`mv -T`)."""
    tmp = f"{link}.tmp"
    return f"{shell(['ln', '-sfn', target, tmp])} && {shell(['mv', '-T', tmp, link])}"


def read_symlink(link: str) -> list[str]:
    """The path a link finally resolves to (empty output and non-zero exit when dangling/absent).

    `current` -> colors/<color> -> releases/<id>: the release path either way.
    """
    return ["readlink", "-e", "--", link]


def make_venv(base_python: str, release_dir: str) -> list[str]:
    """An empty venv for one release, created by the provisioned env's interpreter."""
    return [base_python, "-m", "venv", "--without-pip", release_dir]


def link_base_env(release_python: str, base_python: str) -> str:
    """Make the release venv see the base env's packages after its own (a .pth with addsitedir).

    `--system-site-packages` would point at the interpreter's installation, which for a venv base
    is /usr, not the base venv; addsitedir also runs the base env's own .pth files.
    """
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    base_site = "$(" + shell([base_python, "-c", purelib]) + ")"
    script = (
        "import pathlib, sys, sysconfig; "
        "site = pathlib.Path(sysconfig.get_path('purelib')); "
        f"(site / {BASE_PTH!r}).write_text("
        "'import site; site.addsitedir(%r)\\n' % sys.argv[1])"
    )
    return f"{shell([release_python, '-c', script])} {base_site}"


def pip_install_wheel(release_python: str, wheel: str) -> list[str]:
    """Install only the project wheel into the release venv; dependencies come from the base env."""
    return [
        release_python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--ignore-installed",
        "--no-index",
        "--no-input",
        "--disable-pip-version-check",
        "--no-cache-dir",
        "--quiet",
        wheel,
    ]


def import_check(release_python: str) -> list[str]:
    """Import the app from the release (not from the base env) and print where it came from."""
    script = (
        "import sys, detector, detector.app; "
        "assert detector.__file__.startswith(sys.prefix), "
        "f'detector imported from {detector.__file__}, not from {sys.prefix}'; "
        "print(detector.__file__)"
    )
    return [release_python, "-c", script]


def write_file(path: str, content: str) -> str:
    """Write a small text file (no secrets) with printf."""
    return f"printf %s {shlex.quote(content)} > {shlex.quote(path)}"


def curl_unix(socket: str, path: str, seconds: int, upload: str | None = None) -> list[str]:
    """An HTTP request to one color's gunicorn socket; prints the body, a newline and the status."""
    argv = [CURL, "--silent", "--show-error", "--max-time", str(int(seconds))]
    argv += ["--unix-socket", socket, "--write-out", "\\n%{http_code}"]
    if upload:
        argv += ["--form", f"file=@{upload};type=image/jpeg"]
    return argv + [f"http://localhost{path}"]


def activate(color: str) -> list[str]:
    """Make color live through the root helper: record, nginx include, `current`, check, reload.

    The helper takes only a color it checks against its root-owned config (sudoers: exact argv).
    """
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, got {color!r}")
    return sudo([ACTIVATE, color])


def lb_drain(name: str, down: bool) -> list[str]:
    """On the lb: take detector name out of the upstream (down) or put it back (up)."""
    return sudo([ACTIVATE, "down" if down else "up", name])


def sync_live() -> list[str]:
    """Re-derive the include and `current` from the live record (after an interrupted switch)."""
    return sudo([ACTIVATE, "--sync"])


def live_record(service: str, lb: bool = False) -> str:
    """THE record of what nginx serves, root-owned and world-readable (deploy_access role)."""
    return f"/var/lib/{service}/{'lb-drained' if lb else 'live-color'}"


def list_dir(path: str) -> list[str]:
    """Names in a directory, one per line."""
    return ["ls", "-1", path]


def releases_to_prune(names: list[str], keep: int, protect: set[str]) -> list[str]:
    """The oldest release names beyond `keep`, never one in `protect` (live or idle color)."""
    ordered = sorted(n for n in names if is_release_id(n))
    extra = len(ordered) - max(int(keep), 1)
    doomed = []
    for name in ordered:
        if extra <= 0:
            break
        if name not in protect:
            doomed.append(name)
            extra -= 1
    return doomed


def remove_releases(releases_dir: str, names: list[str]) -> list[str]:
    """Delete release directories by name."""
    return ["rm", "-rf", "--", *(f"{releases_dir}/{n}" for n in names)]


def worker_stats(main_pid: int) -> list[str]:
    """Children of the gunicorn master: pid, RSS in KiB, threads."""
    return ["ps", "--no-headers", "--ppid", str(int(main_pid)), "-o", "pid=,rss=,nlwp="]


def process_rss(pid: int) -> list[str]:
    """RSS in KiB of one process."""
    return ["ps", "--no-headers", "-p", str(int(pid)), "-o", "rss="]


def nginx_draining() -> list[str]:
    """Count nginx workers still finishing requests after a reload."""
    return ["sh", "-c", "ps -eo args= | grep -c '^nginx: worker process is shutting down' || true"]


RENEW_INSTANCES = {"force": "--force-renewal", "dry-run": "--dry-run"}  # flag fixed in the unit


def renew_unit(service: str, force: bool, dry_run: bool) -> str:
    """The renewal unit to start: the timer's own, or its twin `<name>@force|@dry-run.service`.

    The twin's flag is written in its root-owned unit file: nothing is set in the service
    manager's environment, so a dropped connection can never leave a flag for later timer runs.
    """
    if force and dry_run:
        raise ValueError("--dry-run always gets a test certificate; drop --force")
    if not force and not dry_run:
        return service
    name = service.removesuffix(".service")
    return f"{name}@{'force' if force else 'dry-run'}.service"


def renew_cert(service: str, force: bool, dry_run: bool) -> list[str]:
    """Start one renewal run (sudoers allows exactly these starts)."""
    return sudo(systemctl("start", renew_unit(service, force, dry_run)))


def curl_http(url: str, seconds: int, upload: str | None = None) -> list[str]:
    """Plain HTTP on the host itself (a detector's private port): headers, body, then status."""
    argv = [CURL, "--silent", "--show-error", "--include", "--max-time", str(int(seconds))]
    argv += ["--write-out", "\\n%{http_code}"]
    if upload:
        argv += ["--form", f"file=@{upload};type=image/jpeg"]
    return argv + [url]


def parse_included(out: str) -> tuple[int, dict, str]:
    """Split `curl --include` output with a trailing status line: (status, headers, body).

    Header names are lower-cased; of several header blocks (100 Continue) the last one counts.
    """
    text, _, code = out.replace("\r\n", "\n").rpartition("\n")
    status = int(code) if code.strip().isdigit() else 0
    head, body = text, ""
    while head.startswith("HTTP/"):
        head, _, body = head.partition("\n\n")
        if not body.startswith("HTTP/"):
            break
        head = body
    headers = {}
    for line in head.splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers, body
