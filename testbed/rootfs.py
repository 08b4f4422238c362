"""Debootstrap a minimal Debian rootfs once; cache it as a verified tarball and extracted tree."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

from .paths import CACHE_DIR

# What a bare cloud image of Debian has for our purposes; everything else is Ansible's job.
DEFAULT_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "iproute2",
)
# The Debian suites a host can run, with the python3 each brings (bullseye's is older than the
# service needs: tests/e2e/test_old_python.py provisions it to prove the early stop).
SUITES = {"bookworm": "3.11", "bullseye": "3.9"}
# Bump when customise() changes, so cached tarballs built by an older recipe are not reused.
RECIPE_VERSION = "1"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
ADMIN_USER = "admin"


def debian_mirror() -> str:
    """Return the Debian mirror this machine's apt uses (the first non-security URI)."""
    candidates: list[str] = []
    sources = [Path("/etc/apt/sources.list")]
    sources += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    sources += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("deb "):
                parts = [p for p in line.split() if not p.startswith("[")]
                if len(parts) > 1:
                    candidates.append(parts[1])
            elif line.startswith("URIs:"):
                candidates.extend(line.split()[1:])
    for uri in candidates:
        if re.match(r"^https?://", uri) and uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return FALLBACK_MIRROR


def rootfs_key(suite: str, packages: tuple[str, ...], mirror: str) -> str:
    """Return the cache key of a rootfs: suite, package list, mirror and recipe version."""
    text = "\n".join([RECIPE_VERSION, suite, mirror, *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on path (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def verified(tarball: Path) -> bool:
    """Return True if tarball and its .sha256 sidecar exist and agree."""
    sidecar = tarball.with_name(tarball.name + ".sha256")
    if not (tarball.is_file() and sidecar.is_file()):
        return False
    expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
    return expected == sha256_file(tarball)


def ensure_rootfs(
    suite: str = "bookworm",
    packages: tuple[str, ...] = DEFAULT_PACKAGES,
    cache_dir: Path = CACHE_DIR,
    log: Callable[[str], None] = print,
) -> Path:
    """Return a verified cached rootfs tarball for suite + packages, building it if needed.

    :param suite: Debian suite to debootstrap (bookworm, bullseye).
    :param packages: packages added to the minbase variant.
    :param cache_dir: where tarballs live (outside the repository).
    :return: path of the ``.tar.zst`` tarball; its sha256 sits next to it in ``.sha256``.
    """
    if suite not in SUITES:
        raise ValueError(f"suite {suite!r} is not supported; use one of {', '.join(SUITES)}")
    mirror = debian_mirror()
    key = rootfs_key(suite, packages, mirror)
    tarball = cache_dir / f"rootfs-{suite}-{key}.tar.zst"
    with file_lock(cache_dir / f"rootfs-{suite}-{key}.lock"):
        if verified(tarball):
            return tarball
        if tarball.exists():
            log(f"rootfs: cached {tarball} fails its sha256 check; rebuilding it")
            tarball.unlink()
        log(f"rootfs: debootstrap {suite} from {mirror} (cold, about 1-2 minutes)")
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="build-") as tmp:
            root = Path(tmp) / "root"
            debootstrap(suite, root, mirror, packages)
            customise(root)
            part = tarball.with_name(tarball.name + ".part")
            subprocess.run(
                ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-I", "zstd -T0 -3"]
                + ["-C", str(root), "-cf", str(part), "."],
                check=True,
            )
            part.rename(tarball)
        tarball.with_name(tarball.name + ".sha256").write_text(
            f"{sha256_file(tarball)}  {tarball.name}\n"
        )
        return tarball


def debootstrap(suite: str, root: Path, mirror: str, packages: tuple[str, ...]) -> None:
    """Run debootstrap (minbase + packages); on failure say which suite and mirror failed."""
    argv = ["debootstrap", "--variant=minbase", "--include=" + ",".join(packages)]
    result = subprocess.run(
        argv + [suite, str(root), mirror], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    if result.returncode != 0:
        lines = result.stdout.decode(errors="replace").splitlines()
        tail = " ".join([line for line in lines if line.startswith("E:")] or lines[-3:])
        raise RuntimeError(
            f"debootstrap {suite} from {mirror} failed (exit {result.returncode}): {tail}; check "
            f"that the mirror serves {mirror}/dists/{suite}/Release (old suites move to "
            "archive.debian.org) and that this machine's debian-archive-keyring signs it"
        )


def customise(root: Path) -> None:
    """Make a debootstrapped tree look like a bare cloud image: networkd, sudo user, no keys."""
    subprocess.run(
        ["systemctl", f"--root={root}", "enable", "systemd-networkd"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["chroot", str(root), "useradd", "-m", "-s", "/bin/bash", "-G", "sudo", ADMIN_USER],
        check=True,
    )
    # '*' = no password but not locked, so sshd accepts key logins.
    subprocess.run(["chroot", str(root), "usermod", "-p", "*", ADMIN_USER], check=True)
    sudoers = root / "etc/sudoers.d/90-cloud-admin"
    sudoers.write_text(f"{ADMIN_USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/dbus/machine-id").unlink()
    with contextlib.suppress(FileNotFoundError):
        (root / "etc/hostname").unlink()
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def ensure_base(tarball: Path, log: Callable[[str], None] = print) -> Path:
    """Return the read-only tree extracted from a verified tarball (the hosts' overlay lower dir).

    The tree sits next to the tarball; a marker file beside it holds the tarball's sha256, so a
    rebuilt tarball gets a fresh tree. Hosts never write to it: each host writes to its own upper
    dir, so a bare host costs no copy and deleting one deletes only what it changed.
    """
    base = tarball.with_name(tarball.name.removesuffix(".tar.zst"))
    marker = base.with_name(base.name + ".extracted")
    sidecar = tarball.with_name(tarball.name + ".sha256")
    expected = sidecar.read_text().split()[0]
    with file_lock(base.with_name(base.name + ".lock")):
        if base.is_dir() and marker.is_file() and marker.read_text().strip() == expected:
            return base
        log(f"rootfs: extracting {tarball.name} for the hosts' overlay")
        marker.unlink(missing_ok=True)
        remove_tree(base)
        extract(tarball, base)
        marker.write_text(expected + "\n")
    return base


def extract(tarball: Path, dest: Path) -> None:
    """Extract a cached rootfs tarball into an empty directory dest."""
    dest.mkdir(parents=True, exist_ok=False)
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-I", "zstd -T0"]
        + ["-xpf", str(tarball), "-C", str(dest)],
        check=True,
    )


def remove_tree(path: Path) -> None:
    """Remove a host's rootfs copy, including read-only bits, never following mounts."""
    if path.exists():
        shutil.rmtree(path)
