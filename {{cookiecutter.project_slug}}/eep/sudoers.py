"""The deploy account's sudo rules (checked by visudo before they can go live) and the
script one of them names."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

from eep.files import ensure_file
from eep.manifest import host_file, render
from eep.remote import HostError, Remote
from eep.report import Report


def visudo(remote: Remote, source: str = "config/sudoers") -> Callable[[str], None]:
    """The check a sudoers file must pass before it goes live (ensure_file's `validate`)."""

    def check(temp: str) -> None:
        # The temporary name contains a dot, so sudo never reads it while it is checked.
        result = remote.run(f"visudo -cf {shlex.quote(temp)}", check=False)
        if result.exited != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise HostError(f"visudo refused {source}: {detail[0] if detail else '?'}")

    return check


def ensure_sudoers(remote: Remote, report: Report) -> None:
    # The scripts the rules name go first, so a rule never points at a missing file.
    ensure_file(remote, report, host_file("config/stop-app.sh"))
    ensure_file(remote, report, host_file("config/reload.py"))
    ensure_file(remote, report, host_file("config/eep_env.py"))
    ensure_file(remote, report, host_file("config/as-app.py"))
    ensure_file(remote, report, host_file("config/sudoers"), validate=visudo(remote))


def rules(source: str = "config/sudoers") -> list[tuple[str, str]]:
    """(run as, command) of every rule in config/sudoers (config/sudoers-lb on the load
    balancer): the one statement of what the deploy account may run, read by the audit too."""
    text = re.sub(r"\\\n\s*", " ", render(host_file(source)))
    found = []
    for line in text.splitlines():
        match = re.match(r"^\S+ ALL = \((\w+)\) NOPASSWD: (.*)$", line)
        if match:
            found += [(match.group(1), command.strip()) for command in match.group(2).split(",")]
    return found
