"""Package access for the hosts: tinyproxy to the Debian mirror only, and a pip wheelhouse."""

from __future__ import annotations

import hashlib
import html
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from .paths import CACHE_DIR
from .paths import PACKAGE_DIR
from .processes import ProcessTable
from .rootfs import debian_mirror
from .rootfs import file_lock
from .rootfs import sha256_file

PROXY_PORT = 8888
WHEELHOUSE_PORT = 8080
DEFAULT_REQUIREMENTS = PACKAGE_DIR / "wheelhouse-requirements.txt"


def start_proxy(table: ProcessTable, state_dir: Path, listen: str, allow: str) -> str:
    """Start tinyproxy on listen, open to the allow subnet, forwarding only to the Debian mirror."""
    base = state_dir / "proxy"
    base.mkdir(parents=True, exist_ok=True)
    mirror_host = urlparse(debian_mirror()).hostname or "deb.debian.org"
    filter_file = base / "filter"
    filter_file.write_text(f"^{re.escape(mirror_host)}$\n")
    conf = base / "tinyproxy.conf"
    conf.write_text(
        f"Port {PROXY_PORT}\nListen {listen}\nTimeout 120\nMaxClients 50\n"
        f'Allow {allow}\nFilter "{filter_file}"\nFilterType ere\nFilterURLs Off\n'
        "FilterDefaultDeny Yes\nConnectPort 443\nLogLevel Notice\nDisableViaHeader Yes\n"
    )
    table.start("tinyproxy", ["tinyproxy", "-d", "-c", str(conf)])
    return f"http://{listen}:{PROXY_PORT}"


def requirements_key(requirements: str) -> str:
    """Return the cache key of a wheelhouse: requirements text and this Python's version."""
    text = f"{sys.version_info[:2]}\n{requirements}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_wheelhouse(
    requirements_file: Path = DEFAULT_REQUIREMENTS, cache_dir: Path = CACHE_DIR
) -> Path:
    """Build (or reuse) a wheelhouse for requirements_file with this machine's pip; return its dir.

    Runs ``pip wheel`` with this machine's pip configuration, so the pinned CPU build of torch found
    here is the one the hosts get. The result is cached by requirements content and verified on
    reuse against its ``SHA256SUMS``. Hosts run Python 3.11 (bookworm), the same as this machine.
    """
    requirements = Path(requirements_file).read_text()
    target = cache_dir / f"wheelhouse-{requirements_key(requirements)}"
    with file_lock(cache_dir / f"{target.name}.lock"):
        if _wheelhouse_ok(target):
            return target
        shutil.rmtree(target, ignore_errors=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="wheelhouse-build-") as tmp:
            build = Path(tmp) / "wheels"
            req = Path(tmp) / "requirements.txt"
            req.write_text(requirements)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "-q",
                    "--wheel-dir",
                    str(build),
                    "-r",
                    str(req),
                ],
                check=True,
            )
            sums = [f"{sha256_file(w)}  {w.name}" for w in sorted(build.glob("*.whl"))]
            (build / "SHA256SUMS").write_text("\n".join(sums) + "\n")
            (build / "requirements.txt").write_text(requirements)
            build.rename(target)
    return target


def _wheelhouse_ok(path: Path) -> bool:
    sums = path / "SHA256SUMS"
    if not sums.is_file():
        return False
    for line in sums.read_text().splitlines():
        digest, name = line.split()
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            return False
    return True


def _project(wheel: str) -> str:
    return re.sub(r"[-_.]+", "-", wheel.split("-")[0]).lower()


def publish(wheelhouse: Path, served: Path) -> None:
    """Link the wheels of wheelhouse into the served dir and rewrite its PEP 503 indexes.

    ``served/`` is a find-links page (``index.html`` listing every wheel) and ``served/simple/``
    a PEP 503 simple index, so pip can use it with ``--find-links`` or ``--index-url``.
    """
    served.mkdir(parents=True, exist_ok=True)
    sums = dict(
        reversed(line.split()) for line in (wheelhouse / "SHA256SUMS").read_text().splitlines()
    )
    for name in sums:
        link = served / name
        if not link.exists():
            link.symlink_to(wheelhouse / name)
    digests = {}
    for link in sorted(served.glob("*.whl")):
        digests[link.name] = sha256_file(link.resolve())
    anchors = [
        f'<a href="{html.escape(n)}#sha256={d}">{html.escape(n)}</a><br>'
        for n, d in digests.items()
    ]
    (served / "index.html").write_text(
        "<!DOCTYPE html>\n<html><body>\n" + "\n".join(anchors) + "\n</body></html>\n"
    )
    projects: dict[str, list[str]] = {}
    for name, digest in digests.items():
        projects.setdefault(_project(name), []).append(
            f'<a href="../../{html.escape(name)}#sha256={digest}">{html.escape(name)}</a><br>'
        )
    simple = served / "simple"
    shutil.rmtree(simple, ignore_errors=True)
    simple.mkdir()
    root = [f'<a href="{p}/">{p}</a><br>' for p in sorted(projects)]
    (simple / "index.html").write_text(
        "<!DOCTYPE html>\n<html><body>\n" + "\n".join(root) + "\n</body></html>\n"
    )
    for project, links in projects.items():
        (simple / project).mkdir()
        (simple / project / "index.html").write_text(
            "<!DOCTYPE html>\n<html><body>\n" + "\n".join(links) + "\n</body></html>\n"
        )


def start_wheelhouse_server(table: ProcessTable, served: Path, listen: str) -> str:
    """Serve the served dir over HTTP on listen only; return the find-links URL."""
    served.mkdir(parents=True, exist_ok=True)
    if not (served / "index.html").exists():
        (served / "index.html").write_text("<!DOCTYPE html>\n<html><body>\n</body></html>\n")
        (served / "simple").mkdir(exist_ok=True)
        (served / "simple" / "index.html").write_text(
            "<!DOCTYPE html>\n<html><body>\n</body></html>\n"
        )
    argv = [sys.executable, "-m", "http.server", "--bind", listen, "--directory", str(served)]
    table.start("wheelhouse", [*argv, str(WHEELHOUSE_PORT)])
    return f"http://{listen}:{WHEELHOUSE_PORT}/"
