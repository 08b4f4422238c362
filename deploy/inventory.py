"""Hosts and settings read from the Ansible inventory (`ansible-inventory --list`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from dataclasses import replace

from deploy import hostkeys
from deploy.inventory_source import DEFAULTS_FILE
from deploy.inventory_source import INVENTORY_ENV
from deploy.inventory_source import REPO
from deploy.inventory_source import InventoryError
from deploy.inventory_source import read
from deploy.inventory_source import resolve_path

__all__ = ["INVENTORY_ENV", "REPO", "InventoryError", "read", "resolve_path"]

CA_BUNDLE_ENV = "DETECTOR_DEPLOY_CA_BUNDLE"
GROUP = "detector"
LB_GROUP_VAR = "detector_lb_group"
REQUIRED = (
    "ansible_host",
    "detector_service",
    "detector_app_root",
    "detector_env_link",
    "detector_deploy_user",
    "detector_domain",
    "detector_https_ports",
    "detector_releases_keep",
    "detector_socket_dir",
    "detector_nginx_upstream_conf",
    "detector_nginx_upstream_name",
    "detector_certbot_renew_service",
)


@dataclass(frozen=True)
class Host:
    """One deploy target with every name, path and port fab uses, all from the inventory."""

    name: str
    address: str
    user: str
    ssh_port: int
    key_file: str
    service: str
    app_root: str
    env_link: str
    domain: str
    https_ports: tuple[int, ...]
    releases_keep: int
    socket_dir: str
    upstream_conf: str
    upstream_name: str
    renew_service: str
    ca_bundle: str = ""
    drain_s: float = 5.0
    gate_timeout_s: float = 120.0
    private_address: str = ""
    backend_port: int = 0  # > 0: behind a load balancer, gated on this plain-HTTP port
    known_hosts: tuple[str, ...] = ()  # inventory known_hosts files, before ~/.ssh/known_hosts
    smoke_labels: tuple[str, ...] = ()  # labels deploy/smoke.jpg must yield; () = health's own
    acme_staging: bool = False  # staging or a private ACME server: the gate pins the installed
    acme_server: str = ""  # certificate instead of trusting the system CAs (deploy/health.py)
    cert_state_dir: str = ""  # public copy of the installed chain, renewal failure marker

    @property
    def releases_dir(self) -> str:
        return f"{self.app_root}/releases"

    @property
    def current_link(self) -> str:
        return f"{self.app_root}/current"

    @property
    def shared_dir(self) -> str:
        return f"{self.app_root}/shared"

    @property
    def lock_dir(self) -> str:
        return f"{self.shared_dir}/deploy.lock"

    @property
    def staging_dir(self) -> str:
        return f"{self.shared_dir}/staging"

    @property
    def base_python(self) -> str:
        return f"{self.env_link}/bin/python"

    def color_link(self, color: str) -> str:
        return f"{self.app_root}/colors/{color}"

    def socket(self, color: str) -> str:
        return f"{self.socket_dir}/{color}.sock"

    def release_dir(self, rid: str) -> str:
        return f"{self.releases_dir}/{rid}"


def _group_hosts(data: dict, group: str, seen: set[str] | None = None) -> list[str]:
    seen = seen if seen is not None else set()
    if group in seen or group not in data:
        return []
    seen.add(group)
    names = list(data[group].get("hosts", []))
    for child in data[group].get("children", []):
        names += _group_hosts(data, child, seen)
    return list(dict.fromkeys(names))


def hosts_from(data: dict, limit: list[str] | None = None) -> list[Host]:
    """Build Host entries from ansible-inventory JSON; group `detector` if present, else all."""
    hostvars = data.get("_meta", {}).get("hostvars", {})
    names = _group_hosts(data, GROUP) if GROUP in data else sorted(hostvars)
    if limit:
        unknown = sorted(set(limit) - set(names))
        if unknown:
            raise InventoryError(f"host(s) {', '.join(unknown)} not in the inventory's hosts")
        names = [n for n in names if n in limit]
    if not names:
        raise InventoryError("the inventory has no hosts; check --inventory")
    return [host_from(name, hostvars.get(name, {})) for name in names]


def host_from(name: str, v: dict) -> Host:
    """One Host from its merged variables, naming any missing setting."""
    missing = [k for k in REQUIRED if v.get(k) in (None, "")]
    if missing:
        raise InventoryError(
            f"host {name} lacks {', '.join(missing)}; set them in the inventory's group_vars/all/"
            f" (defaults: {DEFAULTS_FILE.relative_to(REPO)})"
        )
    unreadable = [k for k in REQUIRED if not isinstance(v[k], (str, int, list))]
    unreadable += [k for k in REQUIRED if "{{" in str(v[k])]
    if unreadable:
        raise InventoryError(
            f"host {name}: fab cannot read {', '.join(unreadable)} (a Jinja expression or a"
            " vault value; fab never renders or decrypts); set a literal outside vault.yml"
        )
    ports = v["detector_https_ports"]
    ports = [ports] if isinstance(ports, (int, str)) else ports
    return Host(
        name=name,
        address=str(v["ansible_host"]),
        user=str(v["detector_deploy_user"]),
        ssh_port=int(v.get("detector_ssh_port") or v.get("ansible_port") or 22),
        key_file=os.path.expanduser(
            str(v.get("detector_deploy_key_file") or v.get("ansible_ssh_private_key_file") or "")
        ),
        service=str(v["detector_service"]),
        app_root=str(v["detector_app_root"]).rstrip("/"),
        env_link=str(v["detector_env_link"]).rstrip("/"),
        domain=str(v["detector_domain"]),
        https_ports=tuple(int(p) for p in ports),
        releases_keep=int(v["detector_releases_keep"]),
        socket_dir=str(v["detector_socket_dir"]).rstrip("/"),
        upstream_conf=str(v["detector_nginx_upstream_conf"]),
        upstream_name=str(v["detector_nginx_upstream_name"]),
        renew_service=_service_name(str(v["detector_certbot_renew_service"])),
        ca_bundle=str(
            v.get("detector_deploy_ca_bundle")
            or v.get("detector_acme_root_ca")
            or os.environ.get(CA_BUNDLE_ENV)
            or ""
        ),
        drain_s=float(v.get("detector_deploy_drain_s", 5)),
        gate_timeout_s=float(v.get("detector_deploy_gate_timeout_s", 120)),
        private_address=_private(v),
        known_hosts=hostkeys.known_hosts_files(v),
        smoke_labels=tuple(str(x) for x in v.get("detector_deploy_smoke_labels") or ()),
        acme_staging=str(v.get("detector_acme_staging", "")).lower() in ("true", "yes", "1"),
        acme_server=str(v.get("detector_acme_server") or ""),
        cert_state_dir=str(v.get("detector_cert_state_dir") or "").rstrip("/"),
    )


@dataclass(frozen=True)
class Balancer:
    """The `lb` group's host and the upstream it balances over every detector host."""

    host: Host
    servers: tuple[tuple[str, str], ...]  # (detector name, private address), inventory order
    port: int
    max_fails: int
    fail_timeout_s: int
    keepalive: int


