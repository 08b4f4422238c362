"""Build the wheel from a clean git ref, install it as a release venv, prune old releases."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fabric import Connection

from deploy import commands
from deploy import history
from deploy.health import SMOKE_IMAGE
from deploy.inventory import REPO
from deploy.inventory import Host
from deploy.remote import DeployError
from deploy.remote import probe
from deploy.remote import run
from deploy.remote import say
from deploy.switch import release_of
from deploy.switch import target_of

REVISION = "REVISION"  # in a release dir: the full git sha it was built from (`fab status`)


@dataclass(frozen=True)
class Artifact:
    """A built wheel and the commit it came from."""

    wheel: Path
    sha: str
    ref: str


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise DeployError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout


def dirty_files(repo: Path) -> list[str]:
    """Tracked files with uncommitted changes (untracked files never reach the wheel)."""
    out = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return [line[3:] for line in out.splitlines() if line.strip()]


def build(ref: str = "HEAD", allow_dirty: bool = False, repo: Path = REPO, out: Path | None = None):
    """Export `ref` with `git archive` and build the wheel from that clean copy only.

    A dirty working tree is refused unless allow_dirty: its changes would not be shipped.
    """
    dirty = dirty_files(repo)
    if dirty and not allow_dirty:
        raise DeployError(
            f"working tree has {len(dirty)} uncommitted change(s) (e.g. {dirty[0]}) that would "
            f"not be deployed; commit them or pass --allow-dirty to ship {ref} as committed"
        )
    sha = _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}").strip()
    out = out or Path(tempfile.mkdtemp(prefix="detector-build-"))
    src = out / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", sha],
        capture_output=True,
        timeout=120,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True, timeout=120)
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-input", "--quiet"]
    argv += ["--disable-pip-version-check", "--wheel-dir", str(out / "dist")]
    if importlib.util.find_spec("setuptools"):
        argv.append("--no-build-isolation")  # build offline with the local setuptools
    proc = subprocess.run(argv + [str(src)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise DeployError(f"building the wheel of {sha[:8]} failed: {proc.stderr.strip()[-800:]}")
    wheels = sorted((out / "dist").glob("*.whl"))
    if len(wheels) != 1:
        raise DeployError(f"expected one wheel in {out / 'dist'}, found {len(wheels)}")
    shutil.rmtree(src)
    return Artifact(wheels[0], sha, ref)


def install(c: Connection, host: Host, art: Artifact, rid: str) -> str:
    """Make releases/<rid>/ a venv over the base env with only the wheel installed; import it.

    Besides the venv the directory holds only what something reads: REVISION (`fab status`)
    and the COMPLETE marker (rollback). The id is the directory's name (the service reads it
    from its path). Nothing running is touched. A failed install removes the half-made directory.
    """
    rel = host.release_dir(rid)
    run(c, ["mkdir", "-p", host.releases_dir, f"{host.app_root}/colors", host.staging_dir])
    if probe(c, ["test", "-e", rel])[0]:
        raise DeployError(f"release {rid} already exists on {host.name}; wait a second and retry")
    try:
        run(c, commands.make_venv(host.base_python, rel), timeout=120)
        rel_python = f"{rel}/bin/python"
        run(c, commands.link_base_env(rel_python, host.base_python))
        run(c, ["mkdir", "-p", f"{rel}/dist"])
        remote_wheel = f"{rel}/dist/{art.wheel.name}"
        c.put(str(art.wheel), remote=remote_wheel)
        run(c, commands.pip_install_wheel(rel_python, remote_wheel), timeout=300)
        run(c, ["rm", "-rf", "--", f"{rel}/dist"])  # installed: the wheel is not read again
        run(c, commands.write_file(f"{rel}/{REVISION}", art.sha + "\n"))
        run(c, commands.import_check(rel_python), timeout=180)
        run(
            c, commands.write_file(f"{rel}/{history.COMPLETE}", "install and import check passed\n")
        )
    except BaseException:
        probe(c, ["rm", "-rf", "--", rel], timeout=120)
        raise
    return rel


def discard(c: Connection, host: Host, rel: str) -> None:
    """Mark a release that failed its checks FAILED, then remove it: never a rollback target.

    The marker comes first, so a removal cut short still leaves a refused release.
    """
    if mark_failed(c, host, release_of(rel), "deploy: smoke check or gate failed"):
        probe(c, ["rm", "-rf", "--", rel], timeout=120)


def mark_failed(c: Connection, host: Host, rid: str, why: str) -> bool:
    """Write <rid>/FAILED (never on the current release); False when it was not written.

    A FAILED release is never chosen by `fab rollback`, nor accepted by `--to`.
    """
    rel = host.release_dir(rid)
    if not commands.is_release_id(rid) or rid == current_id(c, host):
        return False
    write = commands.write_file(f"{rel}/{history.FAILED}", why + "\n")
    ok, _ = probe(c, f"test -d {shlex.quote(rel)} && {write}")
    return ok


def current_id(c: Connection, host: Host) -> str:
    """The release `current` resolves to (through a color link too), '' when none."""
    ok, out = probe(c, ["readlink", "-f", host.current_link])
    rid = release_of(out) if ok else ""
    return rid if commands.is_release_id(rid) else ""


def history_file(host: Host) -> str:
    """Where successful switches are recorded (shared/, survives pruning)."""
    return f"{host.shared_dir}/{history.HISTORY}"


def state(c: Connection, host: Host) -> history.State:
    """Releases, their markers and the history, in one round trip."""
    _, out = probe(c, history.state_command(host.releases_dir, history_file(host)), timeout=60)
    return history.parse_state(out + "\n", current_id(c, host))


def record_live(c: Connection, host: Host, kind: str, rid: str, previous: str) -> None:
    """Append a passed switch to the history; a previous release from before markers is adopted.

    Adopted: it was serving, so its install was complete (fab removed failed installs).
    A rollback cut off after its switch (history.cut_off_rollback) is written down first,
    so the release it moved away from stays skipped by later rollbacks.
    """
    line = history.history_line(kind, rid, previous)
    cut = history.cut_off_rollback(state(c, host).history, previous)
    if cut:
        line = history.history_line(cut.kind, cut.rid, cut.previous) + line
    ok, _ = probe(c, f"printf %s {shlex.quote(line)} >> {shlex.quote(history_file(host))}")
    if not ok:
        say(host, f"warning: could not record {rid} in {history_file(host)}; rollback skips it")
    if previous and commands.is_release_id(previous):
        prev = host.release_dir(previous)
        marks = [f"{prev}/{history.COMPLETE}", f"{prev}/{history.FAILED}"]
        adopt = commands.write_file(marks[0], "adopted: was live before markers existed\n")
        probe(
            c,
            f"test -d {shlex.quote(prev)} && ! test -e {shlex.quote(marks[0])} && "
            f"! test -e {shlex.quote(marks[1])} && {adopt}",
        )


def upload_smoke_image(c: Connection, host: Host) -> str:
    """The bundled image the smoke check posts to the idle color."""
    remote = f"{host.staging_dir}/smoke.jpg"
    run(c, ["mkdir", "-p", host.staging_dir])
    c.put(str(SMOKE_IMAGE), remote=remote)
    return remote


def listing(c: Connection, host: Host) -> list[str]:
    """Release ids on the host, oldest first."""
    ok, out = probe(c, commands.list_dir(host.releases_dir))
    names = out.splitlines() if ok else []
    return sorted(n for n in names if commands.is_release_id(n))


def protected(c: Connection, host: Host) -> set[str]:
    """Releases prune keeps: current, both colors' and the one `fab rollback` would pick."""
    links = [host.color_link(col) for col in commands.COLORS]
    keep = {release_of(target_of(c, link)) for link in links}
    st = state(c, host)
    return (keep | {st.current, history.target_or_none(st)}) - {""}


def prune(c: Connection, host: Host) -> list[str]:
    """Delete the oldest releases beyond detector_releases_keep, never one in use."""
    doomed = commands.releases_to_prune(listing(c, host), host.releases_keep, protected(c, host))
    if doomed:
        run(c, commands.remove_releases(host.releases_dir, doomed), timeout=300)
    return doomed
