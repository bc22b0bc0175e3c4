"""`invoke provision`: bring hosts to the state this tree describes, in parallel, one report each."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from eep import (
    accounts,
    app,
    balancer,
    broker,
    claims,
    database,
    nginx,
    packages,
    supervisor,
    tls,
)
from eep.accounts import ensure_accounts
from eep.claims import check_claims
from eep.database import ensure_database
from eep.files import ensure_absent
from eep.fleet import Fleet, FleetHost
from eep.layout import DIRECTORIES, RUN_DIRECTORIES, ensure_layout, ensure_run_dirs
from eep.manifest import HOST_FILES, RETIRED_FILES
from eep.nginx import LOG_FILES, ensure_site
from eep.packages import check_system, ensure_packages, ensure_services
from eep.remote import HostError, Remote, Target
from eep.report import Report, say
from eep.sudoers import ensure_sudoers
from eep.supervisor import SERVICE_DROP_IN_DIR, ensure_programs, ensure_service_settings
from eep.uwsgi import ensure_uwsgi_files


def read_host(remote: Remote) -> None:
    """One round trip reads what every step below reads (eep/host/facts.py): each managed
    path, the steps' read-only commands, supervisor's programs. The steps answer from it
    until one changes the host; after that they read the host again themselves."""
    files = [host_file.path for host_file in HOST_FILES]
    dirs = [*DIRECTORIES, *RUN_DIRECTORIES]
    stats = files + dirs + LOG_FILES + RETIRED_FILES + [SERVICE_DROP_IN_DIR] + claims.PATHS
    commands = packages.READS + accounts.READS + nginx.READS + database.READS
    remote.prefetch(stats, files, commands, supervisor_conf=supervisor.CONF)


def provision_host(
    remote: Remote, report: Report, fleet: Fleet, host: FleetHost, token: str | None = None
) -> None:
    """Every step in order; each reads the host's state first and acts on the difference.
    `host` says which roles this host plays in `fleet`; `token`: with several hosts, the
    broker's password (eep/broker.py; None in check mode before it exists)."""
    if host.has("lb"):  # HAProxy and the deploy account only (fleet.check: never web too)
        balancer.provision_lb(remote, report, fleet)
        return
    place = (fleet, host)
    read_host(remote)  # does nothing on a host without python3 yet
    has_python = check_system(remote, report)
    # Before any change: a name or path that is not this app's stops the run here. The
    # check runs python3 on the host: a host without it gets it with the packages first.
    if has_python:
        check_claims(remote, report)
        database.check_claims(remote)
    ensure_packages(remote, report, packages.packages_for(fleet, host))
    ensure_services(remote, report, packages.services_for(host))
    if not remote.has_facts():  # the packages or services changed
        read_host(remote)
    if not has_python:
        check_claims(remote, report)
        database.check_claims(remote)
    nginx_groups_changed = ensure_accounts(remote, report)
    ensure_layout(remote, report, fleet)
    ensure_database(remote, report)
    ensure_run_dirs(remote, report)
    uwsgi_changed, broker_changed = ensure_uwsgi_files(remote, report, place)
    if broker.needs_secret(fleet):
        # A new password: the broker and the app's processes must read it again.
        secret_changed = broker.ensure_secret(remote, report, token)
        uwsgi_changed = uwsgi_changed or (secret_changed and host.runs_app)
        broker_changed = broker_changed or (secret_changed and host.has("broker"))
        if host.has("broker"):
            broker.ensure_firewall(remote, report, place)
    ensure_sudoers(remote, report)
    for path in RETIRED_FILES:
        ensure_absent(remote, report, path)
    ensure_service_settings(remote, report)
    ensure_programs(
        remote, report, place, uwsgi_changed=uwsgi_changed, broker_changed=broker_changed
    )
    if broker.needs_secret(fleet) and not host.has("broker"):
        broker.ensure_no_firewall(remote, report)  # the broker moved away, or never was here
    if not host.has("web"):
        nginx.ensure_no_site(remote, report)  # the site of a host that was a web host
        return  # no nginx here: a worker or broker host of several
    https_here = app.TLS != "none" and not fleet.lb  # else HTTPS ends at the lb host
    if https_here:
        tls.ensure_self_signed(remote, report)  # before the site: nginx -t reads its links
    ensure_site(remote, report, reload=nginx_groups_changed, fleet=fleet)
    if https_here:
        tls.ensure_acme(remote, report)  # after: nginx serves the challenge path


def _remote(host: FleetHost, options: dict) -> Remote:
    return Remote(
        Target.parse(host.provision_spec(), default_user="root"),
        identity=options["identity"],
        trust_new_host_key=options["trust_new_host_key"],
        sudo_password=options.get("sudo_password"),
    )


def _one_host(fleet: Fleet, host: FleetHost, options: dict) -> Report:
    remote = _remote(host, options)
    report = Report(str(remote.target) if fleet.single else host.name, check=options["check"])
    try:
        remote.open()
        provision_host(remote, report, fleet, host, options.get("token"))
    except HostError as error:
        report.fail(str(error))
    finally:
        remote.close()
    return report


def provision(
    targets: list[tuple[Fleet, FleetHost]],
    *,
    check: bool = False,
    identity: str = "",
    trust_new_host_key: bool = False,
    sudo_password: str | None = None,
) -> list[Report]:
    """Provision every host (in parallel); a failing host does not stop the others."""
    options = {
        "check": check,
        "identity": identity,
        "trust_new_host_key": trust_new_host_key,
        "sudo_password": sudo_password,
    }
    fleet = targets[0][0]
    if broker.needs_secret(fleet):
        # One round trip first: the broker's password, for every host to receive.
        def open_remote(host: FleetHost) -> Remote:
            remote = _remote(host, options)
            remote.open()
            return remote

        options["token"] = broker.fetch_token(fleet, open_remote, check=check)
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        reports = list(pool.map(lambda target: _one_host(target[0], target[1], options), targets))
    for report in reports:
        say(report.summary())
    return reports