def lb_group(data: dict) -> str:
    """The name of the load balancer group (detector_lb_group, default `lb`)."""
    hostvars = data.get("_meta", {}).get("hostvars", {})
    for v in hostvars.values():
        if v.get(LB_GROUP_VAR):
            return str(v[LB_GROUP_VAR])
    return "lb"


def balancer_from(data: dict) -> Balancer | None:
    """The load balancer when the inventory has a non-empty lb group, else None (single shape)."""
    names = _group_hosts(data, lb_group(data))
    if not names:
        return None
    if len(names) != 1:
        raise InventoryError(f"the lb group must hold one host, not {', '.join(names)}")
    if GROUP not in data:
        raise InventoryError(f"an inventory with an lb host needs the detectors in group {GROUP}")
    hostvars = data.get("_meta", {}).get("hostvars", {})
    v = hostvars.get(names[0], {})
    servers = tuple((n, _private(hostvars.get(n, {}))) for n in _group_hosts(data, GROUP))
    return Balancer(
        host=host_from(names[0], v),
        servers=servers,
        port=int(v.get("detector_lb_backend_port") or 8080),
        max_fails=int(v.get("detector_lb_max_fails") or 1),
        fail_timeout_s=int(v.get("detector_lb_fail_timeout_s") or 10),
        keepalive=int(v.get("detector_lb_keepalive") or 16),
    )


def _private(v: dict) -> str:
    return str(v.get("detector_private_address") or v.get("ansible_host") or "")


def load_with_balancer(
    inventory: str | None = None, limit: list[str] | None = None
) -> tuple[list[Host], Balancer | None]:
    """Detector hosts to act on (each knows its lb backend port) and the load balancer, if any."""
    data = read(resolve_path(inventory))
    bal = balancer_from(data)
    hosts = hosts_from(data, limit)
    if bal:
        hosts = [replace(h, backend_port=bal.port) for h in hosts]
    return hosts, bal


def _service_name(name: str) -> str:
    return name if name.endswith(".service") else name + ".service"


def load(inventory: str | None = None, limit: list[str] | None = None) -> list[Host]:
    """Hosts to act on: resolve the inventory, read it, build Host entries."""
    return hosts_from(read(resolve_path(inventory)), limit)
