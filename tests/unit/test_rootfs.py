"""testbed.rootfs: the suites a bed can boot, and what a failed debootstrap says."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from testbed.rootfs import SUITES
from testbed.rootfs import debootstrap
from testbed.rootfs import ensure_rootfs
from testbed.rootfs import rootfs_key


def test_unknown_suite_is_refused_before_any_work(tmp_path: Path):
    with pytest.raises(ValueError, match=r"suite 'trixie' is not supported; use one of bookworm"):
        ensure_rootfs("trixie", cache_dir=tmp_path, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_bullseye_is_a_suite_with_python_3_9_and_its_own_cache_key():
    assert SUITES["bullseye"] == "3.9" and SUITES["bookworm"] == "3.11"
    packages = ("python3",)
    mirror = "http://deb.debian.org/debian"
    assert rootfs_key("bullseye", packages, mirror) != rootfs_key("bookworm", packages, mirror)


def test_failed_debootstrap_names_the_suite_the_mirror_and_what_to_check(tmp_path: Path):
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("needs root and debootstrap (make setup)")
    mirror = "http://127.0.0.1:9/debian"  # discard port: nothing listens, fails at once
    with pytest.raises(RuntimeError) as failed:
        debootstrap("bullseye", tmp_path / "root", mirror, ("python3",))
    message = str(failed.value)
    assert message.startswith(
        f"debootstrap bullseye from {mirror} failed (exit 1): E: Failed getting release file"
    )
    assert f"check that the mirror serves {mirror}/dists/bullseye/Release" in message
