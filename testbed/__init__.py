"""Test bed: booted Debian hosts, a proxy, a wheelhouse, an ACME CA and a DNS server, offline.

Python API (stable; the e2e fixtures in tests/e2e/conftest.py wrap it)::

    from testbed import Testbed
    bed = Testbed.allocate(suite="bookworm", owner_pid=os.getpid()).up(hosts=1)
    try:
        bed.hosts                 # [Host(name="host1", address="10.77.<id>.11", user="admin",
                                  #       key_path=..., machine="dtb<id>-host1", root=..., index=1)]
        bed.ssh("host1", "systemctl is-system-running")   # CompletedProcess (text)
        bed.add_hosts(2)          # boot fresh hosts host2, host3 (also added to DNS and inventory)
        bed.reboot("host1")       # reboot from inside; nspawn boots the same rootfs again
        bed.inventory_path        # YAML inventory: hosts in groups `testbed` and `detector`;
                                  # ansible_* and detector_* vars in group_vars/testbed.yml beside
                                  # it (every inventory level overrides the role defaults)
        bed.write_inventory(extra_groups=("detector", "web"))  # list hosts in more groups
        bed.variables()           # the detector_* vars (see below)
        bed.acme.directory_url    # https://10.77.<id>.1:14000/dir (Pebble)
        bed.acme.ca_bundle        # Pebble's TLS cert: REQUESTS_CA_BUNDLE for certbot
        bed.acme.root_path        # Pebble's issuing root (fetched from acme.root_url at start)
        bed.dns.server, bed.dns.port, bed.dns.zone        # bind9, authoritative for detector.test
        bed.dns.tsig.name, bed.dns.tsig.algorithm, bed.dns.tsig.secret
        bed.resolve("detector.test")                     # ["10.77.<id>.11"] via the bed's DNS
        bed.address_of("detector.test")                  # first A record, guard-checked
        bed.nsupdate(["update add x.detector.test. 60 TXT hello"])
        bed.build_wheelhouse(requirements_file)          # pip wheel here (cached), then served
        bed.pip_index_url, bed.proxy_url
    finally:
        bed.down()                # stop by recorded PIDs, delete links, remove the state dir

The README's path (testbed.userpath.user_inventory): a copy of ansible/inventories/example filled
in as a user would, its vault.yml encrypted, and the bed's own settings (below, minus the domain,
ACME e-mail, DNS server and TSIG key a user writes) in one extra file, group_vars/all/testbed.yml.

Inventory variables (group_vars/testbed.yml; a real VM has internet and leaves these at defaults):
``detector_testbed`` (true), ``detector_domain`` (detector.test), ``detector_http_proxy`` and
``detector_apt_proxy`` (tinyproxy URL, reaches the Debian mirror only), ``detector_pip_index_url``
(PEP 503 wheelhouse), ``detector_pip_find_links``, ``detector_pip_trusted_host`` (plain HTTP),
``detector_torch_spec``, ``detector_torch_index_url``, ``detector_python_backend`` (venv),
``detector_acme_server``, ``detector_acme_ca_bundle`` (path on this machine: copy it to hosts),
``detector_acme_root_url``, ``detector_acme_root_ca`` (path), ``detector_acme_email``,
``detector_dns_server``, ``detector_dns_port``, ``detector_dns_zone``, ``detector_tsig_key_name``,
``detector_tsig_key_secret``, ``detector_tsig_key_algorithm`` (bind spelling, hmac-sha256).

Bed ``<id>`` (0..15) owns bridge ``dtb<id>`` with 10.77.<id>.1/24, hosts at 10.77.<id>.11+,
nspawn machines ``dtb<id>-hostN``, state in /var/lib/detector-testbed/<id>/; the rootfs and wheel
caches live in /var/cache/detector-testbed/ (each host's / is an overlay on the extracted rootfs,
its changes in hosts/<name>/upper). Every service listens on 10.77.<id>.1 only.
"""

from __future__ import annotations

from .acme import DOMAIN
from .bed import Testbed
from .bed import bed_ids
from .bed import leftovers
from .bed import teardown
from .hosts import Host
from .network import UnsafeAddress
from .network import guard
from .proxy import build_wheelhouse
from .rootfs import ensure_rootfs

__all__ = [
    "DOMAIN",
    "Host",
    "Testbed",
    "UnsafeAddress",
    "bed_ids",
    "build_wheelhouse",
    "ensure_rootfs",
    "guard",
    "leftovers",
    "teardown",
]
