"""Release markers, the live history and the rollback choice (deploy/history.py), Kamal style."""

from __future__ import annotations

import subprocess
from datetime import datetime
from datetime import timezone
from pathlib import Path

import pytest
import yaml
from ssh_helpers import local_server

from deploy import commands
from deploy import history
from deploy import release
from deploy import remote
from deploy import rollback
from deploy.inventory import Host
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


@pytest.fixture
def ssh_site(tmp_path, monkeypatch):
    """A real SSH server on 127.0.0.1 running commands here, and a Host whose app root is a
    temp tree with releases A, C (complete), E (current through colors/blue) and their history."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    server, known = local_server(tmp_path)
    app = tmp_path / "app"
    for rid in (A, C, E):
        (app / "releases" / rid / "bin").mkdir(parents=True)
        (app / "releases" / rid / history.COMPLETE).write_text("x\n")
    (app / "shared").mkdir()
    (app / "shared" / history.HISTORY).write_text(
        log(("deploy", A, ""), ("deploy", C, A), ("deploy", E, C))
    )
    (app / "colors").mkdir()
    (app / "colors" / "blue").symlink_to(app / "releases" / E)
    (app / "current").symlink_to(app / "colors" / "blue")
    host = Host(
        name="local",
        address="127.0.0.1",
        user="deploy",
        ssh_port=server.port,
        key_file=str(tmp_path / "id_ed25519"),
        service="detector",
        app_root=str(app),
        env_link=str(app / "env"),
        domain="detector.test",
        https_ports=(443,),
        releases_keep=5,
        socket_dir=str(tmp_path / "run"),
        upstream_conf=str(tmp_path / "upstream.conf"),
        upstream_name="detector",
        renew_service="detector-certbot-renew.service",
        known_hosts=(str(known),),
    )
    c = remote.connect(host)
    yield c, host
    c.close()
    server.close()


def test_a_rollback_target_that_fails_its_gate_is_marked_failed_and_not_picked_again(ssh_site):
    c, host = ssh_site
    booted = []

    def gate_fails(cc, h, rid, kind):
        booted.append((rid, kind))
        raise history.ReleaseFailed(f"{rid} failed on {h.name}: gate: no `cup`; rolled back to {E}")

    with pytest.raises(DeployError, match=f"marked {C} FAILED: later rollbacks skip it") as err:
        rollback.rollback(c, host, boot_one=gate_fails)
    assert f"remove {host.release_dir(C)}/FAILED" in str(err.value)
    assert booted == [(C, "rollback")]
    marker = Path(host.release_dir(C)) / history.FAILED
    assert "rollback: smoke check or gate failed" in marker.read_text()
    assert Path(host.release_dir(C)).is_dir()  # kept on disk to inspect; current untouched
    assert not (Path(host.release_dir(E)) / history.FAILED).exists()

    st = release.state(c, host)
    assert st.failed == {C} and st.current == E
    with pytest.raises(DeployError, match=f"cannot roll back to {C}: it failed its checks"):
        history.choose(st, C)
    assert rollback.rollback(c, host, boot_one=lambda cc, h, rid, kind: booted.append(rid)) == A
    assert booted[-1] == A  # the next plain rollback skips the failed one


def test_a_host_problem_during_a_rollback_marks_nothing(ssh_site):
    c, host = ssh_site

    def sudo_refused(cc, h, rid, kind):
        raise DeployError(f"{h.name}: re-derive the include from the live record failed: sudo")

    with pytest.raises(DeployError, match="re-derive") as err:
        rollback.rollback(c, host, boot_one=sudo_refused)
    assert "marked" not in str(err.value)
    assert release.state(c, host).failed == frozenset()
    assert rollback.rollback(c, host, boot_one=lambda cc, h, rid, kind: rid) == C


def test_a_rollback_cut_off_after_its_switch_still_leaves_the_bad_release_behind(tmp_path):
    # C was deployed; `fab rollback` booted B, switched, and fab was killed before the gate
    # passed: nothing recorded, but B serves. Running it again must not go back to C.
    dirs = {rid: [history.COMPLETE] for rid in (A, B, C)}
    text = log(("deploy", A, ""), ("deploy", B, A), ("deploy", C, B))
    st = host_state(tmp_path, dirs, text, B)
    assert history.choose(st) == A  # it was C: the release the rollback moved away from
    assert history.cut_off_rollback(st.history, B) == history.Entry("", "rollback", B, C)
    assert f"{C} (complete, was live)" in history.describe(st)
    with pytest.raises(DeployError, match="no complete, previously live release"):
        history.choose(history.State((B, C), frozenset({B, C}), history=st.history, current=B))
    # A deploy cut off after its switch: its release was never live, the last one is the target.
    d = history.State((A, B, C, D), frozenset({A, B, C, D}), history=st.history, current=D)
    assert history.cut_off_rollback(d.history, D) is None
    assert history.choose(d) == C


def test_the_next_recorded_switch_writes_the_cut_off_rollback_down_first(ssh_site):
    c, host = ssh_site  # A, C, E; history deploy A, C from A, E from C; E current
    blue = Path(host.color_link("blue"))
    blue.unlink()
    blue.symlink_to(host.release_dir(C))  # a rollback to C, cut off before its gate passed
    assert history.choose(release.state(c, host)) == A
    (Path(host.release_dir(B)) / "bin").mkdir(parents=True)  # then a deploy of B goes through
    (Path(host.release_dir(B)) / history.COMPLETE).write_text("x\n")
    release.record_live(c, host, "deploy", B, C)
    entries = release.state(c, host).history
    assert [(e.kind, e.rid, e.previous) for e in entries[-2:]] == [
        ("rollback", C, E),
        ("deploy", B, C),
    ]
    blue.unlink()
    blue.symlink_to(host.release_dir(B))
    st = release.state(c, host)
    assert st.current == B and history.choose(st) == C
    after = history.State(st.releases, st.complete, st.failed, st.history, current=C)
    assert history.choose(after) == A  # E stays behind, as after a finished rollback
