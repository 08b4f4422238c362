"""Blue/green boot of a release: idle color up and smoke-checked, switch, gate, or switch back."""

from __future__ import annotations

import time

from fabric import Connection

from deploy import commands
from deploy import health
from deploy import history
from deploy import release
from deploy import switch
from deploy.inventory import Host
from deploy.remote import DeployError
from deploy.remote import say
from deploy.remote import step


def boot(c: Connection, host: Host, rid: str, kind: str = "deploy") -> str:
    """Serve release rid with no failed request; on any failure the previous release stays served.

    A passed gate is appended to shared/history as `kind` (rollback targets come from it).

    Returns the gate's summary. Raises DeployError naming the reason and what is served now.
    """
    rel = host.release_dir(rid)
    switch.sync(c, host)  # an interrupted switch left the include behind the record: fix first
    live = switch.live_color(c, host)
    idle = commands.other_color(live) if live else commands.COLORS[0]
    previous = switch.target_of(c, host.current_link)
    before = release.current_id(c, host)
    image = release.upload_smoke_image(c, host)
    idle_unit = commands.unit(host.service, idle)
    try:
        with step(host, f"start {rid} on {idle_unit}"):
            switch.point(c, rel, host.color_link(idle))
            switch.start_color(c, host, idle)
        with step(host, f"smoke check {idle_unit} on its socket"):
            say(host, "smoke: " + health.smoke_color(c, host, idle, image))
    except BaseException as exc:
        switch.stop_color(c, host, idle)
        serving = switch.release_of(previous) or "nothing"
        raise _failure(exc)(
            f"{rid} refused on {host.name} before any switch: {exc}; still serving {serving}"
        ) from None
    try:
        with step(host, f"make {idle} live (record, nginx, current)"):
            switch.activate(c, host, idle)
        where = (
            f"http://127.0.0.1:{host.backend_port} on the host"
            if host.backend_port
            else f"https://{host.domain} ports {host.https_ports}"
        )
        with step(host, f"health gate {where}"):
            say(host, "gate: " + health.gate(host, rid, c, image))
        release.record_live(c, host, kind, rid, before)
    except BaseException as exc:
        try:
            _switch_back(c, host, live, idle)
        except BaseException as undo:
            raise DeployError(
                f"{rid} failed on {host.name}: {exc}; switching back ALSO failed: {undo}; "
                f"check `fab status` and run `fab rollback`"
            ) from None
        back = switch.release_of(previous) or "nothing (first deploy)"
        raise _failure(exc)(f"{rid} failed on {host.name}: {exc}; rolled back to {back}") from None
    with step(host, f"drain and stop {live or 'no previous color'}"):
        if live:
            left = switch.drain(c, host)
            if left:
                say(host, f"warning: {left} nginx worker(s) still draining; stopping anyway")
            switch.stop_color(c, host, live)
    return rid


def _failure(exc: BaseException) -> type[DeployError]:
    """The release failed (a check or its start), or fab was interrupted (Ctrl-C: not its fault)."""
    return history.ReleaseFailed if isinstance(exc, Exception) else DeployError


def _switch_back(c: Connection, host: Host, live: str, idle: str) -> None:
    """Undo a switch: the old color live again (record, nginx, current), the new one stopped."""
    with step(host, f"switch back to {live or 'no release'}"):
        if live:
            switch.activate(c, host, live)
        switch.drain(c, host)
        switch.stop_color(c, host, idle)


def deploy(c: Connection, host: Host, art: release.Artifact, rid: str) -> None:
    """Install, boot, prune: one host's part of `fab deploy` (the caller holds the lock)."""
    started = time.monotonic()
    try:
        with step(host, f"install {rid} ({art.wheel.name})"):
            rel = release.install(c, host, art, rid)
    except DeployError as exc:
        serving = switch.release_of(switch.target_of(c, host.current_link)) or "nothing"
        raise DeployError(
            f"{rid} not installed on {host.name}: {exc}; still serving {serving}"
        ) from None
    try:
        boot(c, host, rid)
    except DeployError:
        release.discard(c, host, rel)  # never served: not a rollback target
        raise
    with step(host, f"prune releases beyond {host.releases_keep}"):
        gone = release.prune(c, host)
        say(host, f"removed {', '.join(gone) if gone else 'none'}")
    say(host, f"deployed {rid} in {time.monotonic() - started:.1f}s")


def restart(c: Connection, host: Host) -> None:
    """Boot the current release on the other color: a restart without a failed request."""
    rid = switch.release_of(switch.target_of(c, host.current_link))
    if not rid:
        raise DeployError(f"no current release on {host.name}; run `fab deploy` first")
    boot(c, host, rid, kind="restart")
