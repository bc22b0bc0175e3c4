"""The Celery broker of a fleet of several hosts: its password and its firewall.

One host keeps its private broker on a unix socket (config/redis.conf) and needs
neither. With several, the broker host's Redis listens on its private address
(config/redis-fleet.conf) and asks for a password; the firewall (config/firewall.nft)
lets only the app's hosts reach its port. Why all three: docs/design.md, "Several
hosts: roles, the broker on the private network".

The password is made once, on the broker host, from its own randomness, by root. It is
in no file of this tree and never printed: provisioning carries it in memory from the
broker host to every app host, into BROKER_SECRET (root:<app> 0640, a redis.conf line:
the broker includes it, config/eep_env.py builds the app's broker URL from it).
"""

from __future__ import annotations

from eep import app
from eep.files import ensure_absent, ensure_file
from eep.fleet import Fleet
from eep.manifest import BROKER_SECRET, Place, host_file
from eep.pathstate import regular_file
from eep.remote import HostError, Remote
from eep.report import Report

SECRET_STATE = regular_file("root", app.RUNTIME_USER, 0o640)
# 32 random bytes from the broker host's kernel, as 64 hex digits (no URL escaping).
NEW_TOKEN = "head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \\n'"
FIREWALL_UNIT = f"eep-{app.SLUG}-firewall.service"
FIREWALL_TABLE = f"inet eep_{app.SLUG.replace('-', '_')}"


def needs_secret(fleet: Fleet) -> bool:
    return app.USE_CELERY and not fleet.single


def secret_line(token: str) -> bytes:
    return f"requirepass {token}\n".encode()


def broker_token(remote: Remote, *, check: bool) -> str | None:
    """The broker's password, read on the broker host (as root); made there when it has
    none yet (None in check mode: it would be made)."""
    have = remote.read(BROKER_SECRET)
    if have is not None:
        words = have.decode(errors="replace").split()
        if len(words) == 2 and words[0] == "requirepass" and len(words[1]) >= 32:
            return words[1]
        raise HostError(f"{BROKER_SECRET} is not one `requirepass TOKEN` line; remove it")
    if check:
        return None
    token = remote.run(NEW_TOKEN).stdout.strip()
    if len(token) != 64:
        raise HostError("could not read 32 random bytes on the broker host")
    return token


def ensure_secret(remote: Remote, report: Report, token: str | None) -> bool:
    """The broker's password on this host, root:<app> 0640; whether it changed (the
    app must then restart to use it). Its content is never shown."""
    step = f"file {BROKER_SECRET}"
    have = remote.read(BROKER_SECRET)
    meta = remote.stat(BROKER_SECRET)
    if token is not None and have == secret_line(token) and meta == SECRET_STATE:
        report.unchanged(step)
        return False
    why = (
        "created (the broker's password)"
        if have is None
        else "the broker's password changed"
        if token is not None and have != secret_line(token)
        else f"was {meta}"
    )
    if report.change(step, why) and token is not None:
        remote.install(BROKER_SECRET, secret_line(token), SECRET_STATE)
    return True


def ensure_firewall(remote: Remote, report: Report, place: Place) -> None:
    """The broker's port open to the app's hosts only: the rules file, the unit that
    loads it at boot (enabled), and the rules loaded now."""
    rules = ensure_file(remote, report, host_file("config/firewall.nft"), place=place)
    unit = ensure_file(remote, report, host_file("config/firewall.service"), place=place)
    if report.check:
        return
    if unit:
        remote.run("systemctl daemon-reload")
    enabled = remote.run(f"systemctl is-enabled {FIREWALL_UNIT}", check=False).stdout.strip()
    if enabled != "enabled" and report.change(f"service {FIREWALL_UNIT}", "enabled at boot"):
        remote.run(f"systemctl enable {FIREWALL_UNIT}")
    loaded = remote.run(f"nft list table {FIREWALL_TABLE}", check=False, changes=False)
    if rules or unit or loaded.exited != 0:
        why = "rules changed" if rules or unit else "rules were not loaded"
        if report.change(f"firewall {FIREWALL_TABLE}", f"{why}, loaded"):
            remote.run(f"systemctl restart {FIREWALL_UNIT}")
    else:
        report.unchanged(f"firewall {FIREWALL_TABLE}", "loaded")


def ensure_no_firewall(remote: Remote, report: Report) -> None:
    """A host without the broker role (any more): its firewall rule and unit go, once the
    broker program is gone (eep/supervisor.py removes it before)."""
    why = "this host does not have the broker role"
    unit = host_file("config/firewall.service").path
    if remote.stat(unit) is not None and report.change(f"service {FIREWALL_UNIT}", "disabled"):
        remote.run(f"systemctl disable {FIREWALL_UNIT}")
        remote.run(f"nft delete table {FIREWALL_TABLE}", check=False)  # not loaded: fine
    removed = False
    for source in ("config/firewall.service", "config/firewall.nft"):
        removed = ensure_absent(remote, report, host_file(source).path, why) or removed
    if removed and not report.check:
        remote.run("systemctl daemon-reload")


def fetch_token(fleet: Fleet, open_remote, *, check: bool) -> str | None:
    """Before the hosts are provisioned in parallel: the broker's password from the
    broker host (made there the first time), for every host to receive."""
    broker = fleet.broker
    if broker is None:
        raise HostError("eep.hosts: no broker host")
    remote = open_remote(broker)
    try:
        return broker_token(remote, check=check)
    finally:
        remote.close()
