"""Every configuration file the host gets: where it comes from in this tree, where it goes.

The files under config/ are final after baking: what a reviewer reads there is
byte for byte what lands on the host. Provisioning, `--check` diffs and the
audit's drift check all read them through `render()`, so they cannot disagree.

A few files depend on the host's place in the fleet (eep.hosts in invoke.yaml): its
roles, the broker's private address, the app hosts allowed to reach it. Those are
marked `from_fleet` and hold `$NAME` placeholders, each documented in the file's header
comment; `render()` fills them in with the values `host_values()` gives for one host
(string.Template: `$$` is a dollar sign), and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from eep import app
from eep.pathstate import PathState, regular_file

if TYPE_CHECKING:
    from eep.fleet import Fleet, FleetHost

# A host's place: the fleet it belongs to, and itself.
Place = tuple["Fleet", "FleetHost"]

TREE = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class HostFile:
    """One file installed on the host."""

    source: str  # path inside this tree
    path: str  # absolute path on the host
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    # Installed only on hosts with one of these roles (empty: on every host) ...
    roles: frozenset[str] = frozenset()
    # ... and only when the fleet has several hosts (`several`) or only one (`single`).
    fleet: str = ""
    # Made from eep.hosts: its $names are filled in for the host by render().
    from_fleet: bool = False
    # Only when the fleet has a load balancer ("lb") or has none ("no-lb").
    balancer: str = ""

    def wanted(self, fleet: Fleet, host: FleetHost) -> bool:
        """Whether `host` of `fleet` gets this file."""
        if self.roles and not self.roles & host.roles:
            return False
        if self.balancer and self.balancer != ("lb" if fleet.lb else "no-lb"):
            return False
        return self.fleet != ("single" if not fleet.single else "several")

    @property
    def state(self) -> PathState:
        return regular_file(self.owner, self.group, self.mode)


WEB = frozenset({"web"})  # nginx's files: on web hosts only
NGINX_SITE = f"/etc/nginx/sites-available/{app.SLUG}"
HOST_FILES = [
    HostFile("config/tmpfiles.conf", f"/etc/tmpfiles.d/eep-{app.SLUG}.conf"),
    HostFile("config/uwsgi-base.ini", f"{app.CONF_DIR}/uwsgi.ini"),
    HostFile("config/no-release.py", f"{app.CONF_DIR}/no-release.py"),
    HostFile(
        "config/supervisor.conf",
        f"/etc/supervisor/conf.d/{app.SLUG}.conf",
        roles=frozenset({"web", "worker"}),
    ),
    HostFile("config/supervisor-service.conf", "/etc/systemd/system/supervisor.service.d/eep.conf"),
]
# HTTPS ends at nginx without a load balancer, at HAProxy with one (eep/balancer.py): the
# web hosts behind it get the same site without its HTTPS parts (no certificate there).
HOST_FILES += (
    [HostFile("config/nginx.conf", NGINX_SITE, roles=WEB)]
    if app.TLS == "none"
    else [
        HostFile("config/nginx.conf", NGINX_SITE, roles=WEB, balancer="no-lb"),
        HostFile("config/nginx-behind-lb.conf", NGINX_SITE, roles=WEB, balancer="lb"),
    ]
)
HOST_FILES += [
    HostFile("config/nginx-default.conf", "/etc/nginx/sites-available/eep-default", roles=WEB),
    # Included by the site: the load balancer whose X-Forwarded-For nginx believes.
    HostFile(
        "config/nginx-balancer.conf",
        f"{app.CONF_DIR}/nginx-balancer.conf",
        from_fleet=True,
        roles=WEB,
    ),
    # The page nginx answers with in maintenance mode (read through the app's group).
    HostFile("config/maintenance.html", f"{app.CONF_DIR}/maintenance.html", roles=WEB),
    HostFile("config/sudoers", f"/etc/sudoers.d/{app.SLUG}", mode=0o440),
    # Named by sudo rules: root-owned, so neither the app nor the developer can change them.
    HostFile("config/stop-app.sh", f"{app.CONF_DIR}/stop-app", mode=0o755),
    HostFile("config/reload.py", f"{app.CONF_DIR}/reload", mode=0o755),
    HostFile("config/as-app.py", f"{app.CONF_DIR}/as-app", mode=0o755),
    # Read by every uWSGI worker (`import = eep_env`) and by as-app: the app's settings.
    HostFile("config/eep_env.py", f"{app.CONF_DIR}/python/eep_env.py"),
    HostFile("config/logrotate.conf", f"/etc/logrotate.d/eep-{app.SLUG}", roles=WEB),
    # The developer's public key (never a private key): SSH login as the deploy account.
    HostFile(
        "config/authorized_keys",
        f"/home/{app.DEPLOY_USER}/.ssh/authorized_keys",
        owner="root",
        group=app.SLUG,
        mode=0o640,
    ),
]
# What this host is in the app's fleet (its roles, where the broker is): read by uWSGI
# (config/uwsgi-base.ini includes it), the release agent and eep_env. Rendered per host.
HOST_FILES.append(HostFile("config/host.ini", f"{app.CONF_DIR}/host.ini", from_fleet=True))
if app.USE_CELERY:
    BROKER = frozenset({"broker"})
    HOST_FILES += [
        # One host: a unix socket only; several: the private network, with a password.
        HostFile("config/redis.conf", f"{app.CONF_DIR}/redis.conf", roles=BROKER, fleet="single"),
        HostFile(
            "config/redis-fleet.conf",
            f"{app.CONF_DIR}/redis.conf",
            roles=BROKER,
            fleet="several",
            from_fleet=True,
        ),
        HostFile(
            "config/supervisor-broker.conf",
            f"/etc/supervisor/conf.d/{app.SLUG}.broker.conf",
            roles=BROKER,
        ),
        # Several hosts: the broker's port is open to the app's hosts only (eep/broker.py).
        HostFile(
            "config/firewall.nft",
            f"{app.CONF_DIR}/firewall.nft",
            roles=BROKER,
            fleet="several",
            from_fleet=True,
        ),
        HostFile(
            "config/firewall.service",
            f"/etc/systemd/system/eep-{app.SLUG}-firewall.service",
            roles=BROKER,
            fleet="several",
        ),
    ]

# What the host with the lb role gets instead (eep/balancer.py): HAProxy's configuration,
# the one script the deploy account may run there as root, its sudo rules, its key.
LB_FILES = [
    HostFile("config/haproxy.cfg", "/etc/haproxy/haproxy.cfg", from_fleet=True),
    HostFile("config/balancer.py", f"{app.CONF_DIR}/balancer", mode=0o755),
    HostFile("config/sudoers-lb", f"/etc/sudoers.d/{app.SLUG}", mode=0o440),
    next(entry for entry in HOST_FILES if entry.source == "config/authorized_keys"),
]

# What earlier versions of this tree installed and this one no longer does: provisioning
# removes them, so a host holds only what a reviewer can read here.
RETIRED_FILES = [
    f"{app.CONF_DIR}/reload-wait",  # replaced by config/reload.py
]


def host_file(source: str) -> HostFile:
    """The entry of HOST_FILES (or LB_FILES) for a file of this tree."""
    return next(entry for entry in HOST_FILES + LB_FILES if entry.source == source)


def site_file(fleet: Fleet | None) -> HostFile:
    """The app's nginx site for the web hosts of `fleet` (None: a host of its own)."""
    lb = "lb" if fleet is not None and fleet.lb else "no-lb"
    return next(e for e in HOST_FILES if e.path == NGINX_SITE and e.balancer in ("", lb))


