"""System facts and Debian packages: a release eep knows, with the answered Python."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from eep import app
from eep.remote import HostError, Remote
from eep.report import Report, progress

if TYPE_CHECKING:
    from eep.fleet import Fleet, FleetHost

# Daemons and tools from the distribution: nginx, supervisor and sudo; Debian's uWSGI
# with its python3 plugin (root-owned, no compiler needed); venv to build each
# release's virtualenv from the same /usr/bin/python3 the plugin embeds.
PACKAGES = ["nginx", "supervisor", "sudo", "uwsgi-core", "uwsgi-plugin-python3", "python3-venv"]
if app.USE_CELERY:
    PACKAGES.append("redis-server")
if app.TLS != "none":
    PACKAGES.append("openssl")  # makes the self-signed certificate
if app.TLS == "acme":
    # Debian's certbot: its certbot.timer renews twice a day (eep/tls.py).
    PACKAGES.append("certbot")
SERVICES = ["nginx", "supervisor"]
if app.DATABASE == "postgresql":
    # The distribution's PostgreSQL (Debian 12: 15, Debian 13: 17) and its default cluster.
    PACKAGES.append("postgresql")
    SERVICES.append("postgresql")

# What a host needs for the roles it plays in a fleet of several (eep.hosts): nginx
# (and TLS) on web hosts only, uWSGI on the app's hosts, the broker's Redis and the
# firewall that guards its port on the broker host. One host gets all of PACKAGES.
WEB_ONLY = {"nginx", "openssl", "certbot"}
TLS_ONLY = {"openssl", "certbot"}  # not on web hosts behind a balancer: HTTPS ends there
APP_ONLY = {"uwsgi-core", "uwsgi-plugin-python3", "python3-venv"}
BROKER_ONLY = {"redis-server", "nftables"}


def packages_for(fleet: Fleet | None, host: FleetHost | None) -> list[str]:
    """The packages `host` of `fleet` needs (all of PACKAGES on a host of its own)."""
    if fleet is None or host is None or fleet.single:
        return PACKAGES
    wanted = [*PACKAGES, "nftables"] if host.has("broker") else PACKAGES
    return [
        name
        for name in wanted
        if not (name in WEB_ONLY and not host.has("web"))
        and not (name in APP_ONLY and not host.runs_app)
        and not (name in BROKER_ONLY and not host.has("broker"))
        and not (name in TLS_ONLY and fleet.lb)
    ]


def services_for(host: FleetHost | None) -> list[str]:
    """nginx runs on web hosts only; supervisor (the app, the broker) everywhere."""
    return [s for s in SERVICES if s != "nginx" or host is None or host.has("web")]


# How these steps read the host: eep.provision runs them all in one round trip first.
OS_RELEASE = "cat /etc/os-release"
PYTHON_VERSION = "python3 -c 'import sys; print(*sys.version_info[:2], sep=\".\")'"


def package_states(names: list[str]) -> str:
    return "dpkg-query -W -f='${Package} ${Status}\\n' " + " ".join(names) + " 2>/dev/null"


PACKAGE_STATES = package_states(PACKAGES)


def service_state(service: str) -> list[str]:
    return [f"systemctl is-enabled {service}", f"systemctl is-active {service}"]


READS = [OS_RELEASE, PYTHON_VERSION, PACKAGE_STATES]
READS += [query for service in SERVICES for query in service_state(service)]


# The releases eep knows (ID and VERSION_ID of /etc/os-release) and the python3 each
# ships: uWSGI's python3 plugin is built for it, so a tree provisions only the release
# its python_version answers. Debian 12 and 13 are tested on every change; Ubuntu
# 24.04 has the same packages and is expected to work, but nothing tests it.
RELEASES = {
    ("debian", "12"): "3.11",
    ("debian", "13"): "3.13",
    ("ubuntu", "24.04"): "3.12",
}
UNTESTED = {("ubuntu", "24.04")}


def known_release(os_release: str) -> tuple[str, str]:
    """(PRETTY_NAME, its python3 version) of a release eep knows; HostError otherwise."""
    fields = {
        key: value.strip().strip("\"'")
        for key, _, value in (line.partition("=") for line in os_release.splitlines())
        if value and not key.startswith("#")
    }
    name = fields.get("PRETTY_NAME") or "an unknown system"
    release = (fields.get("ID", ""), fields.get("VERSION_ID", ""))
    if release not in RELEASES:
        known = ", ".join(f"{distro.title()} {version}" for distro, version in RELEASES)
        raise HostError(f"the host runs {name}, a release eep does not know (it knows {known})")
    if RELEASES[release] != app.PYTHON_VERSION:
        raise HostError(
            f"the host runs {name}, whose python3 is {RELEASES[release]}; this tree was made"
            f" for {app.PYTHON_VERSION} (re-bake with python_version={RELEASES[release]})"
        )
    if release in UNTESTED:
        name += " (expected to work, untested)"
    return name, RELEASES[release]


def check_system(remote: Remote, report: Report) -> bool:
    """Refuse, before any change, a host whose release eep does not know or whose Python
    differs from the answered one (also when python3 is not installed yet).

    Returns whether python3 is installed yet.
    """
    os_release = remote.run(OS_RELEASE, check=False, changes=False).stdout
    name, python = known_release(os_release)
    found = remote.run(PYTHON_VERSION, check=False, changes=False)
    version = found.stdout.strip()
    if found.exited == 0 and version != python:
        raise HostError(
            f"the host's python3 is {version}, not the {python} of its release;"
            " eep provisions only the release's own python3"
        )
    report.unchanged("system", f"{name}, python3 {version or 'not installed yet'}")
    return found.exited == 0


def missing_packages(remote: Remote, packages: list[str] = PACKAGES) -> list[str]:
    query = remote.run(package_states(packages), check=False, changes=False)
    installed = {
        line.split()[0] for line in query.stdout.splitlines() if line.endswith(" installed")
    }
    return [name for name in packages if name not in installed]


def ensure_packages(remote: Remote, report: Report, packages: list[str] = PACKAGES) -> None:
    missing = missing_packages(remote, packages)
    if not missing:
        report.unchanged("packages", " ".join(packages))
        return
    if not report.change("packages", "install " + " ".join(missing)):
        return
    names = " ".join(shlex.quote(name) for name in missing)
    env = "DEBIAN_FRONTEND=noninteractive"
    doing = f"[{report.host}] {'':<12} apt-get install {' '.join(missing)}"
    with progress(lambda secs: f"{doing} ({secs:.0f} s so far)"):
        remote.run(
            f"{env} apt-get update -q && {env} apt-get install -y -q --no-install-recommends {names}"
        )
    if "redis-server" in missing:
        # Debian starts a shared Redis on 127.0.0.1:6379 that any local user can use.
        # eep gives each app a private one, so the shared instance it just brought
        # in is switched off (an already installed one is left alone).
        remote.run("systemctl disable --now redis-server")
        report.change("redis-server", "disabled the shared default instance eep installed")


def ensure_services(remote: Remote, report: Report, services: list[str] = SERVICES) -> None:
    """nginx and supervisor (and PostgreSQL) enabled at boot and running."""
    for service in services:
        enabled, active = (
            remote.run(query, check=False, changes=False).stdout.strip()
            for query in service_state(service)
        )
        if enabled == "enabled" and active == "active":
            report.unchanged(f"service {service}", "enabled, running")
        elif report.change(f"service {service}", f"was {enabled or 'absent'}/{active}"):
            remote.run(f"systemctl enable --now {service}")
