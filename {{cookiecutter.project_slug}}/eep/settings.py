"""`invoke env`, `env.set`, `env.unset`: the app's settings (secrets included), kept on the
host in a file only the app user reads, changed through config/as-app.py as that user.

Values travel to the host on the SSH channel's stdin, never on a command line there; a
value not given on the local command line is asked for without echo.
"""

from __future__ import annotations

import getpass
import hashlib
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


def change_settings(spec: str, request: dict, *, identity: str = "", name: str = "") -> list[str]:
    """Apply one set/unset request; say what changed and that it applies at the next restart."""
    with Session(spec, identity, name=name) as session:
        changed = session.as_app("env", request)["changed"]
        what = "set" if request["op"] == "set" else "unset"
        if changed:
            session.say(what, f"{', '.join(changed)}: takes effect at the next restart or deploy")
        else:
            session.say("unchanged", "the settings already were so")
    return changed


# -- with an inventory (eep.hosts): the same settings on every app host ------------------


def compare(found: dict[str, dict[str, str]]) -> dict[str, str]:
    """Settings per host ({host: {NAME: digest or value}}) -> {NAME: how the hosts differ}
    for each name not the same on every host, e.g. "one value on web1, work1, another on
    web2" or "missing on work1"."""
    differ: dict[str, str] = {}
    for name in sorted({n for values in found.values() for n in values}):
        missing = [host for host, values in found.items() if name not in values]
        groups: dict[str, list[str]] = {}
        for host, values in found.items():
            if name in values:
                groups.setdefault(values[name], []).append(host)
        parts = []
        if len(groups) > 1:
            on = [", ".join(hosts) for hosts in groups.values()]
            parts.append(f"one value on {on[0]}, " + ", ".join(f"another on {h}" for h in on[1:]))
        if missing:
            parts.append(f"missing on {', '.join(missing)}")
        if parts:
            differ[name] = "; ".join(parts)
    return differ


def list_fleet(hosts: dict[str, str], *, identity: str = "", show: bool = False) -> dict:
    """`invoke env` over the app hosts ({name: deploy spec}): one list, each name whose
    value differs between hosts (or that some lack) marked; values (with `show`) from
    the first host that has them. Returns {NAME: how the hosts differ}."""
    found: dict[str, dict[str, str]] = {}
    values: dict[str, str] = {}
    for host, spec in hosts.items():
        with Session(spec, identity, name=host) as session:
            if show:
                shown = session.as_app("env", {"op": "show"})["values"]
                found[host] = {n: hashlib.sha256(v.encode()).hexdigest() for n, v in shown.items()}
                values = {**shown, **values}
            else:
                found[host] = session.as_app("env", {"op": "list"})["digests"]
    differ = compare(found)
    for name in sorted({n for digests in found.values() for n in digests}):
        line = f"{name}={values[name]}" if show else name
        say(f"{line}    (differs: {differ[name]})" if name in differ else line)
    if not any(found.values()):
        say(f"no settings on {', '.join(hosts)} (invoke env.set NAME)")
    return differ
