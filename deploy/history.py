"""Release states (complete, failed, once live) and the rollback choice, as pure functions."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timezone

from deploy.commands import is_release_id
from deploy.remote import DeployError

COMPLETE = "COMPLETE"  # in a release dir: written only after install + import check passed
FAILED = "FAILED"  # in a release dir: its smoke check or gate failed (deploy or rollback)
HISTORY = "history"  # in shared/: one line per successful switch, appended, never rewritten
KINDS = ("deploy", "rollback", "restart", "config")
LISTS = "`fab status` lists the releases and their states"


class ReleaseFailed(DeployError):
    """The release itself failed: it did not start, or failed its smoke check or gate."""


@dataclass(frozen=True)
class Entry:
    """One successful switch: rid went live, replacing previous ('' = nothing served)."""

    when: str
    kind: str
    rid: str
    previous: str = ""


@dataclass(frozen=True)
class State:
    """What a host's releases/ and history say, read in one round trip."""

    releases: tuple[str, ...]
    complete: frozenset[str] = field(default_factory=frozenset)
    failed: frozenset[str] = field(default_factory=frozenset)
    history: tuple[Entry, ...] = ()
    current: str = ""


def history_line(kind: str, rid: str, previous: str, when: datetime | None = None) -> str:
    """The line appended to shared/history after a switch passed its gate."""
    if kind not in KINDS or not is_release_id(rid):
        raise ValueError(f"bad history entry {kind!r} {rid!r}")
    stamp = (when or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{stamp:%Y-%m-%dT%H:%M:%SZ} {kind} {rid} from={previous or '-'}\n"


def parse_history(text: str) -> tuple[Entry, ...]:
    """Entries in the order they happened; lines that are not entries are skipped."""
    entries = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[1] not in KINDS or not parts[3].startswith("from="):
            continue
        previous = parts[3].removeprefix("from=")
        if is_release_id(parts[2]):
            entries.append(Entry(parts[0], parts[1], parts[2], "" if previous == "-" else previous))
    return tuple(entries)


def state_command(releases_dir: str, history_file: str) -> str:
    """Print `<depth> <path>` for release dirs and markers, then `--`, then the history."""
    return (
        f"find {shlex.quote(releases_dir)} -mindepth 1 -maxdepth 2 "
        f"\\( -type d -o -name {COMPLETE} -o -name {FAILED} \\) -printf '%d %P\\n'; "
        f"echo --; cat {shlex.quote(history_file)} 2>/dev/null; true"
    )


def parse_state(out: str, current: str) -> State:
    """The State from state_command's output and the current release id."""
    listing, _, history = out.partition("--\n")
    names, complete, failed = set(), set(), set()
    for line in listing.splitlines():
        depth, _, path = line.strip().partition(" ")
        rid, _, marker = path.partition("/")
        if not is_release_id(rid):
            continue
        if depth == "1" and not marker:
            names.add(rid)
        elif depth == "2" and marker == COMPLETE:
            complete.add(rid)
        elif depth == "2" and marker == FAILED:
            failed.add(rid)
    return State(
        tuple(sorted(names)),
        frozenset(complete),
        frozenset(failed),
        parse_history(history),
        current,
    )


def once_live(history: tuple[Entry, ...]) -> set[str]:
    """Releases that served at some point: went live, or were live when another replaced them."""
    return {e.rid for e in history} | {e.previous for e in history if e.previous}


def cut_off_rollback(history: tuple[Entry, ...], current: str) -> Entry | None:
    """The rollback a cut-off run made, when the history misses it; None when it does not.

    Only a switch that passed its gate is recorded. A current release that is not the last
    recorded one but was live before went live again by a switch whose gate never finished:
    a rollback (fab killed after the switch). It moved away from the last recorded release,
    like a finished one would. (A cut-off deploy's current release was never live: no entry.)
    """
    if not history or not current or current == history[-1].rid:
        return None
    if current not in once_live(history):
        return None
    return Entry("", "rollback", current, history[-1].rid)


def rolled_back_from(history: tuple[Entry, ...], current: str = "") -> set[str]:
    """Releases a rollback moved away from and that have not been live again since."""
    cut = cut_off_rollback(history, current)
    left: set[str] = set()
    for e in history + ((cut,) if cut else ()):
        left.discard(e.rid)
        if e.kind == "rollback" and e.previous:
            left.add(e.previous)
    return left


def refusal(state: State, rid: str) -> str:
    """Why rid cannot be rolled back to ('' when it can)."""
    if rid not in state.releases:
        return "is not on this host"
    if rid == state.current:
        return "is already current"
    if rid in state.failed:
        return f"failed its checks when it was deployed or rolled back to (marked {FAILED})"
    if rid not in state.complete:
        return f"is incomplete: its install never finished (no {COMPLETE} marker)"
    if rid not in once_live(state.history):
        return "was never live (an interrupted deploy installed it); ship it with `fab deploy`"
    return ""


def choose(state: State, to: str = "") -> str:
    """The named release if eligible, else the most recently live eligible one.

    Eligible: on the host, complete, not failed, once live, not current. Without `to`, a
    release a rollback moved away from is skipped until it has been live again.
    """
    if to:
        why = refusal(state, to)
        if why:
            raise DeployError(f"cannot roll back to {to}: it {why}; {LISTS}")
        return to
    skip = rolled_back_from(state.history, state.current)
    for e in reversed(state.history):
        for rid in (e.rid, e.previous):
            if rid and rid not in skip and not refusal(state, rid):
                return rid
    raise DeployError(
        f"no complete, previously live release to roll back to from {state.current or 'none'} "
        f"(releases rolled back from are skipped; name one with --to); {LISTS}"
    )


def target_or_none(state: State) -> str:
    """The release a plain `fab rollback` would pick, or '' (prune keeps it)."""
    try:
        return choose(state)
    except DeployError:
        return ""


def describe(state: State) -> list[str]:
    """One line per release, oldest first: id and its state (for `fab status`)."""
    live, target = once_live(state.history), target_or_none(state)
    lines = []
    for rid in state.releases:
        marks = ["current"] if rid == state.current else []
        marks.append(
            "failed"
            if rid in state.failed
            else "complete"
            if rid in state.complete
            else "incomplete"
        )
        marks += ["was live"] if rid in live and rid != state.current else []
        marks += ["rollback target"] if rid == target else []
        lines.append(f"{rid} ({', '.join(marks)})")
    return lines
