#!/usr/bin/python3
"""eep: reload {{ cookiecutter.project_slug }}'s web workers gracefully and wait until all serve again.

Installed as {{ cookiecutter.__conf_dir }}/reload (root:root 0755) and run by the deploy
account through its sudo rule AS THE APP USER (the only account that may talk to the
uWSGI master):

    reload chain   one worker at a time: the others keep serving, no pause at all;
                   takes one app load per worker.
    reload all     every worker at once: each finishes its request, then all load the
                   app together while new requests wait in the socket's backlog;
                   takes about one app load (a pause of that length).

Either way each old worker finishes its request first. The command is sent on the
master's FIFO; the stats socket is then read every 50 ms, which also wakes the master
(it moves a chain on only when it wakes, otherwise about once a second). Exit 0 when
every worker is a new process that accepts requests with the app loaded; 1 with one
line when a new worker has no app (import failed) or on timeout.
"""

import json
import os
import socket
import sys
import time

FIFO = "{{ cookiecutter.__run_dir }}/uwsgi/master.fifo"
STATS = "{{ cookiecutter.__run_dir }}/uwsgi/stats.sock"
LOG = "{{ cookiecutter.__log_dir }}/uwsgi.log"
COMMANDS = {"chain": b"c", "all": b"w"}  # uWSGI master FIFO: chain / workers reload
TIMEOUT = 300


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


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        return fail(f"usage: reload {'|'.join(COMMANDS)}")
    try:
        old = {worker["pid"] for worker in workers()}
        fifo = os.open(FIFO, os.O_WRONLY | os.O_NONBLOCK)
    except (OSError, ValueError) as error:
        return fail(f"uWSGI is not running or not answering ({error})")
    with os.fdopen(fifo, "wb") as handle:
        handle.write(COMMANDS[sys.argv[1]])
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            now = workers()
        except (OSError, ValueError):
            continue  # the master is busy respawning: ask again
        for worker in now:
            if worker["pid"] not in old and worker["accepting"] and not worker["apps"]:
                return fail(f"uWSGI could not load the app (worker {worker['id']}); see {LOG}")
        if all(w["pid"] > 0 and w["pid"] not in old and w["accepting"] for w in now):
            return 0
    return fail(f"the workers were not all replaced in {TIMEOUT} s; see {LOG}")


sys.exit(main())
