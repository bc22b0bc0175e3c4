#!/usr/bin/python3
"""eep: reload {{ cookiecutter.project_slug }}'s web workers gracefully and wait until all serve again.

Installed as {{ cookiecutter.__conf_dir }}/reload (root:root 0755) and run by the deploy
account through its sudo rule AS THE APP USER (the only account that may signal the
workers or read the uWSGI master's stats socket):

    reload chain   one worker at a time: the others keep serving, no pause at all;
                   takes one app load per worker.
    reload all     every worker at once: each finishes its request, then all load the
                   app together while new requests wait in the socket's backlog;
                   takes about one app load (a pause of that length).
    reload full    the master too (SIGHUP to it): it re-reads its ini, e.g. a release's
                   changed uwsgi.ini; otherwise like `all`. The socket stays open.
    reload wait    signal nothing: wait until every worker accepts requests with the
                   app (after supervisor started uWSGI).

A worker is told to go with SIGHUP: it finishes its request and exits, and the master
starts a new one, which loads the app from `current`. Only a worker that accepts
requests is signalled: until then (while it loads the app, e.g. just after max-requests
recycled it) it still has the master's SIGHUP handler, which ignores the signal; uWSGI's
own chain/workers reload does not wait for that and then stalls for worker-reload-mercy
(60 s; measured). A worker still there and idle a second after its signal gets another.
The stats socket is read every 50 ms; each read also wakes the master, which would
otherwise notice an exited worker only about once a second.

The master's own graceful reload (`full`) signals its workers only once, so the script
first waits until every worker accepts, and signals again any old worker still alive a
second later.

Exit 0 when every worker is a new process that accepts requests. Exit 1 with one line
when the release does not come up: a new worker accepts without the app (its import
failed), workers keep dying while they load it, or the timeout. Exit 3 when uWSGI is not
running, or exits during `wait` (the caller then has supervisor start it); a master
that exits during a reload is a failure (1). A failure line ends with what uWSGI logged about it.

On a host without the web role (config/host.ini: eep-web = no) the master has no web
worker, only attached processes: `chain` and `all` have nothing to reload, `full`
signals the master and waits until the new one answers on its stats socket, `wait`
until the master answers.
"""

import json
import os
import re
import signal
import socket
import sys
import time

STATS = "{{ cookiecutter.__run_dir }}/uwsgi/stats.sock"
LOG = "{{ cookiecutter.__log_dir }}/uwsgi.log"
MASTER_PIDFILE = "{{ cookiecutter.__run_dir }}/uwsgi/uwsgi.pid"
HOST_INI = "{{ cookiecutter.__conf_dir }}/host.ini"
TIMEOUT = 300
RESEND = 1.0
AT_ONCE = {"chain": 1, "all": sys.maxsize}  # workers out of service at a time
# A worker id respawned this often without ever accepting requests keeps dying.
DYING = 3
DOWN = 3  # exit status: uWSGI is not running
# Lines of uWSGI's log that say why something failed (the last one is reported).
REASON = re.compile(
    r"Error|Exception|error|unable|UNABLE|denied|not permitted|No such|invalid|unrecognized"
    r"|no app loaded|FATAL|OOPS"
)


def workers() -> list[dict]:
    """The master's view of its workers (pid 0 while one is being respawned)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(STATS)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    # uWSGI copies some fields (e.g. a directory) as raw bytes: never fail on them.
    return json.loads(data.decode("utf-8", "replace"))["workers"]


def log_size() -> int:
    try:
        return os.stat(LOG).st_size
    except OSError:
        return 0


def log_reason(offset: int) -> str:
    """The last line uWSGI logged after `offset` that says what failed, made printable."""
    try:
        with open(LOG, "rb") as log:
            size = os.fstat(log.fileno()).st_size
            log.seek(offset if offset <= size else max(0, size - 65536))
            lines = log.read(1 << 20).decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    found = [line for line in lines[-2000:] if REASON.search(line)]
    return "".join(c if c.isprintable() else "?" for c in found[-1].strip())[:200] if found else ""


def fail(message: str, offset: int, status: int = 1) -> int:
    reason = log_reason(offset)
    print(f"error: {message}" + (f" (uWSGI logged: {reason})" if reason else ""), file=sys.stderr)
    return status


class Failed(Exception):
    """The reload cannot succeed; the message is the one line the caller gets."""


class Down(Exception):
    """The uWSGI master is gone: no reload can succeed, a start through supervisor may."""


def master_pid() -> int:
    try:
        with open(MASTER_PIDFILE) as pidfile:
            return int(pidfile.read())
    except (OSError, ValueError):
        return 0


class Watch:
    """Fails the wait as soon as the master exits or a worker keeps dying."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.unready: dict[int, set[int]] = {}  # worker id -> its pids that never accepted

    def __call__(self, now: list[dict]) -> None:
        if not alive(self.master) or master_pid() != self.master:
            raise Down("the uWSGI master exited")
        for worker in now:
            pids = self.unready.setdefault(worker["id"], set())
            if worker["pid"] > 0 and worker["accepting"]:
                pids.clear()
            elif worker["pid"] > 0:
                pids.add(worker["pid"])
            if len(pids) >= DYING:
                raise Failed(f"uWSGI workers keep dying while loading the app; see {LOG}")


def current() -> list[dict]:
    """workers(), or [] while the master is busy (respawning, re-reading its ini)."""
    try:
        return workers()
    except (OSError, ValueError):
        return []


