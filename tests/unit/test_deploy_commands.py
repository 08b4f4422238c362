"""deploy/commands.py builders by equality, and the pure helpers of the deploy steps."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from datetime import timezone
from pathlib import Path

import pytest

from deploy import commands
from deploy import health
from deploy import lock
from deploy import status
from deploy.remote import DeployError

WHEN = datetime(2026, 11, 26, 1, 2, 3, tzinfo=timezone.utc)


def test_release_id_is_utc_timestamp_and_short_sha():
    assert commands.release_id("ab12cd34ef56", WHEN) == "20261126T010203Z-ab12cd34"
    assert commands.is_release_id("20261126T010203Z-ab12cd34")
    assert not commands.is_release_id("current")
    assert not commands.is_release_id("20261126T010203Z-ab12cd34.tmp")


def test_bounded_adds_timeout_and_disables_pager():
    cmd = commands.bounded(["journalctl", "-u", "x y"], 30)
    assert cmd == "SYSTEMD_PAGER= PAGER=cat timeout -k 5 30 journalctl -u 'x y'"


def test_sudo_systemctl_matches_the_sudoers_form():
    argv = commands.sudo(commands.systemctl("start", commands.unit("detector", "green")))
    assert argv == [
        "sudo",
        "-n",
        "/usr/bin/systemctl",
        "--no-pager",
        "start",
        "detector@green.service",
    ]


def test_unit_rejects_unknown_color_and_colors_alternate():
    with pytest.raises(ValueError, match="color must be one of"):
        commands.unit("detector", "red")
    assert commands.other_color("blue") == "green"
    assert commands.other_color("green") == "blue"


def test_switch_symlink_uses_rename_not_ln_sfn_on_the_live_link():
    cmd = commands.switch_symlink("/opt/detector/releases/r1", "/opt/detector/current")
    assert cmd == (
        "ln -sfn /opt/detector/releases/r1 /opt/detector/current.tmp && "
        "mv -T /opt/detector/current.tmp /opt/detector/current"
    )


def test_switch_symlink_really_replaces_the_link(tmp_path):
    for name in ("r1", "r2"):
        (tmp_path / name).mkdir()
    link = tmp_path / "current"
    for name in ("r1", "r2"):
        subprocess.run(
            ["sh", "-c", commands.switch_symlink(str(tmp_path / name), str(link))], check=True
        )
        assert link.resolve() == tmp_path / name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "r1", "r2"]


def test_release_venv_builders():
    assert commands.make_venv("/opt/detector/env/bin/python", "/r") == [
        "/opt/detector/env/bin/python",
        "-m",
        "venv",
        "--without-pip",
        "/r",
    ]
    assert commands.pip_install_wheel("/r/bin/python", "/r/dist/d.whl") == [
        "/r/bin/python",
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
        "/r/dist/d.whl",
    ]


def test_curl_unix_builder():
    assert commands.curl_unix("/run/detector/blue.sock", "/api/v1/detect", 60, "/s/smoke.jpg") == [
        "/usr/bin/curl",
        "--silent",
        "--show-error",
        "--max-time",
        "60",
        "--unix-socket",
        "/run/detector/blue.sock",
        "--write-out",
        "\\n%{http_code}",
        "--form",
        "file=@/s/smoke.jpg;type=image/jpeg",
        "http://localhost/api/v1/detect",
    ]


def test_switch_goes_through_the_root_helper_with_names_only():
    helper = "/usr/local/sbin/detector-activate"
    assert commands.activate("green") == ["sudo", "-n", helper, "green"]
    with pytest.raises(ValueError, match="color must be one of"):
        commands.activate("/etc/shadow")
    assert commands.lb_drain("host2", True)[2:] == [helper, "down", "host2"]
    assert commands.lb_drain("host2", False)[-2:] == ["up", "host2"]
    assert commands.sync_live() == ["sudo", "-n", helper, "--sync"]
    assert commands.live_record("detector") == "/var/lib/detector/live-color"
    # no builder puts a file as root any more (the old `install` of a deploy-owned staging file)
    assert not hasattr(commands, "install_root_file")


def test_journal_builder():
    units = ["detector@blue.service", "detector@green.service"]
    assert commands.journal(units, 50) == [
        "/usr/bin/journalctl",
        "--no-pager",
        "-o",
        "short-iso",
        "-u",
        "detector@blue.service",
        "-u",
        "detector@green.service",
        "-n",
        "50",
    ]
    assert commands.journal(units[:1], 10, follow=True)[-1] == "-f"


def test_renew_cert_starts_one_unit_whose_flag_is_fixed_and_sets_no_environment():
    start = ["sudo", "-n", "/usr/bin/systemctl", "--no-pager", "start"]
    assert commands.renew_cert("r.service", False, False) == [*start, "r.service"]
    assert commands.renew_cert("r.service", True, False) == [*start, "r@force.service"]
    assert commands.renew_cert("r.service", False, True) == [*start, "r@dry-run.service"]
    for force, dry_run in ((False, False), (True, False), (False, True)):
        argv = commands.renew_cert("r.service", force, dry_run)
        assert not any("environment" in a or "=" in a for a in argv)
    with pytest.raises(ValueError, match="drop --force"):
        commands.renew_cert("r.service", True, True)


def test_releases_to_prune_keeps_newest_and_protected():
    names = [f"2026112{i}T000000Z-abcdef12" for i in range(7)] + ["current", "junk"]
    doomed = commands.releases_to_prune(names, 5, set())
    assert doomed == ["20261120T000000Z-abcdef12", "20261121T000000Z-abcdef12"]
    doomed = commands.releases_to_prune(names, 5, {"20261120T000000Z-abcdef12"})
    assert doomed == ["20261121T000000Z-abcdef12", "20261122T000000Z-abcdef12"]
    assert commands.releases_to_prune(names[:3], 5, set()) == []


def test_lock_is_a_directory_with_details(tmp_path):
    lock_dir = str(tmp_path / "deploy.lock")
    details = lock.details_text("alice@ctl", WHEN, "20261126T010203Z-ab12cd34", "fab deploy")
    assert details == (
        "holder=alice@ctl\nsince=2026-11-26T01:02Z\nrelease=20261126T010203Z-ab12cd34\n"
        "message=fab deploy\n"
    )
    take = ["sh", "-c", lock.take_command(lock_dir, details)]
    assert subprocess.run(take).returncode == 0
    assert subprocess.run(take, stderr=subprocess.DEVNULL).returncode != 0  # second deploy refused
    text = (tmp_path / "deploy.lock" / "details").read_text()
    message = lock.held_message(lock_dir, text)
    assert message.startswith("deploy lock held by alice@ctl since 2026-11-26T01:02Z")
    assert "fab unlock" in message
    subprocess.run(["sh", "-c", lock.free_command(lock_dir)], check=True)
    assert not (tmp_path / "deploy.lock").exists()


def test_parse_curl_and_detection_summary():
    assert health.parse_curl('{"ok": 1}\n200') == (200, '{"ok": 1}')
    assert health.parse_curl("curl: (7) failed\n000") == (0, "curl: (7) failed")
    body = '{"detections": [{"label": "dog"}, {"label": "car"}, {"label": "dog"}]}'
    assert health.detection_summary(body, ("dog",)) == (True, "3 detection(s): car, dog")
    assert health.detection_summary(body)[0] is False  # smoke.jpg must yield health.SMOKE_LABELS
    assert health.detection_summary("<html>")[0] is False
    assert health.detection_summary('{"error": "x"}')[0] is False


def test_wait_until_reports_last_status():
    assert health.wait_until(lambda: (True, "fine"), 5, "svc") == "fine"
    with pytest.raises(DeployError, match="svc not healthy after 0s; last status: 503"):
        health.wait_until(lambda: (False, "503"), 0, "svc")


def test_status_parsers():
    show = status.parse_show(
        "ActiveState=active\nMainPID=42\nActiveEnterTimestamp=Thu 2026-11-26 01:00:00 UTC"
    )
    assert show["MainPID"] == "42"
    assert status.parse_workers(" 43 120000 5\n 44 110000 5\n") == [
        (43, 120000, 5),
        (44, 110000, 5),
    ]
    assert status.uptime(show["ActiveEnterTimestamp"], WHEN) == "0d 0h 2m"
    assert status.uptime("", WHEN) == "-"


def test_multipart_body_carries_the_file():
    body, headers = health.multipart("file", "a.jpg", b"\xff\xd8data")
    boundary = headers["Content-Type"].split("boundary=")[1]
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert b'name="file"; filename="a.jpg"' in body
    assert b"\xff\xd8data\r\n" in body
    assert body.endswith(f"--{boundary}--\r\n".encode())


@pytest.mark.slow
def test_release_venv_over_a_venv_base_imports_the_release_not_the_base(tmp_path):
    """The real install commands, run here with the project venv as the host's base env."""
    from deploy import release

    base_python = sys.executable  # a venv, like detector_env_link with the venv backend
    art = release.build("HEAD", allow_dirty=True, out=tmp_path / "build")
    rel = tmp_path / "releases" / "20261126T010203Z-ab12cd34"
    rel_python = str(rel / "bin" / "python")

    def sh(cmd):
        return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=300)

    for cmd in (
        commands.shell(commands.make_venv(base_python, str(rel))),
        commands.link_base_env(rel_python, base_python),
        commands.shell(commands.pip_install_wheel(rel_python, str(art.wheel))),
    ):
        res = sh(cmd)
        assert res.returncode == 0, (cmd, res.stderr)
    res = sh(commands.shell(commands.import_check(rel_python)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith(str(rel))  # detector comes from the release
    flask = sh(commands.shell([rel_python, "-c", "import flask; print(flask.__file__)"]))
    assert flask.stdout.strip().startswith(str(Path(sys.prefix)))  # deps from the base env
