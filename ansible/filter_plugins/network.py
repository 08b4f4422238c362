"""Ansible filter: is an address private (RFC 1918, CGNAT, IPv6 ULA) or public?"""

from __future__ import annotations

import ipaddress

PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def private_address(value: object) -> bool:
    """True for an IP literal in a private range; False for a public address or a host name."""
    try:
        address = ipaddress.ip_address(str(value).strip().strip("[]"))
    except ValueError:
        return False  # a name may resolve anywhere: not provably private
    return any(address in net for net in PRIVATE_NETWORKS if net.version == address.version)


class FilterModule:
    """Register the filters."""

    def filters(self) -> dict:
        return {"private_address": private_address}