def files_for(fleet: Fleet, host: FleetHost) -> list[HostFile]:
    """The entries of HOST_FILES that `host` gets."""
    return [entry for entry in HOST_FILES if entry.wanted(fleet, host)]


BROKER_PORT = 6379


def host_values(fleet: Fleet, host: FleetHost) -> dict[str, str]:
    """What each $NAME stands for on `host` (documented where the files use them)."""
    broker = fleet.broker
    # Beat on the first worker host only (two beats run every job twice); also with
    # celery_beat=n, so that a release attaching a beat of its own has a host for it.
    beat = next(iter(fleet.with_role("worker")), None)
    values = {
        # One server given with --host has no name of its own: its address depends on
        # how it is reached (an ssh alias, an IP), and host.ini must not.
        "HOST": "" if fleet.single else host.name,
        "ROLES": " ".join(sorted(host.roles)),
        "WEB": "yes" if host.has("web") else "no",
        "WORKER": "yes" if host.has("worker") else "no",
        "BEAT": "yes" if beat is not None and beat.name == host.name else "no",
        "BROKER": "yes" if host.has("broker") else "no",
        "BROKER_PORT": str(BROKER_PORT),
    }
    if fleet.single or broker is None:
        # One host: the private broker's unix socket (config/redis.conf).
        values["BROKER_URL"] = f"redis+socket://{app.RUN_DIR}/redis/redis.sock"
    else:
        # Several: over the private network (config/redis-fleet.conf); eep_env adds the
        # password from BROKER_SECRET, which is in no file of this tree.
        values["BROKER_URL"] = f"redis://{broker.private}:{BROKER_PORT}/0"
    values["BROKER_ADDRESS"] = broker.private if broker is not None else ""
    values["APP_HOSTS"] = ", ".join(h.private for h in fleet.app_hosts if h.private)
    return values


