"""The app's supervisor programs: config installed, loaded, and the process tree running."""

from __future__ import annotations

import time

from eep import app
from eep.files import ensure_absent, ensure_dir, ensure_file
from eep.manifest import Place, host_file
from eep.pathstate import directory
from eep.remote import HostError, Remote
from eep.report import Report

CONF = "/etc/supervisor/supervisord.conf"
CTL = f"supervisorctl -c {CONF}"
SERVICE_DROP_IN_DIR = "/etc/systemd/system/supervisor.service.d"
PROGRAMS = [app.SLUG] + ([f"{app.SLUG}-redis"] if app.USE_CELERY else [])
BROKER_PROGRAM = f"{app.SLUG}-redis"
CONF_FILES = {app.SLUG: "config/supervisor.conf", BROKER_PROGRAM: "config/supervisor-broker.conf"}
ROLE_GONE = {
    app.SLUG: "this host runs no web or worker role",
    BROKER_PROGRAM: "this host does not have the broker role",
}


def programs_on(place: Place) -> list[str]:
    """The app's programs on this host: uWSGI on its app hosts, the broker on the broker host."""
    host = place[1]
    return [
        name
        for name in PROGRAMS
        if (name == BROKER_PROGRAM and host.has("broker")) or (name == app.SLUG and host.runs_app)
    ]


def program_states(remote: Remote, *, fresh: bool = False) -> dict[str, str]:
    """{'shop': 'RUNNING', 'shop-redis': 'RUNNING'} for this app's processes.

    Unless `fresh`, answered from the host's facts (read through supervisord's socket)
    while nothing changed since they were read.
    """
    known = None if fresh else remote.supervisor_states()
    if known is not None:
        return {name: state for name, state in known if name.split(":")[0] in PROGRAMS}
    out = remote.run(f"{CTL} status {' '.join(PROGRAMS)}", check=False, changes=False).stdout
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "ERROR" not in line:
            states[parts[0]] = parts[1]
    return states


def wait_running(remote: Remote, timeout: float = 20) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    fresh = False
    while True:
        states = program_states(remote, fresh=fresh)
        settled = states and all(s not in ("STARTING", "BACKOFF") for s in states.values())
        if settled or time.monotonic() > deadline:
            return states
        fresh = True  # what was read before is stale now: ask supervisor each time
        time.sleep(0.5)


def ensure_service_settings(remote: Remote, report: Report) -> None:
    """systemd brings a dead supervisord back in seconds, without orphans (a drop-in)."""
    ensure_dir(remote, report, SERVICE_DROP_IN_DIR, directory("root", "root", 0o755))
    if (
        ensure_file(remote, report, host_file("config/supervisor-service.conf"))
        and not report.check
    ):
        remote.run("systemctl daemon-reload")


def ensure_programs(
    remote: Remote, report: Report, place: Place, *, uwsgi_changed: bool, broker_changed: bool
):
    programs = programs_on(place)
    # A role this host no longer plays: its program's file goes, and `update` below
    # stops and removes the program (uWSGI quits gracefully, the broker saves its data).
    retired = [
        name
        for name in PROGRAMS
        if name not in programs
        and ensure_absent(remote, report, host_file(CONF_FILES[name]).path, ROLE_GONE[name])
    ]
    conf_changed = bool(retired)
    if app.SLUG in programs:
        conf_changed = ensure_file(remote, report, host_file("config/supervisor.conf"))
    if BROKER_PROGRAM in programs:
        broker = host_file("config/supervisor-broker.conf")
        conf_changed = ensure_file(remote, report, broker) or conf_changed
    states = program_states(remote)
    if conf_changed or len(states) < len(programs):
        # update adds new programs, restarts changed ones and leaves the rest alone.
        names = " ".join(programs + retired)
        if report.change("supervisor programs", f"reread and update {names}"):
            remote.run(f"{CTL} reread && {CTL} update {names}")
    else:
        if broker_changed and report.change(f"program {BROKER_PROGRAM}", "config changed, restart"):
            remote.run(f"{CTL} restart {BROKER_PROGRAM}")
        if uwsgi_changed and report.change(
            f"program {app.SLUG}", "config changed, graceful reload"
        ):
            # The reload script (as the app user): the master re-reads its ini, the socket
            # stays open, and it waits until every worker serves. Exit 3: not running.
            reload = f"runuser -u {app.RUNTIME_USER} -- {app.CONF_DIR}/reload full"
            result = remote.run(reload, check=False)
            if result.exited not in (0, 3):
                raise HostError(f"uWSGI did not reload: {result.stderr.strip()[-300:]}")
    if report.check:
        return
    states = wait_running(remote)
    states = {name: state for name, state in states.items() if name in programs}
    bad = {name: state for name, state in states.items() if state not in ("RUNNING", "STOPPED")}
    if bad or not states:
        raise HostError(
            f"supervisor programs not running: {bad or 'missing'}; see {app.LOG_DIR}/uwsgi.log"
        )
    report.unchanged("supervisor programs", ", ".join(f"{n} {s}" for n, s in states.items()))
