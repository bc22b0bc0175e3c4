"""`invoke maintenance on|off`: nginx answers visitors 503 and config/maintenance.html.

The switch is a file, eep.layout.MAINTENANCE_FLAG, that config/nginx.conf looks for on
every request for the app: the deploy account creates or removes it, no reload needed.
Requests from the host itself with `X-Eep-Check: 1` (deploy's and status's health
checks) still reach the app, so deploys and rollbacks work in maintenance mode.
Static and media files are served as usual. Other steps (a database restore) call
set_maintenance() themselves.
"""

from __future__ import annotations

import shlex
import time

from eep.layout import MAINTENANCE_FLAG, MAINTENANCE_FLAG_STATE
from eep.remote import HostError
from eep.session import Session


def maintenance_state(session: Session) -> str | None:
    """What the flag says ("on since <time> by <who>"), or None when maintenance is off."""
    found = session.remote.run(f"cat {MAINTENANCE_FLAG}", check=False, changes=False)
    if found.exited != 0:
        return None
    return found.stdout.strip() or "on"


def set_maintenance(session: Session, on: bool) -> bool:
    """Turn maintenance mode on or off; whether anything changed. A flag with another
    owner or mode than the layout's is written again."""
    have = session.remote.stat(MAINTENANCE_FLAG)
    if not on:
        if have is None:
            return False
        session.remote.run(f"rm -f {MAINTENANCE_FLAG}")
        return True
    if have == MAINTENANCE_FLAG_STATE:
        return False
    if have is not None and have.kind != "regular file":
        raise HostError(f"{MAINTENANCE_FLAG} is a {have.kind}; remove it, then try again")
    # Written beside it, then renamed: nginx sees the flag complete or not at all. umask
    # 027 and the deploy account's primary group (the app's) give the layout's 0640.
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = shlex.quote(f"on since {since} by {session.who}")
    temp = f"{MAINTENANCE_FLAG}.eep-new"
    session.remote.run(
        f"umask 027 && rm -f {temp} && printf '%s\\n' {line} > {temp}"
        f" && mv -f {temp} {MAINTENANCE_FLAG}"
    )
    if session.remote.stat(MAINTENANCE_FLAG) != MAINTENANCE_FLAG_STATE:
        raise HostError(f"{MAINTENANCE_FLAG} is not {MAINTENANCE_FLAG_STATE} after writing it")
    return True


def maintenance(spec: str, on: bool, *, identity: str = "") -> None:
    """`invoke maintenance on|off` on one host: a progress line, then the summary."""
    started = time.monotonic()
    word = "on" if on else "off"
    with Session(spec, identity) as session:
        with session.step("maintenance") as details:
            changed = set_maintenance(session, on)
            if not changed:
                details.append(f"already {word}: unchanged")
            elif on:
                details.append("on: visitors get 503 and the maintenance page")
            else:
                details.append("off: the app answers visitors again")
        session.summary(f"maintenance {word}" + ("" if changed else " (unchanged)"), started)