# Several hosts: the broker's password, made once on the broker host, copied by
# provisioning to every app host (root:<app> 0640; eep/broker.py). A redis.conf line.
BROKER_SECRET = f"{app.CONF_DIR}/broker-secret.conf"


def fleet_values(fleet: Fleet | None) -> dict[str, str]:
    """What the files made from eep.hosts say about it (no inventory: one host, no balancer)."""
    from eep import tls  # eep.tls imports eep.remote, which imports this module

    lb = fleet.lb if fleet else None
    webs = fleet.with_role("web") if fleet and lb else []
    return {
        # HAProxy: one server per web host, health-checked; the name is the inventory's.
        "servers": "\n".join(f"    server {web.name} {web.private}:80 check" for web in webs),
        "health_path": fleet.lb_health if fleet else "/",
        # The lb host with tls=acme: where certbot answers the challenge (eep/tls.py).
        "acme_port": str(tls.ACME_PORT),
        # nginx: the client's address (X-Forwarded-For) and scheme (X-Forwarded-Proto,
        # $eep_proto: the site passes it to the app), believed from the balancer only.
        "real_ip": "\n".join(
            [
                f"set_real_ip_from {lb.private};",
                "real_ip_header X-Forwarded-For;",
                "set $eep_proto $scheme;",
                f'if ($realip_remote_addr = "{lb.private}") ' + "{",
                "    set $eep_proto $http_x_forwarded_proto;",
                "}",
            ]
            if lb
            else ["# None: this app has no load balancer in eep.hosts.", "set $eep_proto $scheme;"]
        ),
    }


def render(
    host_file: HostFile,
    tree: Path = TREE,
    fleet: Fleet | None = None,
    place: Place | None = None,
) -> str:
    """The exact content `host_file` must have on the host: a host of `fleet`, or the
    host of `place` (its fleet and itself), for the files that depend on the host."""
    text = (tree / host_file.source).read_text(encoding="utf-8")
    if not host_file.from_fleet:
        return text
    values = fleet_values(place[0] if place else fleet)
    if place is not None:
        values |= host_values(*place)
    try:
        return Template(text).substitute(values)
    except KeyError as error:
        raise ValueError(f"{host_file.source}: ${error.args[0]} depends on the host") from None
