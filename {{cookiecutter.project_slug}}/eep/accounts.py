"""The app's two identities: the runtime user (no login) and the developer's deploy account."""

from __future__ import annotations

from eep import app
from eep.remote import HostError, Remote
from eep.report import Report

# Written into the accounts' GECOS field: an existing account without it is not ours
# and is never taken over.
MARK = f"eep app {app.SLUG}"


def _getent(database: str, key: str) -> str:
    return f"getent {database} {key}"


def _primary_group(user: str) -> str:
    return f"id -gn {user}"


# How these steps read the host: eep.provision runs them all in one round trip first.
READS = [_getent("group", app.RUNTIME_USER)] + [
    query
    for user in (app.RUNTIME_USER, app.DEPLOY_USER)
    for query in (_getent("passwd", user), _primary_group(user))
]


def group_members(remote: Remote, group: str) -> set[str] | None:
    line = remote.run(_getent("group", group), check=False, changes=False).stdout.strip()
    return None if not line else set(filter(None, line.split(":")[3].split(",")))


def _passwd(remote: Remote, user: str) -> list[str] | None:
    line = remote.run(_getent("passwd", user), check=False, changes=False).stdout.strip()
    return line.split(":") if line else None


def ensure_user(remote: Remote, report: Report, user: str, *, home: str, shell: str) -> None:
    """A user whose primary group is the app's, with this home and shell.

    Both accounts share the app group: whatever the deploy account creates (releases,
    virtualenvs) is readable by the runtime user, and writable only by its owner.
    Refuses to take over an account eep did not make. The runtime account comes with
    its group in one command: a group without its marked account is never eep's.
    """
    entry = _passwd(remote, user)
    step = f"user {user}"
    if entry is None:
        runtime = user == app.RUNTIME_USER
        if report.change(step, "created, with its group" if runtime else "created"):
            options = (
                "--system --no-create-home --user-group"
                if runtime
                else f"--create-home --gid {app.RUNTIME_USER}"
            )
            remote.run(
                f"useradd {options} --home-dir {home} --shell {shell} --comment '{MARK}' {user}"
            )
        return
    if entry[4] != MARK:
        raise HostError(
            f"user {user} already exists and was not made by eep; refusing to take it over"
        )
    wrong = []
    if entry[5] != home:
        wrong.append(f"home {entry[5]}")
    if entry[6] != shell:
        wrong.append(f"shell {entry[6]}")
    primary = remote.run(_primary_group(user), changes=False).stdout.strip()
    if primary != app.RUNTIME_USER:
        wrong.append(f"primary group {primary}")
    if not wrong:
        report.unchanged(step)
    elif report.change(step, "fixed " + ", ".join(wrong)):
        remote.run(f"usermod --home {home} --shell {shell} --gid {app.RUNTIME_USER} {user}")


def ensure_member(remote: Remote, report: Report, user: str, group: str, why: str) -> bool:
    members = group_members(remote, group) or set()
    if user in members:
        report.unchanged(f"{user} in group {group}")
        return False
    if report.change(f"{user} in group {group}", why):
        remote.run(f"usermod --append --groups {group} {user}")
    return True


def ensure_accounts(remote: Remote, report: Report) -> bool:
    """Create or fix both accounts and the app group; True when nginx's groups changed."""
    ensure_user(remote, report, app.RUNTIME_USER, home=app.APP_ROOT, shell="/usr/sbin/nologin")
    ensure_user(remote, report, app.DEPLOY_USER, home=f"/home/{app.DEPLOY_USER}", shell="/bin/bash")
    return ensure_member(
        remote, report, "www-data", app.RUNTIME_USER, "nginx reaches the socket and static files"
    )
