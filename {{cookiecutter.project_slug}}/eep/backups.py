"""`invoke backup`, `backups`, `restore`: the app's PostgreSQL database, dumped and restored
by the app user itself (peer authentication, no password) through config/as-app.py.

Backups live on the host in shared/backups (the app user's, 0700): readable by root and
the app; the deploy account gets them only through these commands.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from eep import app
from eep.control import start_app, stop_app
from eep.maintenance import set_maintenance
from eep.remote import HostError
from eep.report import say
from eep.session import AS_APP, Session


def take(session: Session, label: str) -> str:
    """One backup now; its name. Used by deploy before a release's pre_activate steps."""
    with session.step("backup") as details:
        made = session.as_app("backup", {"label": label})
        details.append(f"{made['name']} ({_size(made['size'])})")
        if made["removed"]:
            details.append(f"removed {len(made['removed'])} older")
    return made["name"]


def backup(spec: str, *, identity: str = "", label: str = "", download: str = "") -> str:
    started = time.monotonic()
    with Session(spec, identity) as session:
        name = take(session, label or "manual")
        if download:
            fetch(session, name, Path(download))
        session.summary(f"backup {name}", started)
    return name


def list_backups(spec: str, *, identity: str = "") -> list[dict]:
    with Session(spec, identity) as session:
        found = session.as_app("backups")["backups"]
    for entry in found:
        say(f"{entry['name']:<60} {_size(entry['size']):>10}")
    if not found:
        say(f"[{session.target}] no backups yet (invoke backup)")
    return found


def download(spec: str, name: str, path: str, *, identity: str = "") -> None:
    with Session(spec, identity) as session:
        fetch(session, name, Path(path))


def fetch(session: Session, name: str, path: Path) -> None:
    """Copy backup `name` to `path` on this machine (a new file, 0600: it holds the data)."""
    target = path / name if path.is_dir() else path
    with session.step("download") as details:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise HostError(f"{target} exists: not overwritten") from None
        with os.fdopen(fd, "wb") as out:
            status, error = session.remote.stream(
                f"{AS_APP} download", out, stdin=(json.dumps({"name": name}) + "\n").encode()
            )
        if status != 0:
            target.unlink()
            lines = error.strip().splitlines() or ["download failed"]
            raise HostError(lines[-1].removeprefix("error: "))
        details.append(f"{target} ({_size(target.stat().st_size)})")


def restore(spec: str, name: str, *, identity: str = "", yes: bool = False) -> None:
    plan = (
        f"restore {name} into the database {app.SLUG}: what it holds now is replaced."
        " Visitors get the maintenance page and the app is stopped meanwhile (running"
        " tasks finish first), then it starts again."
    )
    if not yes:
        raise HostError(f"{plan} Add --yes to do it.")
    started = time.monotonic()
    with Session(spec, identity) as session, session.locked():
        session.as_app("backups")  # fails early on a host without the database
        session.say("restore", plan)
        entered = set_maintenance(session, True)
        try:
            stop_app(session)
            try:
                with session.step("restore", name):
                    session.as_app("restore", {"name": name})
            finally:
                start_app(session)  # the database as before when the restore failed
        finally:
            if entered:  # maintenance that was on before stays on
                set_maintenance(session, False)
        session.summary(f"restored {name}", started)


def _size(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    amount, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            break
        amount /= 1024
    return f"{size} B" if unit == "B" else f"{amount:.1f} {unit}"
