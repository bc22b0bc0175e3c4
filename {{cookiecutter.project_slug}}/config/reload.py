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

A worker is told to go with SIGHUP: it finishes its request and exits, and the master
starts a new one, which loads the app from `current`. Only a worker that accepts
requests is signalled: until then (while it loads the app, e.g. just after max-requests
recycled it) it still has the master's SIGHUP handler, which ignores the signal; uWSGI's
own chain/workers reload does not wait for that and then stalls for worker-reload-mercy
(60 s; measured). A worker still there and idle a second after its signal gets another.
The stats socket is read every 50 ms; each read also wakes the master, which would
otherwise notice an exited worker only about once a second.

Exit 0 when every worker is a new process that accepts requests; 1 with one line when a
new worker accepts without the app (its import failed) or on timeout.
"""

import json
import os
import signal
import socket
import sys
import time

STATS = "{{ cookiecutter.__run_dir }}/uwsgi/stats.sock"
LOG = "{{ cookiecutter.__log_dir }}/uwsgi.log"
TIMEOUT = 300
RESEND = 1.0


def workers() -> list[dict]:
    """The master's view of its workers (pid 0 while one is being respawned)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(STATS)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return json.loads(data)["workers"]


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def reload(at_once: int) -> int:
    """Replace every worker, at most `at_once` of them out of service at a time."""
    try:
        old = {w["pid"] for w in workers() if w["pid"] > 0}
    except (OSError, ValueError) as error:
        return fail(f"uWSGI is not running or not answering ({error})")
    signalled: dict[int, float] = {}  # old pid -> when it was last told to go
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            now = workers()
        except (OSError, ValueError):
            time.sleep(0.05)
            continue  # the master is busy respawning: ask again
        ready = [w for w in now if w["pid"] > 0 and w["pid"] not in old and w["accepting"]]
        for worker in ready:
            if not worker["apps"]:
                return fail(f"uWSGI could not load the app (worker {worker['id']}); see {LOG}")
        if len(ready) == len(now):
            return 0
        # Out of service: told to go and not gone yet, or new and not accepting yet.
        loading = [w for w in now if w["pid"] not in old and w not in ready]
        out = len(loading) + sum(1 for w in now if w["pid"] in signalled)
        for worker in sorted((w for w in now if w["pid"] in old), key=lambda w: w["id"]):
            pid, when = worker["pid"], signalled.get(worker["pid"])
            if when is None:
                if out >= at_once or not worker["accepting"]:
                    continue
            elif worker["status"] != "idle" or time.monotonic() - when < RESEND:
                continue
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass  # it has just exited (max-requests): the master replaces it anyway
            if when is None:
                out += 1
            signalled[pid] = time.monotonic()
        time.sleep(0.05)
    return fail(f"the workers were not all replaced in {TIMEOUT} s; see {LOG}")


def main() -> int:
    modes = {"chain": 1, "all": 1_000_000}
    if len(sys.argv) != 2 or sys.argv[1] not in modes:
        return fail(f"usage: reload {'|'.join(modes)}")
    return reload(modes[sys.argv[1]])


sys.exit(main())
