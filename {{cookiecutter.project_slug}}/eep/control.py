"""`invoke status`, `restart`, `logs`: day-to-day control as the deploy account, never root.

Everything goes through the literal sudo rules in config/sudoers or through files
the deploy account may read; nothing here needs a password.
"""

from __future__ import annotations

import shlex
import time

from eep import app
from eep.deploy import CTL, UWSGI_LOG, Session, log_size, wait_reloaded
from eep.remote import HostError
from eep.report import say
from eep.supervisor import PROGRAMS

LOGS = {"uwsgi": UWSGI_LOG, "celery": UWSGI_LOG, "redis": f"{app.LOG_DIR}/redis.log"}


def _short(command: str) -> str:
    """'/venv/bin/python3 /srv/x/.venv/bin/celery -A app worker' -> 'celery -A app worker'."""
    parts = command.split()
    if parts[0].rsplit("/", 1)[-1].startswith("python") and len(parts) > 1:
        parts = parts[1:]
    return " ".join([parts[0].rsplit("/", 1)[-1], *parts[1:]])[:70]


def _processes(session: Session) -> list[tuple[str, str, str, str, str]]:
    """(role, pid, uptime, memory, command) of every process of the runtime user."""
    master = session.remote.run(f"cat {app.RUN_DIR}/uwsgi/uwsgi.pid", check=False).stdout.strip()
    rows = session.remote.run(f"ps -u {app.RUNTIME_USER} -o pid=,ppid=,etimes=,rss=,args=").stdout
    found = []
    for row in rows.splitlines():
        pid, ppid, seconds, rss, command = row.split(None, 4)
        if pid == master:
            role = "uwsgi master"
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


def status(spec: str, *, identity: str = "") -> bool:
    """Print one table of the app's state; return False when something is down."""
    with Session(spec, identity) as session:
        states = {}
        for program in PROGRAMS:
            out = session.remote.run(f"{CTL} status {program}", check=False).stdout.split()
            states[program] = out[1] if len(out) > 1 else "UNKNOWN"
        current = next((r for r in session.agent("list")["releases"] if r["current"]), None)
        socket = session.remote.run(f"stat -c '%A %U:%G' {app.SOCKET}", check=False).stdout
        answer = session.http_status("/health")
        processes = _processes(session)
    for program, state in states.items():
        say(f"program   {program:<24} {state}")
    for role, pid, uptime, memory, command in processes:
        say(f"process   {role:<14} pid {pid:<7} up {uptime}  {memory:>8}  {command}")
    release = f"{current['id']} (activated {current['activated'][-1]})" if current else "none"
    say(f"release   {release}")
    say(f"socket    {app.SOCKET} {socket.strip() or 'MISSING'}")
    say(f"nginx     GET /health on {app.DOMAINS[0]} -> {answer or 'no answer'}")
    healthy = all(s == "RUNNING" for s in states.values()) and 0 < answer < 500
    say("status: " + ("up" if healthy else "DOWN"))
    return healthy


def restart(spec: str, *, identity: str = "", full: bool = False) -> None:
    """Graceful reload: workers one at a time, Celery finishes its task first."""
    with Session(spec, identity) as session:
        offset = log_size(session)
        if full:
            session.remote.run(f"{CTL} signal HUP {app.SLUG}")
        else:
            session.remote.run(f"touch {app.DEPLOY_TRIGGER}")
        kind = "full" if full else "chain"
        with session.step("reload", kind):
            wait_reloaded(session, kind, offset)


def logs(spec: str, *, identity: str = "", process: str = "", lines: int = 50, follow=False):
    """Print the app's logs (uWSGI and attached processes, or the broker)."""
    name = process or "uwsgi"
    if name not in LOGS or (name == "redis" and not app.USE_CELERY):
        raise HostError(f"no log for {name!r}: choose one of {', '.join(LOGS)}")
    command = f"tail -n {int(lines)} {'-F ' if follow else ''}{shlex.quote(LOGS[name])}"
    if name == "celery":
        command += " | grep --line-buffered -i celery"
    with Session(spec, identity) as session:
        if follow:
            session.remote.conn.run(command, pty=False)
        else:
            print(session.remote.run(command).stdout, end="")
