#!/usr/bin/python3
"""eep: drain, re-enable and list the web hosts behind {{ cookiecutter.project_slug }}'s load balancer.

Installed as {{ cookiecutter.__conf_dir }}/balancer (root:root 0755) on the host with the lb
role. HAProxy's runtime API (/run/eep-haproxy.sock) is root's alone; the deploy account
reaches it only through this script, by its literal sudo rules (config/sudoers-lb):

    sudo -n {{ cookiecutter.__conf_dir }}/balancer state
        every web host of the app's backend: status, last health check, sessions
    sudo -n {{ cookiecutter.__conf_dir }}/balancer drain     stdin: {"server": "web1"}
        no new request goes to web1; waits until its running requests are done
        (at most "timeout" seconds, given on stdin too, default {{ cookiecutter.uwsgi_harakiri | int + 20 }})
    sudo -n {{ cookiecutter.__conf_dir }}/balancer ready     stdin: {"server": "web1"}
        web1 takes requests again (once its health check passes)

Only servers of the app's backend are touched: the name must be one HAProxy lists
there. Answers: one JSON object on stdout. Errors: one line on stderr, exit 1.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time

ADMIN_SOCKET = "/run/eep-haproxy.sock"
BACKEND = {{ ("eep_" + cookiecutter.project_slug) | tojson }}
# Longer than any request may run (uWSGI's harakiri + nginx's margin).
DRAIN_TIMEOUT = {{ cookiecutter.uwsgi_harakiri | int + 20 }}
SERVER = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")  # a host name of eep.hosts


class Refused(Exception):
    """One line for the developer."""


def ask(command: str) -> str:
    """One command to HAProxy's runtime API, its whole answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(ADMIN_SOCKET)
            conn.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError as error:
        raise Refused(f"HAProxy's runtime API does not answer ({ADMIN_SOCKET}): {error}") from None
    return b"".join(chunks).decode(errors="replace")


def servers() -> dict[str, dict]:
    """The backend's servers, as HAProxy's statistics show them."""
    lines = ask(f"show stat {BACKEND} 4 -1").splitlines()
    if not lines or not lines[0].startswith("# "):
        raise Refused(f"HAProxy has no backend {BACKEND}: {' '.join(lines)[:100]}")
    header = lines[0][2:].split(",")
    found = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") != BACKEND or row.get("svname") in (None, "BACKEND"):
            continue
        found[row["svname"]] = {
            "status": row.get("status", ""),  # UP, DOWN, DRAIN, MAINT, UP 1/2, ...
            "check": row.get("check_status", ""),  # L7OK, L7STS, L4CON, L4TOUT, ...
            "check_code": row.get("check_code", ""),  # the HTTP status of the last check
            "sessions": int(row.get("scur") or 0),  # requests running there now
            "total": int(row.get("stot") or 0),  # requests sent there since start
            "address": row.get("addr", ""),
        }
    return found


def server_named(request: dict) -> str:
    name = request.get("server")
    if not isinstance(name, str) or not SERVER.match(name):
        raise Refused(f"bad server name {str(name)[:60]!r}")
    known = servers()
    if name not in known:
        raise Refused(f"{name} is not a server of {BACKEND} (it has: {', '.join(known)})")
    return name


def set_state(name: str, state: str) -> None:
    answer = ask(f"set server {BACKEND}/{name} state {state}").strip()
    if answer:
        raise Refused(f"HAProxy refused to set {name} to {state}: {answer[:200]}")


def drain(request: dict) -> dict:
    name = server_named(request)
    timeout = request.get("timeout", DRAIN_TIMEOUT)
    if not isinstance(timeout, (int, float)) or not 0 <= timeout <= 3600:
        raise Refused(f"bad timeout {timeout!r} (seconds, at most 3600)")
    set_state(name, "drain")
    deadline = time.monotonic() + timeout
    while (state := servers()[name])["sessions"] and time.monotonic() < deadline:
        time.sleep(0.1)
    if state["sessions"]:
        raise Refused(f"{name} still runs {state['sessions']} requests after {timeout} s (drained)")
    return state


def ready(request: dict) -> dict:
    name = server_named(request)
    set_state(name, "ready")
    return servers()[name]


def main() -> int:
    verb = sys.argv[1] if len(sys.argv) == 2 else ""
    try:
        if verb == "state":
            answer = servers()
        elif verb in ("drain", "ready"):
            try:
                request = json.loads(sys.stdin.read() or "{}")
            except ValueError:
                raise Refused("stdin is not JSON") from None
            if not isinstance(request, dict):
                raise Refused("stdin must be a JSON object")
            answer = drain(request) if verb == "drain" else ready(request)
        else:
            raise Refused("usage: balancer state|drain|ready (a server as JSON on stdin)")
    except Refused as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
