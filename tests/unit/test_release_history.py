"""Release markers, the live history and the rollback choice (deploy/history.py), Kamal style."""

from __future__ import annotations

import subprocess
from datetime import datetime
from datetime import timezone
from pathlib import Path

import pytest
import yaml

from deploy import commands
from deploy import history
from deploy.remote import DeployError

ROOT = Path(__file__).resolve().parents[2]
A, B, C, D, E = (f"2026112{i}T000000Z-{c * 8}" for i, c in enumerate("abcde"))
WHEN = datetime(2026, 11, 26, 1, 2, 3, tzinfo=timezone.utc)


def log(*entries: tuple[str, str, str]) -> str:
    """History text from (kind, rid, previous) tuples."""
    return "".join(history.history_line(k, r, p, WHEN) for k, r, p in entries)


def host_state(tmp_path: Path, dirs: dict[str, list[str]], text: str, current: str):
    """Make releases/<rid>/<markers> and shared/history for real, read them like a host does."""
    releases, shared = tmp_path / "releases", tmp_path / "shared"
    shared.mkdir()
    for rid, markers in dirs.items():
        (releases / rid / "bin").mkdir(parents=True)
        for marker in markers:
            (releases / rid / marker).write_text("x\n")
    (releases / "not-a-release").mkdir(parents=True, exist_ok=True)
    (shared / history.HISTORY).write_text(text)
    cmd = history.state_command(str(releases), str(shared / history.HISTORY))
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout
    return history.parse_state(out, current)


def test_history_line_round_trips_and_rejects_bad_entries():
    line = history.history_line("deploy", B, A, WHEN)
    assert line == f"2026-11-26T01:02:03Z deploy {B} from={A}\n"
    first = history.history_line("deploy", A, "", WHEN)
    entries = history.parse_history(first + "garbage line\n" + line)
    assert entries == (
        history.Entry("2026-11-26T01:02:03Z", "deploy", A, ""),
        history.Entry("2026-11-26T01:02:03Z", "deploy", B, A),
    )
    with pytest.raises(ValueError):
        history.history_line("oops", A, "")
    with pytest.raises(ValueError):
        history.history_line("deploy", "../../etc", "")


def test_state_is_read_from_a_real_directory_tree(tmp_path):
    dirs = {A: [history.COMPLETE], B: [history.COMPLETE, history.FAILED], C: []}
    st = host_state(tmp_path, dirs, log(("deploy", A, "")), A)
    assert st.releases == (A, B, C)
    assert st.complete == {A, B}
    assert st.failed == {B}
    assert [e.rid for e in st.history] == [A]
    assert st.current == A


def test_a_half_installed_newer_directory_is_skipped(tmp_path):
    # A, C deployed; D's install was cut off (no marker); E deployed after it.
    dirs = {A: [history.COMPLETE], C: [history.COMPLETE], D: [], E: [history.COMPLETE]}
    text = log(("deploy", A, ""), ("deploy", C, A), ("deploy", E, C))
    st = host_state(tmp_path, dirs, text, E)
    assert history.choose(st) == C
    with pytest.raises(DeployError, match=f"cannot roll back to {D}: it is incomplete.*fab status"):
        history.choose(st, D)


def test_a_failed_release_left_on_disk_is_never_chosen(tmp_path):
    dirs = {A: [history.COMPLETE], D: [history.COMPLETE, history.FAILED], E: [history.COMPLETE]}
    st = host_state(tmp_path, dirs, log(("deploy", A, ""), ("deploy", E, A)), E)
    assert history.choose(st) == A
    with pytest.raises(DeployError, match="failed its checks.*fab status"):
        history.choose(st, D)


def test_a_release_rolled_back_from_is_skipped_until_it_is_live_again():
    done = frozenset({A, B, C})
    st = history.State(
        (A, B, C),
        done,
        history=history.parse_history(
            log(("deploy", A, ""), ("deploy", B, A), ("rollback", A, B), ("deploy", C, A))
        ),
        current=C,
    )
    assert history.choose(st) == A  # by name alone it would be B, the bad one
    assert history.choose(st, B) == B  # named explicitly: allowed, it is complete and was live
    again = history.State(
        st.releases,
        done,
        history=st.history + history.parse_history(log(("rollback", B, C))),
        current=B,
    )
    assert history.choose(again) == A  # C was just rolled back from


def test_refusals_name_the_reason_and_the_listing_command():
    st = history.State((A, B, C), frozenset({A, B, C}), history=(), current=C)
    for rid, reason in (
        ("20250101T000000Z-dddddddd", "is not on this host"),
        (C, "is already current"),
        (B, "was never live"),
    ):
        with pytest.raises(DeployError, match=f"{rid}: it {reason}.*fab status"):
            history.choose(st, rid)
    with pytest.raises(DeployError, match="no complete, previously live release.*fab status"):
        history.choose(st)


def test_the_previous_of_an_entry_counts_as_live_and_describe_marks_states():
    # Only the switch away from A was recorded (A was live before the history existed).
    st = history.State(
        (A, B, D),
        frozenset({A, B}),
        frozenset({D}),
        history.parse_history(log(("deploy", B, A))),
        B,
    )
    assert history.choose(st) == A
    assert history.describe(st) == [
        f"{A} (complete, was live, rollback target)",
        f"{B} (current, complete)",
        f"{D} (failed)",
    ]


def test_prune_never_deletes_current_or_the_rollback_target():
    names = [A, B, C, D, E]
    st = history.State(
        tuple(names),
        frozenset(names),
        history=history.parse_history(log(("deploy", A, ""), ("deploy", E, A))),
        current=E,
    )
    target = history.target_or_none(st)
    assert target == A
    doomed = commands.releases_to_prune(names, 2, {st.current, target})
    assert A not in doomed and E not in doomed
    assert len(names) - len(doomed) == 2


def test_renew_instances_match_the_units_ansible_installs():
    tasks = yaml.safe_load((ROOT / "ansible/roles/certbot/tasks/renew.yml").read_text())
    (twins,) = [t for t in tasks if "@{{ item.instance }}" in str(t)]
    assert {i["instance"]: i["flag"] for i in twins["loop"]} == commands.RENEW_INSTANCES
    for instance in commands.RENEW_INSTANCES:
        force = instance == "force"
        assert commands.renew_unit("x.service", force, not force) == f"x@{instance}.service"
