"""`invoke status`, `restart`, `stop`, `start`, `logs`, `run`, `shell`: day-to-day control
as the deploy account, never root.

Everything goes through the literal sudo rules in config/sudoers or through files
the deploy account may read; nothing here needs a password.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time

from eep import app, tls
from eep.host.celery import subcommand
from eep.maintenance import maintenance_state
from eep.manifest import host_file
from eep.remote import HostError, Remote, Target, known_hosts_path
from eep.report import say
from eep.serving import CTL, UWSGI_LOG, activate_release, await_celery, program_state, serve
from eep.session import AS_APP, Session
from eep.supervisor import PROGRAMS

LOGS = {
    "uwsgi": UWSGI_LOG,
    "celery": UWSGI_LOG,
    "redis": f"{app.LOG_DIR}/redis.log",
    "nginx": f"{app.LOG_DIR}/nginx-access.log",
    "nginx-error": f"{app.LOG_DIR}/nginx-error.log",
}
STOP_APP = f"sudo -n -u {app.RUNTIME_USER} {app.CONF_DIR}/stop-app"
# After a deploy or restart touched the trigger, the Celery worker finishes its tasks,
# exits, and the uWSGI master starts a new one: for this long, none running is expected.
CELERY_RESTART_GRACE = 120
# (role, pid, uptime, memory, command) of one process of the runtime user.
Process = tuple[str, str, str, str, str]

BALANCER_SNIPPET = host_file("config/nginx-balancer.conf").path


def _short(command: str) -> str:
    """'/venv/bin/python3 /srv/x/.venv/bin/celery -A app worker' -> 'celery -A app worker'."""
    parts = command.split()
    if parts[0].rsplit("/", 1)[-1].startswith("python") and len(parts) > 1:
        parts = parts[1:]
    return " ".join([parts[0].rsplit("/", 1)[-1], *parts[1:]])[:70]


def _processes(session: Session) -> list[Process]:
    """Every process of the runtime user."""
    master = session.remote.run(f"cat {app.RUN_DIR}/uwsgi/uwsgi.pid", check=False).stdout.strip()
    rows = session.remote.run(
        f"ps -u {app.RUNTIME_USER} -o stat=,pid=,ppid=,etimes=,rss=,args="
    ).stdout
    found = []
    for row in rows.splitlines():
        state, pid, ppid, seconds, rss, command = row.split(None, 5)
        if state.startswith("Z"):
            continue  # exited, not yet reaped by its parent
        if pid == master:
            role = "uwsgi master"
        elif subcommand(command.split()) == "beat":
            role = "celery beat"  # attached like the worker; adopted if uWSGI restarted
        elif ppid == master and "uwsgi" in command.split()[0]:
            role = "uwsgi worker"
        elif ppid == master:
            role = "attached"
        elif "redis-server" in command:
            role = "broker"
        else:
            role = "child"
        uptime = time.strftime("%H:%M:%S", time.gmtime(int(seconds)))
        found.append((role, pid, uptime, f"{int(rss) // 1024} MiB", _short(command)))
    return found


def celery_state(processes: list[Process], trigger_age: float | None) -> tuple[str, bool]:
    """What `status` says about the Celery worker, and whether that is healthy.

    `trigger_age`: seconds since a deploy or restart asked the worker to restart (None:
    never). Between the old worker's exit and the new one's start there is none.
    """
    pids = [row[1] for row in processes if row[0] == "attached" and row[4].startswith("celery")]
    if pids:
        return f"running, pid {' '.join(pids)}", True
    if trigger_age is not None and 0 <= trigger_age < CELERY_RESTART_GRACE:
        return f"restarting (asked {trigger_age:.0f} s ago by a deploy or restart)", True
    return "NOT RUNNING; see `invoke logs --process celery`", False


def beat_state(processes: list[Process], trigger_age: float | None) -> tuple[str, bool]:
    """What `status` says about Celery beat, and whether that is healthy: exactly one
    runs (two would queue every scheduled job twice), or it is restarting after a
    deploy or restart touched the trigger `trigger_age` seconds ago."""
    pids = [row[1] for row in processes if row[0] == "celery beat"]
    if len(pids) == 1:
        return f"running, pid {pids[0]}", True
    if pids:
        return f"{len(pids)} RUNNING (pids {' '.join(pids)}): scheduled jobs run twice", False
    if trigger_age is not None and 0 <= trigger_age < CELERY_RESTART_GRACE:
        return f"restarting (asked {trigger_age:.0f} s ago by a deploy or restart)", True
    return "NOT RUNNING; see `invoke logs`", False


def status(spec: str, *, identity: str = "", name: str = "") -> dict:
    """Print one table of the app's state on one host, for the roles it plays there;
    return {"healthy": bool, "release": id or "none", "health": one line}."""
    with Session(spec, identity) as session:
        web, worker = session.has("web"), app.USE_CELERY and session.has("worker")
        programs = [p for p in PROGRAMS if p == app.SLUG or session.has("broker")]
        states = {program: program_state(session, program) for program in programs}
        current = next((r for r in session.agent("list")["releases"] if r["current"]), None)
        socket = session.remote.run(f"stat -c '%A %U:%G' {app.SOCKET}", check=False).stdout
        answer = session.http_status("/health") if web else 0
        processes = _processes(session)
        ages = session.remote.run(
            f"date +%s; stat -c %Y {app.DEPLOY_TRIGGER}", check=False
        ).stdout.split()
        trigger_age = int(ages[0]) - int(ages[1]) if len(ages) == 2 else None
        maintenance = maintenance_state(session) if web else ""
        # Behind a load balancer HTTPS ends there (its status says which certificate).
        snippet = f"grep -qs ^set_real_ip_from {BALANCER_SNIPPET}"
        behind_lb = session.remote.run(snippet, check=False).exited == 0
        https_here = app.TLS != "none" and web and not behind_lb
        certificate = tls.describe(session.remote) if https_here else None
        roles = session.roles.get("eep-roles", "")
    prefix = f"[{name}] " if name else ""
    if roles:
        say(f"{prefix}roles     {roles}")
    for program, state in states.items():
        say(f"{prefix}program   {program:<24} {state}")
    for role, pid, uptime, memory, command in processes:
        say(f"{prefix}process   {role:<14} pid {pid:<7} up {uptime}  {memory:>8}  {command}")
    release = f"{current['id']} (activated {current['activated'][-1]})" if current else "none"
    say(f"{prefix}release   {release}")
    healthy = all(s == "RUNNING" for s in states.values())
    health = []
    if web:
        say(f"{prefix}socket    {app.SOCKET} {socket.strip() or 'MISSING'}")
        say(f"{prefix}nginx     GET /health on {app.DOMAINS[0]} -> {answer or 'no answer'}")
        healthy = healthy and 0 < answer < 500
        health.append(f"GET /health {answer or 'no answer'}")
    if certificate:
        say(f"{prefix}https     {certificate[0]}" + ("" if certificate[1] else " (RENEW SOON)"))
    if maintenance:
        say(
            f"{prefix}maintenance {maintenance}: visitors get 503 (`invoke maintenance off` ends it)"
        )
    if worker:
        celery, celery_ok = celery_state(processes, trigger_age)
        say(f"{prefix}celery    {celery}")
        healthy = healthy and celery_ok
        health.append(f"celery {celery.split(';')[0]}")
    if app.USE_BEAT and worker and session.has("beat"):
        beat, beat_ok = beat_state(processes, trigger_age)
        say(f"{prefix}beat      {beat}")
        healthy = healthy and beat_ok
        health.append(f"beat {beat.split(';')[0]}")
    elif app.USE_BEAT and any(row[0] == "celery beat" for row in processes):
        # Beat belongs to the beat host alone: one here too runs every job twice.
        say(f"{prefix}beat      RUNNING here, but this is not the beat host")
        healthy = False
        health.append("beat running on the wrong host")
    if session.has("broker") and app.USE_CELERY:
        health.append(f"broker {states.get(f'{app.SLUG}-redis', '?')}")
    say(f"{prefix}status: " + ("up" if healthy else "DOWN"))
    return {
        "healthy": healthy,
        "release": current["id"] if current else "none",
        "health": ", ".join(health),
    }


def restart(spec: str, *, identity: str = "", mode: str = "chain") -> None:
    """Graceful reload ("chain", "all" or "full"); Celery finishes its task first."""
    with Session(spec, identity) as session:
        with session.step("reload") as details:
            details.append(serve(session, mode))
        await_celery(session)


def _leftovers(session: Session) -> list[str]:
    """Processes of the app user still running after uWSGI stopped (the broker excepted)."""
    rows = session.remote.run(f"ps -u {app.RUNTIME_USER} -o pid=,comm=", check=False).stdout
    return [row.split()[0] for row in rows.splitlines() if row.split()[1:] != ["redis-server"]]


def stop(spec: str, *, identity: str = "", now: bool = False, timeout: float = 600) -> None:
    """Stop the web app; wait until Celery has finished its running tasks (or kill them: now)."""
    with Session(spec, identity) as session, session.locked():
        stop_app(session, now=now, timeout=timeout)
    say(f"[{session.target}] stopped {app.SLUG}; `invoke start` brings it back")


def stop_app(session: Session, *, now: bool = False, timeout: float = 600) -> None:
    """`invoke stop` in an open session that holds the lock (restore uses it too)."""
    with session.step("stop", f"supervisorctl stop {app.SLUG}"):
        # uWSGI quits at once: nginx gets no answer from the app from now on.
        session.remote.run(f"{CTL} stop {app.SLUG}")
    if now:
        with session.step("kill", "running tasks and attached processes killed (--now)"):
            session.remote.run(f"{STOP_APP} now")
    else:
        # Celery outlives uWSGI (it is tracked by a pidfile): one TERM, a warm shutdown.
        session.remote.run(f"{STOP_APP} warm")
    with session.step("tasks", "every process of the app has exited; the broker keeps its queue"):
        deadline = time.monotonic() + timeout
        while left := _leftovers(session):
            if time.monotonic() > deadline:
                raise HostError(
                    f"still running after {timeout:.0f} s: pids {' '.join(left)};"
                    " `invoke stop --now` kills them"
                )
            time.sleep(1)


def start(spec: str, *, identity: str = "") -> None:
    """Start the app and wait until every worker serves; a release that cannot start
    is marked failed and the release activated before it is started instead."""
    with Session(spec, identity) as session, session.locked():
        start_app(session)
        answer = session.http_status("/health")
    say(f"[{session.target}] started {app.SLUG}: nginx answers {answer}")


def start_app(session: Session) -> None:
    """`invoke start` in an open session that holds the lock (restore uses it too)."""
    try:
        with session.step("start") as details:
            details.append(serve(session, "wait"))
    except HostError as error:
        current = next((r for r in session.agent("list")["releases"] if r["current"]), None)
        if current is None:
            raise
        session.say("failed", f"{current['id']}: {error}")
        session.agent("fail", current["id"], f"failed to start: {error}")
        try:
            release_id = activate_release(
                session, ["rollback"], "all", how="start-fallback", undo=False
            )
        except HostError as fallback:
            raise HostError(f"{current['id']} failed to start ({error}); {fallback}") from None
        raise HostError(
            f"{current['id']} failed to start ({error}); {release_id} serves instead"
        ) from None


def run(spec: str, command: str, *, identity: str = "") -> int:
    """Run one command on the host AS THE APP USER in the current release, with the app's
    environment and settings (config/as-app.py); its exit status."""
    target = Target.parse(spec, default_user=app.DEPLOY_USER)
    remote = Remote(target, identity=identity, become_root=False)
    remote.open()
    try:
        # The command goes to as-app on stdin (printf is the shell's own, not a process).
        request = shlex.quote(json.dumps({"command": command}))
        result = remote.conn.run(
            f"printf '%s\\n' {request} | {AS_APP} run", warn=True, in_stream=False
        )
    finally:
        remote.close()
    return result.exited


def shell_command(spec: str, *, identity: str = "") -> list[str]:
    """The ssh command line of `invoke shell`: host keys checked against the tree's known_hosts."""
    target = Target.parse(spec, default_user=app.DEPLOY_USER)
    if shutil.which("ssh") is None:
        raise HostError("`invoke shell` needs the OpenSSH client (ssh) on this machine")
    argv = ["ssh", "-t", "-o", "StrictHostKeyChecking=yes"]
    argv += ["-o", f"UserKnownHostsFile={known_hosts_path()} ~/.ssh/known_hosts"]
    argv += ["-p", str(target.port)] if target.port else []
    argv += ["-i", identity] if identity else []
    return [*argv, f"{target.user}@{target.host}", f"{AS_APP} shell"]


