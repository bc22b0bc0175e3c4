"""Every configuration file the host gets: where it comes from in this tree, where it goes.

The files under config/ are final after baking: what a reviewer reads there is
byte for byte what lands on the host. Provisioning, `--check` diffs and the
audit's drift check all read them through `render()`, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from eep import app
from eep.pathstate import PathState, regular_file

if TYPE_CHECKING:
    from eep.fleet import Fleet

TREE = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class HostFile:
    """One file installed on the host."""

    source: str  # path inside this tree
    path: str  # absolute path on the host
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    # Made from eep.hosts too: its $names are filled in by render() (fleet_values).
    from_fleet: bool = False

    @property
    def state(self) -> PathState:
        return regular_file(self.owner, self.group, self.mode)


HOST_FILES = [
    HostFile("config/tmpfiles.conf", f"/etc/tmpfiles.d/eep-{app.SLUG}.conf"),
    HostFile("config/uwsgi-base.ini", f"{app.CONF_DIR}/uwsgi.ini"),
    HostFile("config/no-release.py", f"{app.CONF_DIR}/no-release.py"),
    HostFile("config/supervisor.conf", f"/etc/supervisor/conf.d/{app.SLUG}.conf"),
    HostFile("config/supervisor-service.conf", "/etc/systemd/system/supervisor.service.d/eep.conf"),
    HostFile("config/nginx.conf", f"/etc/nginx/sites-available/{app.SLUG}"),
    HostFile("config/nginx-default.conf", "/etc/nginx/sites-available/eep-default"),
    # Included by the site: the load balancer whose X-Forwarded-For nginx believes.
    HostFile("config/nginx-balancer.conf", f"{app.CONF_DIR}/nginx-balancer.conf", from_fleet=True),
    # The page nginx answers with in maintenance mode (read through the app's group).
    HostFile("config/maintenance.html", f"{app.CONF_DIR}/maintenance.html"),
    HostFile("config/sudoers", f"/etc/sudoers.d/{app.SLUG}", mode=0o440),
    # Named by sudo rules: root-owned, so neither the app nor the developer can change them.
    HostFile("config/stop-app.sh", f"{app.CONF_DIR}/stop-app", mode=0o755),
    HostFile("config/reload.py", f"{app.CONF_DIR}/reload", mode=0o755),
    HostFile("config/as-app.py", f"{app.CONF_DIR}/as-app", mode=0o755),
    # Read by every uWSGI worker (`import = eep_env`) and by as-app: the app's settings.
    HostFile("config/eep_env.py", f"{app.CONF_DIR}/python/eep_env.py"),
    HostFile("config/logrotate.conf", f"/etc/logrotate.d/eep-{app.SLUG}"),
    # The developer's public key (never a private key): SSH login as the deploy account.
    HostFile(
        "config/authorized_keys",
        f"/home/{app.DEPLOY_USER}/.ssh/authorized_keys",
        owner="root",
        group=app.SLUG,
        mode=0o640,
    ),
]
if app.USE_CELERY:
    HOST_FILES.append(HostFile("config/redis.conf", f"{app.CONF_DIR}/redis.conf"))

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


def fleet_values(fleet: Fleet | None) -> dict[str, str]:
    """What the files made from eep.hosts say about it (no inventory: one host, no balancer)."""
    lb = fleet.lb if fleet else None
    webs = fleet.with_role("web") if fleet and lb else []
    return {
        # HAProxy: one server per web host, health-checked; the name is the inventory's.
        "servers": "\n".join(f"    server {web.name} {web.private}:80 check" for web in webs),
        "health_path": fleet.lb_health if fleet else "/",
        # nginx: the client's address from X-Forwarded-For, believed from the balancer only.
        "real_ip": (
            f"set_real_ip_from {lb.private};\nreal_ip_header X-Forwarded-For;"
            if lb
            else "# None: this app has no load balancer in eep.hosts."
        ),
    }


def render(host_file: HostFile, tree: Path = TREE, fleet: Fleet | None = None) -> str:
    """The exact content `host_file` must have on the host (a host of `fleet`)."""
    text = (tree / host_file.source).read_text(encoding="utf-8")
    return Template(text).substitute(fleet_values(fleet)) if host_file.from_fleet else text
