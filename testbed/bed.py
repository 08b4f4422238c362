"""One test bed: allocate an id, bring up its bridge, services and hosts, tear it all down."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from . import acme
from . import hosts as hostlib
from . import network
from . import processes
from . import proxy
from .hosts import Host
from .inventory import write_inventory
from .paths import CACHE_DIR
from .paths import STATE_ROOT
from .rootfs import DEFAULT_PACKAGES
from .rootfs import ensure_base
from .rootfs import ensure_rootfs


@dataclass
class Testbed:
    """A running bed: hosts on bridge ``dtb<id>`` (10.77.<id>.0/24), DNS, ACME CA, proxy, wheels."""

    __test__ = False  # not a pytest test class despite its name

    id: int
    suite: str = "bookworm"
    hosts: list[Host] = field(default_factory=list)
    dns: acme.Dns | None = None
    acme: acme.Acme | None = None
    proxy_url: str = ""
    wheelhouse_url: str = ""
    owner: dict | None = None
    log: object = field(default=print, repr=False)

    # -- where things are -------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        """The bed's state dir (PIDs, logs, configs, host rootfs copies)."""
        return STATE_ROOT / str(self.id)

    @property
    def table(self) -> processes.ProcessTable:
        """The bed's process table."""
        return processes.ProcessTable(self.dir)

    @property
    def bridge(self) -> str:
        """The bed's bridge link."""
        return network.bridge_name(self.id)

    @property
    def gateway(self) -> str:
        """This machine's address on the bridge, where every service of the bed listens."""
        return network.gateway(self.id)

    @property
    def key_path(self) -> str:
        """The private ssh key that logs in as admin on every host."""
        return str(self.dir / "ssh" / "id_ed25519")

    @property
    def known_hosts_path(self) -> Path:
        """known_hosts with every host's keys, read from its rootfs before it boots."""
        return self.dir / "known_hosts"

    def write_known_hosts(self) -> Path:
        """(Re)write known_hosts_path from the hosts' rootfs copies."""
        lines = [line for h in self.hosts for line in hostlib.known_hosts_lines(h)]
        tmp = self.dir / ".known_hosts.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(self.known_hosts_path)
        return self.known_hosts_path

    @property
    def inventory_path(self) -> Path:
        """The generated Ansible inventory (YAML)."""
        return self.dir / "inventory.yml"

    # -- life cycle ---------------------------------------------------------------------------
    @classmethod
    def allocate(cls, suite: str = "bookworm", owner_pid: int | None = None, log=print) -> Testbed:
        """Reserve the first free bed id (an atomic mkdir of its state dir) and return the bed."""
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        reclaim_stale(log)
        for bed_id in range(network.MAX_BEDS):
            try:
                (STATE_ROOT / str(bed_id)).mkdir()
            except FileExistsError:
                continue
            owner = None
            if owner_pid is not None:
                owner = {"pid": owner_pid, "start_time": processes.start_time(owner_pid)}
            bed = cls(bed_id, suite, owner=owner, log=log)
            bed.save()
            return bed
        raise RuntimeError(f"all {network.MAX_BEDS} test beds are in use; see `status --all`")

    @classmethod
    def load(cls, bed_id: int, log=print) -> Testbed:
        """Load a bed from its state dir (as written by ``up``)."""
        data = json.loads((STATE_ROOT / str(bed_id) / "bed.json").read_text())
        dns = data.pop("dns")
        ca = data.pop("acme")
        return cls(
            hosts=[Host(**h) for h in data.pop("hosts")],
            dns=acme.Dns(**{**dns, "tsig": acme.Tsig(**dns["tsig"])}) if dns else None,
            acme=acme.Acme(**ca) if ca else None,
            log=log,
            **data,
        )

    def save(self) -> None:
        """Write bed.json."""
        data = {
            "id": self.id,
            "suite": self.suite,
            "hosts": [h.to_dict() for h in self.hosts],
            "dns": self.dns.to_dict() if self.dns else None,
            "acme": self.acme.to_dict() if self.acme else None,
            "proxy_url": self.proxy_url,
            "wheelhouse_url": self.wheelhouse_url,
            "owner": self.owner,
        }
        tmp = self.dir / ".bed.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.rename(self.dir / "bed.json")

    def up(self, hosts: int = 1) -> Testbed:
        """Create the bridge, start DNS, ACME CA, proxy, wheelhouse, boot hosts; undo on failure."""
        started = time.monotonic()
        try:
            network.create_bridge(self.id)
            keydir = self.dir / "ssh"
            keydir.mkdir(mode=0o700, exist_ok=True)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"testbed-{self.id}"]
                + ["-f", self.key_path],
                check=True,
            )
            self.dns = acme.start_dns(self.table, self.dir, self.gateway, acme.make_tsig(), {})
            self.acme = acme.start_pebble(self.table, self.dir, self.gateway, self.dns)
            self.proxy_url = proxy.start_proxy(
                self.table, self.dir, self.gateway, str(network.subnet(self.id))
            )
            self.wheelhouse_url = proxy.start_wheelhouse_server(
                self.table, self.dir / "wheelhouse", self.gateway
            )
            self.save()
            self.add_hosts(hosts)
        except BaseException:
            self.log(f"testbed {self.id}: bring-up failed, tearing down")
            self.down()
            raise
        took = time.monotonic() - started
        self.log(f"testbed {self.id}: up with {len(self.hosts)} host(s) in {took:.1f}s")
        return self

    def add_hosts(self, count: int) -> list[Host]:
        """Boot count more fresh hosts from the cached rootfs; return them once ssh works."""
        if count <= 0:
            return []
        base = ensure_base(
            ensure_rootfs(self.suite, DEFAULT_PACKAGES, CACHE_DIR, self.log), self.log
        )
        first = max((h.index for h in self.hosts), default=0) + 1
        new = []
        for index in range(first, first + count):
            host = hostlib.prepare(
                self.dir, self.id, index, base, Path(self.key_path), self.gateway, acme.DOMAIN
            )
            new.append(host)
            self.hosts.append(host)
            self.write_known_hosts()
            self.save()
            hostlib.boot(self.table, host, self.bridge)
        for host in new:
            hostlib.wait_ready(host)
        assert self.dns is not None
        commands = [f"update add {h.name}.{acme.DOMAIN}. 60 A {h.address}" for h in new]
        if not acme.resolve(self.dns, acme.DOMAIN):
            commands.append(f"update add {acme.DOMAIN}. 60 A {self.hosts[0].address}")
        acme.nsupdate(self.dns, commands)
        self.write_inventory()
        self.save()
        return new

    def down(self) -> None:
        """Stop recorded processes by PID, kill what is left in host rootfs copies, delete links."""
        table = self.table
        marks = [time.monotonic()]
        table.stop_all(timeout=20, prefix="host-")  # supervisors power their hosts off cleanly
        marks.append(time.monotonic())
        table.stop_all(timeout=10)
        marks.append(time.monotonic())
        for host_dir in sorted((self.dir / "hosts").glob("*/rootfs")):
            hostlib.kill_leftovers(str(host_dir))
            hostlib.unmount(str(host_dir))
        network.delete_links(self.id)
        marks.append(time.monotonic())
        if self.dir.is_dir():
            shutil.rmtree(self.dir, ignore_errors=True)  # tolerate a concurrent `down`
            if self.dir.exists():
                shutil.rmtree(self.dir)
        marks.append(time.monotonic())
        phases = ", ".join(
            f"{what} {b - a:.1f}s"
            for what, a, b in zip(("hosts", "services", "links", "files"), marks, marks[1:])
        )
        self.log(f"testbed {self.id}: down in {marks[-1] - marks[0]:.1f}s ({phases})")

    # -- using it --------------------------------------------------------------------------------
    def host(self, name: str) -> Host:
        """Return the host called name (host1, host2, ...)."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(
            f"no host {name!r} in test bed {self.id}; it has {[h.name for h in self.hosts]}"
        )

    def ssh(self, host: Host | str, command: str, check: bool = True, timeout: float = 300):
        """Run command on host (a Host or its name) as admin; return the CompletedProcess."""
        return hostlib.ssh(
            self.host(host) if isinstance(host, str) else host, command, check, timeout
        )

    def reboot(self, host: Host | str, timeout: float = 120) -> str:
        """Reboot host from inside, wait until nspawn booted it again and it is ready."""
        host = self.host(host) if isinstance(host, str) else host
        before = self.table.get(f"nspawn-{host.name}")
        hostlib.ssh(host, "sudo systemctl reboot", check=False, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.table.get(f"nspawn-{host.name}")
            if now and before and now["pid"] != before["pid"]:
                return hostlib.wait_ready(host, max(5.0, deadline - time.monotonic()))
            time.sleep(0.2)
        raise TimeoutError(f"{host.name} did not come back from a reboot within {timeout:.0f}s")

    def resolve(self, name: str, rtype: str = "A") -> list[str]:
        """Resolve name through the bed's DNS (how this machine reaches detector.test)."""
        assert self.dns is not None
        return acme.resolve(self.dns, name, rtype)

    def address_of(self, name: str = "detector.test") -> str:
        """Resolve name through the bed's DNS and return its first address, checked by the guard.

        For HTTPS from this machine: ``curl --resolve NAME:443:ADDR --cacert bed.acme.root_path``.
        """
        answers = self.resolve(name)
        if not answers:
            raise LookupError(f"{name} has no A record in the test bed's DNS ({self.gateway})")
        return network.guard(answers[0])

    def nsupdate(self, commands: list[str]) -> None:
        """Send TSIG-signed nsupdate commands (``update add NAME TTL TYPE DATA``) to the DNS."""
        assert self.dns is not None
        acme.nsupdate(self.dns, commands)

    def build_wheelhouse(self, requirements_file: Path = proxy.DEFAULT_REQUIREMENTS) -> str:
        """Build (cached) and serve wheels for requirements_file; return the PEP 503 index URL."""
        proxy.publish(proxy.build_wheelhouse(requirements_file), self.dir / "wheelhouse")
        return self.pip_index_url

    @property
    def pip_index_url(self) -> str:
        """The wheelhouse as a PEP 503 simple index (pip --index-url)."""
        return f"{self.wheelhouse_url}simple/"

    def variables(self) -> dict:
        """Return the test-bed-specific inventory variables (a real VM leaves these at defaults)."""
        assert self.dns is not None and self.acme is not None
        tsig = self.dns.tsig
        return {
            # Ansible's ssh and fab verify host keys against the keys read from each rootfs.
            "ansible_ssh_common_args": (
                f"-o UserKnownHostsFile={self.known_hosts_path} -o StrictHostKeyChecking=yes"
                " -o IdentitiesOnly=yes"
            ),
            "detector_testbed": True,
            "detector_domain": acme.DOMAIN,
            "detector_http_proxy": self.proxy_url,
            "detector_apt_proxy": self.proxy_url,
            "detector_pip_index_url": self.pip_index_url,
            "detector_pip_find_links": self.wheelhouse_url,
            "detector_pip_trusted_host": self.gateway,
            "detector_torch_spec": "torch==2.13.0+cpu",
            "detector_torch_index_url": self.pip_index_url,
            "detector_python_backend": "venv",
            "detector_acme_server": self.acme.directory_url,
            "detector_acme_ca_bundle": self.acme.ca_bundle,
            "detector_acme_root_url": self.acme.root_url,
            "detector_acme_root_ca": self.acme.root_path,
            "detector_acme_email": f"admin@{acme.DOMAIN}",
            "detector_dns_server": self.dns.server,
            "detector_dns_port": self.dns.port,
            "detector_dns_zone": self.dns.zone,
            "detector_tsig_key_name": tsig.name,
            "detector_tsig_key_secret": tsig.secret,
            "detector_tsig_key_algorithm": tsig.algorithm,
        }

    def write_inventory(self, extra_groups: tuple[str, ...] = ("detector",)) -> Path:
        """(Re)write the inventory and group_vars/testbed.yml; extra_groups list every host too."""
        return write_inventory(
            self.inventory_path,
            [{"name": h.name, "address": h.address} for h in self.hosts],
            self.key_path,
            self.variables(),
            extra_groups=extra_groups,
        )

    def status(self) -> dict:
        """Return what runs: recorded processes alive, hosts and their nspawn PIDs."""
        running = {r["name"]: r["pid"] for r in self.table.running()}
        return {
            "id": self.id,
            "bridge": self.bridge,
            "gateway": self.gateway,
            "inventory": str(self.inventory_path),
            "hosts": {h.name: h.address for h in self.hosts},
            "processes": running,
            "acme_directory": self.acme.directory_url if self.acme else None,
            "proxy": self.proxy_url,
            "wheelhouse": self.wheelhouse_url,
        }