def replaced(now: list[dict], old: set[int]) -> bool:
    """Whether every worker is a new process that accepts requests (with the app)."""
    ready = [w for w in now if w["pid"] > 0 and w["pid"] not in old and w["accepting"]]
    for worker in ready:
        if not worker["apps"]:
            raise Failed(f"uWSGI could not load the app (worker {worker['id']}); see {LOG}")
    return bool(now) and len(ready) == len(now)


def alive(pid: int) -> bool:
    """Whether `pid` still runs (an exited worker not yet reaped by the master does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def hup(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        pass  # it has just exited (e.g. max-requests): the master replaces it anyway


def reload_workers(old: set[int], at_once: int, deadline: float, watch: Watch) -> bool:
    """Replace every worker, at most `at_once` of them out of service at a time."""
    signalled: dict[int, float] = {}  # old pid -> when it was last told to go
    while time.monotonic() < deadline:
        now = current()
        watch(now)
        if replaced(now, old):
            return True
        # Out of service: told to go and not gone yet, or new and not accepting yet.
        loading = [w for w in now if w["pid"] not in old and not (w["pid"] > 0 and w["accepting"])]
        out = len(loading) + sum(1 for w in now if w["pid"] in signalled)
        for worker in sorted((w for w in now if w["pid"] in old), key=lambda w: w["id"]):
            pid, when = worker["pid"], signalled.get(worker["pid"])
            if when is None:
                if out >= at_once or not worker["accepting"]:
                    continue
            elif worker["status"] != "idle" or time.monotonic() - when < RESEND:
                continue
            hup(pid)
            if when is None:
                out += 1
            signalled[pid] = time.monotonic()
        time.sleep(0.05)
    return False


def reload_master(old: set[int], deadline: float, watch: Watch) -> bool:
    """SIGHUP the master: it signals every worker once and re-reads its ini."""
    # A worker still loading the app would ignore the master's one signal: wait a
    # little until all accept (one that still ignores it gets another one below).
    settle = time.monotonic() + 30
    while time.monotonic() < settle:
        now = current()
        if now and all(w["pid"] > 0 and w["accepting"] for w in now):
            old = {w["pid"] for w in now}
            break
        time.sleep(0.05)
    os.kill(watch.master, signal.SIGHUP)
    signalled = dict.fromkeys(old, time.monotonic())
    while time.monotonic() < deadline:
        for pid, when in signalled.items():
            if time.monotonic() - when >= RESEND and alive(pid):
                hup(pid)
                signalled[pid] = time.monotonic()
        now = current()
        watch(now)
        if replaced(now, old):
            return True
        time.sleep(0.05)
    return False


def wait_ready(deadline: float, watch: Watch) -> bool:
    """Signal nothing; wait until every worker accepts requests with the app."""
    while time.monotonic() < deadline:
        now = current()
        watch(now)
        if replaced(now, set()):
            return True
        time.sleep(0.05)
    return False


def web_host() -> bool:
    """Whether web workers serve requests here (config/host.ini; a host provisioned
    before roles existed has no such file and serves)."""
    try:
        with open(HOST_INI) as ini:
            found = re.search(r"^set-placeholder\s*=\s*eep-web=no\s*$", ini.read(), re.MULTILINE)
            return found is None
    except OSError:
        return True


def master_only(mode: str, deadline: float, watch: Watch) -> bool:
    """No web worker here: `full` re-executes the master (SIGHUP), which then binds its
    stats socket anew; every mode ends when the master answers there."""
    if mode == "full":
        before = os.stat(STATS).st_ino
        os.kill(watch.master, signal.SIGHUP)
        while time.monotonic() < deadline:
            watch([])
            try:
                if os.stat(STATS).st_ino != before:
                    break
            except OSError:
                pass  # between the old socket's removal and the new one
            time.sleep(0.05)
    while time.monotonic() < deadline:
        watch([])
        try:
            workers()
            return True
        except (OSError, ValueError):
            time.sleep(0.05)
    return False


def main() -> int:
    modes = (*AT_ONCE, "full", "wait")
    if len(sys.argv) != 2 or sys.argv[1] not in modes:
        print(f"usage: reload {'|'.join(modes)}", file=sys.stderr)
        return 2
    mode, offset = sys.argv[1], log_size()
    master = master_pid()
    # Whatever made it stop was logged before this script ran.
    since = max(0, offset - 16384)
    if not alive(master):
        return fail("uWSGI is not running", since, DOWN)
    try:
        old = {w["pid"] for w in workers() if w["pid"] > 0} if mode != "wait" else set()
    except (OSError, ValueError) as error:
        return fail(f"uWSGI is not answering ({error})", since, DOWN)
    deadline = time.monotonic() + TIMEOUT
    watch = Watch(master)
    try:
        if not web_host():
            done = master_only(mode, deadline, watch)
        elif mode == "full":
            done = reload_master(old, deadline, watch)
        elif mode == "wait":
            done = wait_ready(deadline, watch)
        else:
            done = reload_workers(old, AT_ONCE[mode], deadline, watch)
    except Failed as error:
        # After a start, the failure was logged before this script ran.
        return fail(str(error), since if mode == "wait" else offset)
    except Down as error:
        # It ran when this script started: a reload made it exit (the release's fault);
        # while waiting after a start, it exited on its own (supervisor restarts it).
        return fail(str(error), offset, DOWN if mode == "wait" else 1)
    if not done:
        return fail(f"the workers were not all serving after {TIMEOUT} s; see {LOG}", offset)
    return 0


sys.exit(main())
