"""The bed's bridge on a dedicated private /24, and the guard that refuses any other address."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from pathlib import Path

SUBNET_PREFIX = "10.77"
MAX_BEDS = 16
LINK_ALIAS = "detector-testbed"
BRIDGE_PREFIX = "dtb"
FIRST_HOST_OCTET = 10


class UnsafeAddress(RuntimeError):
    """Raised when a target address is not on a link the test bed created."""


def bridge_name(bed_id: int) -> str:
    """Return the bridge of bed bed_id (dtb0, dtb1, ...)."""
    return f"{BRIDGE_PREFIX}{bed_id}"


def subnet(bed_id: int) -> ipaddress.IPv4Network:
    """Return the /24 of bed bed_id."""
    return ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{bed_id}.0/24")


def gateway(bed_id: int) -> str:
    """Return this machine's address on the bed's bridge; every service listens there only."""
    return f"{SUBNET_PREFIX}.{bed_id}.1"


def host_address(bed_id: int, index: int) -> str:
    """Return the static address of host number index (1-based)."""
    return f"{SUBNET_PREFIX}.{bed_id}.{FIRST_HOST_OCTET + index}"


def _ip_json(*args: str) -> list[dict]:
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def _alias(name: str) -> str:
    try:
        return Path(f"/sys/class/net/{name}/ifalias").read_text().strip()
    except OSError:
        return ""


def owned_links() -> list[str]:
    """Return the links the test bed created: bridges carrying its alias, and their veths."""
    names = []
    for link in _ip_json("link", "show"):
        name = link.get("ifname", "")
        if _alias(link.get("ifname", "")).startswith(LINK_ALIAS) or name.startswith(
            f"vb-{BRIDGE_PREFIX}"
        ):
            names.append(name)
    return names


def link_bed_id(name: str) -> int | None:
    """Return the bed id a link name belongs to (dtb3, vb-dtb3-host1 -> 3), None if not ours."""
    match = re.match(rf"^(?:vb-)?{BRIDGE_PREFIX}(\d+)(?:-|$)", name)
    return int(match.group(1)) if match else None


def create_bridge(bed_id: int) -> str:
    """Create the bed's bridge with the gateway address; refuse if the /24 is already in use."""
    name = bridge_name(bed_id)
    net = subnet(bed_id)
    for route in _ip_json("route", "show"):
        dst = route.get("dst", "")
        if not dst[:1].isdigit():
            continue
        other = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        if other.version == 4 and other.overlaps(net) and route.get("dev") != name:
            raise RuntimeError(
                f"subnet {net} overlaps route {dst} on {route.get('dev')}; "
                "run `python -m testbed down --all` or free that range"
            )
    if name not in [link["ifname"] for link in _ip_json("link", "show")]:
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", name, "alias", f"{LINK_ALIAS} {bed_id}"], check=True)
    # Nothing the hosts send is forwarded anywhere; IPv6 stays off on the bed's links.
    with open(f"/proc/sys/net/ipv4/conf/{name}/forwarding", "w") as f:
        f.write("0")
    with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
        f.write("1")
    subprocess.run(
        ["ip", "addr", "replace", f"{gateway(bed_id)}/{net.prefixlen}", "dev", name], check=True
    )
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    return name


def delete_links(bed_id: int) -> None:
    """Delete the bed's bridge and any veth of its machines left by a crashed nspawn."""
    prefix = f"vb-{bridge_name(bed_id)}-"
    for name in owned_links():
        if name == bridge_name(bed_id) or name.startswith(prefix):
            subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def guard(address: str) -> str:
    """Return address if it lies on a link the test bed created; raise UnsafeAddress otherwise."""
    target = ipaddress.ip_address(address)
    for link in _ip_json("addr", "show"):
        if not _alias(link.get("ifname", "")).startswith(LINK_ALIAS):
            continue
        for info in link.get("addr_info", []):
            if info.get("family") != "inet":
                continue
            net = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network
            if target in net:
                return address
    raise UnsafeAddress(
        f"refusing to contact {address}: it is not on a link the test bed created "
        f"(bridges with alias '{LINK_ALIAS}'); run `python -m testbed up` first"
    )