def bed_ids() -> list[int]:
    """Return the ids of beds that have a state dir."""
    if not STATE_ROOT.is_dir():
        return []
    return sorted(int(p.name) for p in STATE_ROOT.iterdir() if p.name.isdigit())


def live_owner(bed_id: int) -> int | None:
    """Return the PID of the running process (a pytest session) that owns bed bed_id, if any.

    A bed being allocated right now (state dir younger than a minute, no bed.json yet) counts
    as owned (PID -1), so ``down`` never pulls a bed from under a session that is starting.
    """
    state = STATE_ROOT / str(bed_id)
    path = state / "bed.json"
    with contextlib.suppress(OSError):
        if not path.exists() and time.time() - state.stat().st_mtime < 60:
            return -1
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        owner = json.loads(path.read_text()).get("owner")
        if owner and processes.start_time(owner["pid"]) == owner["start_time"]:
            return owner["pid"]
    return None


def reclaim_stale(log=print) -> None:
    """Tear down beds whose owning process (a pytest session) is gone: a crashed earlier run."""
    for bed_id in bed_ids():
        path = STATE_ROOT / str(bed_id) / "bed.json"
        with contextlib.suppress(OSError, ValueError):
            owner = json.loads(path.read_text()).get("owner")
            if owner and processes.start_time(owner["pid"]) != owner["start_time"]:
                log(
                    f"testbed {bed_id}: owner PID {owner['pid']} is gone, cleaning up its leftovers"
                )
                teardown(bed_id, log)


def teardown(bed_id: int, log=print) -> None:
    """Tear down bed bed_id from whatever state it left (bed.json may be missing or partial)."""
    try:
        bed = Testbed.load(bed_id, log)
    except (OSError, ValueError, TypeError, KeyError):
        bed = Testbed(bed_id, log=log)
    bed.down()


def leftovers(bed_id: int) -> dict[str, list[str]]:
    """Return what of bed bed_id still exists: processes, mounts, links, nspawn machines."""
    state = str(STATE_ROOT / str(bed_id))
    procs, machines = [], []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            root = os.readlink(entry / "root")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if root.startswith(state) or state in cmdline:
                procs.append(f"{entry.name} {cmdline[:120]}")
            if f"--machine={network.bridge_name(bed_id)}-" in cmdline:
                machines.append(f"{entry.name} {cmdline[:120]}")
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(state)
    ]
    prefix = f"vb-{network.bridge_name(bed_id)}-"
    links = [
        n for n in network.owned_links() if n == network.bridge_name(bed_id) or n.startswith(prefix)
    ]
    return {"processes": procs, "mounts": mounts, "links": links, "machines": machines}
