#!/usr/bin/python3
"""eep: wait for the chain reload of {{ cookiecutter.project_slug }}'s web workers to finish.

Installed as {{ cookiecutter.__conf_dir }}/reload-wait (root:root 0755) and run by the
deploy account through its sudo rule AS THE APP USER, after writing the byte size of
uWSGI's log into the reload trigger (which starts the reload). The uWSGI master moves
a chain reload on only when it wakes up, about once a second; connecting to its stats
socket wakes it at once, so each worker is replaced as soon as the one before is
ready. Exit 0 when uWSGI logs the end of the chain after that offset, 1 on timeout.
"""

import socket
import sys
import time

LOG = "{{ cookiecutter.__log_dir }}/uwsgi.log"
STATS = "{{ cookiecutter.__run_dir }}/uwsgi/stats.sock"
TRIGGER = "{{ cookiecutter.__run_dir }}/deploy"
DONE = b"chain reloading complete"
TIMEOUT = 180


def wake_master() -> None:
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(2)
            conn.connect(STATS)
            while conn.recv(65536):
                pass
    except OSError:
        pass  # the master is restarting: it wakes by itself


def main() -> int:
    with open(TRIGGER) as trigger:
        offset = int(trigger.read().strip() or 0)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        wake_master()
        with open(LOG, "rb") as log:
            if log.seek(0, 2) < offset:
                offset = 0  # rotated meanwhile
            log.seek(offset)
            if DONE in log.read():
                return 0
        time.sleep(0.05)
    print(f"error: no end of the chain reload in {TIMEOUT} s; see {LOG}", file=sys.stderr)
    return 1


sys.exit(main())
