"""The app's hosts and their roles: `eep.hosts` in invoke.yaml, checked once, used by every task.

One host holding web, worker and broker is what a single server has always been. With
several hosts, each names the roles it plays:

- web: nginx + uWSGI serving the app;
- worker: the Celery worker (and beat, on the first worker host only);
- broker: the app's Redis, on the private network, with a password;
- lb: HAProxy in front of the web hosts (at most one).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from eep import app
from eep.remote import HostError, Target

ROLES = ("lb", "web", "worker", "broker")
# What a host given with --host, outside any inventory, plays: everything but the balancer.
SINGLE_HOST_ROLES = frozenset({"web", "worker", "broker"} if app.USE_CELERY else {"web"})
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
# The path the load balancer checks on each web host (eep.lb_health): no space, quote or
# `#`, which HAProxy's configuration would read as the end of it.
_HEALTH_PATH = re.compile(r"/[A-Za-z0-9._~/%?=&+:,;@!*'()-]{0,200}\Z")


class FleetError(HostError):
    """The inventory is not usable; the message is one line naming the host and the fix."""


@dataclass(frozen=True)
class FleetHost:
    """One server of the app: its name, how SSH reaches it, its private address, its roles."""

    name: str
    ssh: str  # HOST[:PORT], or USER@HOST[:PORT] for provisioning through sudo
    private: str  # its address on the network between the app's hosts ("" on a single host)
    roles: frozenset[str]

    def has(self, role: str) -> bool:
        return role in self.roles

    @property
    def runs_app(self) -> bool:
        """Whether the host gets the app's releases (it serves requests or runs tasks)."""
        return bool(self.roles & {"web", "worker"})

    def provision_spec(self) -> str:
        """root@HOST[:PORT], unless the inventory names another (sudo) account."""
        return self.ssh if "@" in self.ssh else f"root@{self.ssh}"

    def deploy_spec(self) -> str:
        """The deploy account at this host."""
        return f"{app.DEPLOY_USER}@{self.ssh.rpartition('@')[2]}"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Fleet:
    """Every host of the app, in the inventory's order (the order deploys go in)."""

    hosts: tuple[FleetHost, ...]
    lb_health: str = "/"  # the URL the load balancer checks on each web host

    @property
    def single(self) -> bool:
        """One host plays every role: the broker needs no network (a unix socket)."""
        return len(self.hosts) == 1

    def with_role(self, role: str) -> list[FleetHost]:
        return [host for host in self.hosts if host.has(role)]

    @property
    def app_hosts(self) -> list[FleetHost]:
        return [host for host in self.hosts if host.runs_app]

    @property
    def lb(self) -> FleetHost | None:
        return next(iter(self.with_role("lb")), None)

    @property
    def broker(self) -> FleetHost | None:
        return next(iter(self.with_role("broker")), None)

    @property
    def beat_host(self) -> FleetHost | None:
        """The one host that runs Celery beat: the first worker host (beat twice = jobs twice)."""
        workers = self.with_role("worker")
        return workers[0] if app.USE_BEAT and workers else None

    def named(self, names: Iterable[str]) -> list[FleetHost]:
        """The hosts named (by name or SSH address), in inventory order; FleetError for others."""
        wanted = list(names)
        known = {key: host for host in self.hosts for key in (host.name, host.ssh)}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise FleetError(
                f"{', '.join(unknown)}: not in eep.hosts"
                f" (known: {', '.join(host.name for host in self.hosts)})"
            )
        picked = {known[name].name for name in wanted}
        return [host for host in self.hosts if host.name in picked]


def single_host(spec: str) -> Fleet:
    """A host given with --host outside any inventory: one server with every app role."""
    target = Target.parse(spec, default_user="root")
    address = f"{target.host}:{target.port}" if target.port else target.host
    ssh = spec if "@" in spec else address
    return Fleet((FleetHost(target.host, ssh, "", SINGLE_HOST_ROLES),))


def resolve(
    inventory: Mapping[str, object] | None,
    given: list[str],
    listed: list[str],
    lb_health: str = "/",
) -> list[tuple[Fleet, FleetHost]]:
    """The hosts a command acts on, each with the fleet it belongs to.

    With an inventory, --host (`given`) picks some of its hosts by name or address; without
    one, every host given (or `listed` in invoke.yaml's older *_hosts lists) is a server of
    its own holding every role. `lb_health`: eep.lb_health, what the balancer checks.
    """
    fleet = load(inventory, lb_health)
    if fleet is not None:
        return [(fleet, host) for host in (fleet.named(given) if given else fleet.hosts)]
    singles = [single_host(spec) for spec in given or listed]
    return [(single, single.hosts[0]) for single in singles]


