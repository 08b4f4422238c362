"""Session fixtures for end-to-end tests: one test bed per pytest session, shared by every e2e test.

Fixtures:
- ``testbed``: a running :class:`testbed.Testbed` (1 host; ``DETECTOR_TESTBED_HOSTS=N`` for
  more): ``.hosts``, ``.inventory_path``, ``.acme.directory_url``, ``.acme.ca_bundle``,
  ``.dns.server``/``.dns.port``/``.dns.tsig``, ``.ssh(host, cmd)``, ``.variables()``.
- ``testbed_hosts``: factory ``testbed_hosts(n, fresh=False)``: the first n hosts (booting more if
  the bed has fewer), or n newly booted bare hosts with ``fresh=True``.
- ``ops``: one host provisioned with the bed's variables and one release deployed by fab, shared by
  test_operations and test_overload (module order: overload's load and OOM checks come last).
- ``readme_host``: a fresh host provisioned the README's way (copied example inventory, encrypted
  vault, its command line), shared by test_attacker and test_cert_alerts (each reads the state).
Every test in tests/e2e is marked ``e2e``. Without root or the tools, the fixtures skip, naming
what is missing (``make setup`` installs the Makefile's APT_PACKAGES).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import Testbed
from testbed import leftovers
from testbed.provisioning import MODEL
from testbed.provisioning import REPO
from testbed.provisioning import wheelhouse_requirements
from testbed.userpath import ReadmeHost
from testbed.userpath import user_inventory

TOOLS = (
    "systemd-nspawn",
    "debootstrap",
    "pebble",
    "named",
    "tinyproxy",
    "tsig-keygen",
    "nsupdate",
    "dig",
    "openssl",
    "ip",
    "ssh",
    "ssh-keygen",
    "zstd",
)


def missing_prerequisite() -> str | None:
    """Return why the test bed cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "the test bed needs root (systemd-nspawn, bridges); run as root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"the test bed needs {', '.join(missing)}: run `make setup` as root (APT_PACKAGES)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as e2e."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    """A test bed for the whole session, torn down (and checked clean) at its end."""
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # A CI timeout's SIGTERM unwinds like Ctrl-C, so the bed is torn down.
        signal.signal(signal.SIGTERM, _raise_interrupt)
    bed = Testbed.allocate(owner_pid=os.getpid(), log=lambda msg: print(msg, flush=True))
    bed.up(hosts=int(os.environ.get("DETECTOR_TESTBED_HOSTS", "1")))
    try:
        yield bed
    finally:
        bed.down()
    left = leftovers(bed.id)
    assert not any(left.values()), f"test bed {bed.id} left things behind: {left}"


@pytest.fixture(scope="session")
def testbed_hosts(testbed: Testbed):
    """Factory: ``testbed_hosts(n, fresh=False)`` returns n hosts of the session's bed."""

    def get(count: int = 1, fresh: bool = False):
        if fresh:
            return testbed.add_hosts(count)
        if count > len(testbed.hosts):
            testbed.add_hosts(count - len(testbed.hosts))
        return testbed.hosts[:count]

    return get


@pytest.fixture(scope="session")
def ops(testbed: Testbed, testbed_hosts, tmp_path_factory):
    """A provisioned host with one release deployed, provisioned once for the session."""
    from tests.e2e.test_operations import provision_ops

    return provision_ops(testbed, testbed_hosts, tmp_path_factory)


@pytest.fixture(scope="session")
def readme_host(testbed: Testbed, testbed_hosts, tmp_path_factory) -> ReadmeHost:
    """A fresh host provisioned as the README says, once for the session (a ReadmeHost)."""
    if not (REPO / "weights" / f"{MODEL}.weights").is_file():
        pytest.skip(f"weights/{MODEL}.weights is missing: run `make setup` (make weights)")
    host = testbed_hosts(1, fresh=True)[0]
    work = tmp_path_factory.mktemp("readme-host")
    testbed.build_wheelhouse(wheelhouse_requirements(work / "requirements.txt"))
    user = user_inventory(testbed, [host], work)
    run = user.provision()
    logs = REPO / "test-artifacts" / "readme-host"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "provision.log").write_text(
        f"# {run.seconds:.1f}s rc={run.returncode}\n" + run.stdout + run.stderr
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return ReadmeHost(testbed, host, user, run)
