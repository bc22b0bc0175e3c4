"""`invoke env`, `env.set`, `env.unset`: the app's settings (secrets included), kept on the
host in a file only the app user reads, changed through config/as-app.py as that user.

Values travel to the host on the SSH channel's stdin, never on a command line there; a
value not given on the local command line is asked for without echo.
"""

from __future__ import annotations

import getpass
import re
import sys

from eep.remote import HostError
from eep.report import say
from eep.session import Session

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


def parse_assignments(words: list[str], ask=getpass.getpass) -> dict[str, str]:
    """['A=1', 'B'] -> {'A': '1', 'B': <asked>}; one-line HostError for a bad word."""
    values: dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        check_name(name)
        if not sep:
            value = ask(f"{name}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if any(c in value for c in "\n\r\0"):
            raise HostError(f"the value of {name} contains a newline or NUL")
        values[name] = value
    if not values:
        raise HostError("no setting given: invoke env.set NAME[=VALUE] [-- NAME[=VALUE] ...]")
    return values


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise HostError(
            f"bad setting name {name[:60]!r}: letters, digits and _, not starting with a digit"
        )


def list_settings(spec: str, *, identity: str = "", show: bool = False) -> None:
    with Session(spec, identity) as session:
        if show:
            values = session.as_app("env", {"op": "show"})["values"]
        else:
            values = dict.fromkeys(session.as_app("env", {"op": "list"})["names"], "")
    for name, value in values.items():
        say(f"{name}={value}" if show else name)
    if not values:
        say(f"[{session.target}] no settings (invoke env.set NAME)")


def change_settings(spec: str, request: dict, *, identity: str = "") -> list[str]:
    """Apply one set/unset request; say what changed and that it applies at the next restart."""
    with Session(spec, identity) as session:
        changed = session.as_app("env", request)["changed"]
        what = "set" if request["op"] == "set" else "unset"
        if changed:
            session.say(what, f"{', '.join(changed)}: takes effect at the next restart or deploy")
        else:
            session.say("unchanged", "the settings already were so")
    return changed