def load(entries: Mapping[str, object] | None, lb_health: str = "/") -> Fleet | None:
    """The inventory from invoke.yaml's `eep.hosts` (a mapping name -> settings), checked;
    None when it is empty (hosts then come from --host or the older *_hosts lists)."""
    if not entries:
        return None
    if not isinstance(entries, Mapping):
        raise FleetError("eep.hosts must map host names to {ssh: ..., roles: [...]}")
    hosts = tuple(_host(str(name), settings) for name, settings in entries.items())
    fleet = Fleet(hosts, lb_health=str(lb_health or "/"))
    check(fleet)
    return fleet


def _host(name: str, settings: object) -> FleetHost:
    where = f"eep.hosts.{name}"
    if not _NAME.match(name):
        raise FleetError(f"{where}: a host name is lowercase letters, digits and dashes")
    if not isinstance(settings, Mapping):
        raise FleetError(f"{where}: give its settings (ssh: HOST, roles: [web])")
    unknown = sorted(set(settings) - {"ssh", "private", "roles"})
    if unknown:
        raise FleetError(f"{where}: unknown setting {unknown[0]!r} (known: ssh, private, roles)")
    ssh = str(settings.get("ssh") or "").strip()
    if not ssh:
        raise FleetError(f"{where}: no ssh address (HOST, HOST:PORT or ADMIN@HOST)")
    try:
        Target.parse(ssh, default_user="root")
    except HostError as error:
        raise FleetError(f"{where}: {error}") from None
    roles = settings.get("roles") or []
    if isinstance(roles, str):
        roles = roles.replace(",", " ").split()
    if not isinstance(roles, list) or not roles:
        raise FleetError(f"{where}: no roles (any of {', '.join(ROLES)})")
    bad = [str(role) for role in roles if role not in ROLES]
    if bad:
        raise FleetError(f"{where}: unknown role {bad[0]!r} (roles: {', '.join(ROLES)})")
    private = str(settings.get("private") or "").strip()
    if private:
        try:
            ipaddress.ip_address(private)
        except ValueError:
            raise FleetError(f"{where}: private must be an IP address, not {private!r}") from None
    return FleetHost(name, ssh, private, frozenset(str(role) for role in roles))


def check(fleet: Fleet) -> None:
    """The rules a fleet must meet before anything connects; FleetError names the first broken."""
    hosts = fleet.hosts
    for key in ("name", "ssh"):
        values = [getattr(host, key) for host in hosts]
        twice = next((value for value in values if values.count(value) > 1), None)
        if twice:
            raise FleetError(f"eep.hosts: {key} {twice!r} is given twice")
    if not fleet.with_role("web"):
        raise FleetError("eep.hosts: no host has the web role (someone must serve the app)")
    for host in hosts:
        if host.has("lb") and host.has("web"):
            raise FleetError(
                f"eep.hosts.{host}: lb and web on one host both need ports 80 and 443;"
                " give the load balancer a host of its own"
            )
        if host.has("lb") and len(host.roles) > 1:
            raise FleetError(
                f"eep.hosts.{host}: the lb host plays no other role (HAProxy and the deploy"
                " account only); give it a host of its own"
            )
    if len(fleet.with_role("lb")) > 1:
        raise FleetError("eep.hosts: more than one lb host (eep runs one load balancer)")
    if fleet.lb and not _HEALTH_PATH.match(fleet.lb_health):
        raise FleetError(
            f"eep.lb_health: {fleet.lb_health[:60]!r} is not a URL path"
            " (/health/: no space, quote or #)"
        )
    if app.USE_CELERY:
        if not fleet.with_role("worker"):
            raise FleetError("eep.hosts: no host has the worker role (Celery needs one)")
        if len(fleet.with_role("broker")) != 1:
            raise FleetError("eep.hosts: exactly one host must have the broker role")
    else:
        for host in hosts:
            if host.roles & {"worker", "broker"}:
                raise FleetError(
                    f"eep.hosts.{host}: worker and broker roles need a tree baked with Celery"
                )
    if fleet.single:
        return
    if app.DATABASE != "none":
        raise FleetError(
            "eep.hosts: several hosts with database=postgresql are not supported yet"
            " (the database is local to its host); use one host, or a PostgreSQL server"
            " of your own: database=none and `invoke env.set DATABASE_URL`"
        )
    missing = [host.name for host in hosts if not host.private]
    if missing:
        raise FleetError(
            f"eep.hosts.{missing[0]}: no private address: several hosts talk to each other"
            " over their private network (private: 10.0.0.11)"
        )
    privates = [host.private for host in hosts]
    twice = next((value for value in privates if privates.count(value) > 1), None)
    if twice:
        raise FleetError(f"eep.hosts: private address {twice} is given twice")