def shell(spec: str, *, identity: str = "") -> int:
    """An interactive shell on the host as the app user, in the current release."""
    return subprocess.run(shell_command(spec, identity=identity), check=False).returncode


def printable(text: str) -> str:
    """`text` with every control or invisible character (terminal escapes, carriage returns,
    bidi overrides) shown as an escape such as \\x1b, never interpreted; newlines and
    tabs stay. The logs hold what the app wrote: it must not drive the reader's terminal."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


class _PrintableOutput:
    """Where `logs --follow` streams to: standard output, through printable()."""

    def write(self, text: str) -> None:
        sys.stdout.write(printable(text))

    def flush(self) -> None:
        sys.stdout.flush()


def logs(spec: str, *, identity: str = "", process: str = "", lines: int = 50, follow=False):
    """Print the app's logs: uWSGI and its attached processes, the broker, or nginx's."""
    name = process or "uwsgi"
    if name not in LOGS or (name == "redis" and not app.USE_CELERY):
        raise HostError(f"no log for {name!r}: choose one of {', '.join(LOGS)}")
    command = f"tail -n {int(lines)} {'-F ' if follow else ''}{shlex.quote(LOGS[name])}"
    if name == "celery":
        command += " | grep --line-buffered -i celery"
    with Session(spec, identity) as session:
        if follow:
            session.remote.conn.run(command, pty=False, out_stream=_PrintableOutput())
        else:
            say(printable(session.remote.run(command).stdout), end="")
