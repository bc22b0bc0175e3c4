"""The app's directories on the host, with owners and modes that enforce the threat model.

Nothing is open to "others". The runtime user writes only shared/ (and its /run
directory); the code, releases and `current` belong to the deploy account, so
running code cannot change itself; logs and configs belong to root.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eep import app
from eep.files import ensure_dir, ensure_file
from eep.manifest import host_file
from eep.pathstate import PathState, directory, regular_file
from eep.remote import Remote
from eep.report import Report

if TYPE_CHECKING:
    from eep.fleet import Fleet

RUNTIME, DEPLOY = app.RUNTIME_USER, app.DEPLOY_USER

# Parents first.
DIRECTORIES: dict[str, PathState] = {
    app.APP_ROOT: directory(DEPLOY, RUNTIME, 0o750),
    app.RELEASES_DIR: directory(DEPLOY, RUNTIME, 0o750),
    app.SHARED_DIR: directory(RUNTIME, RUNTIME, 0o750),
    f"{app.SHARED_DIR}/media": directory(RUNTIME, RUNTIME, 0o750),
    f"{app.SHARED_DIR}/var": directory(RUNTIME, RUNTIME, 0o750),
    app.LOG_DIR: directory("root", RUNTIME, 0o750),
    "/etc/eep": directory("root", "root", 0o755),
    app.CONF_DIR: directory("root", RUNTIME, 0o750),
    f"{app.CONF_DIR}/python": directory("root", RUNTIME, 0o750),
    # Root-owned, with .ssh: the developer's keys are managed in this tree, not on the
    # host. Were the home the account's own, it could move .ssh aside and add keys.
    f"/home/{DEPLOY}": directory("root", RUNTIME, 0o750),
    f"/home/{DEPLOY}/.ssh": directory("root", RUNTIME, 0o750),
}
if app.USE_CELERY:
    DIRECTORIES[f"{app.SHARED_DIR}/redis"] = directory(RUNTIME, RUNTIME, 0o700)
if app.DATABASE == "postgresql":
    # Dumps of the app's database: the app's own data, so the app's and no one else's.
    DIRECTORIES[f"{app.SHARED_DIR}/backups"] = directory(RUNTIME, RUNTIME, 0o700)

# Where HTTPS ends at nginx; not on the app's hosts behind a load balancer (it ends there).
TLS_DIRECTORIES: dict[str, PathState] = {}
if app.TLS != "none":
    # Certificates and keys nginx serves (eep/tls.py): root's alone. Not under /etc/eep,
    # whose entries are the apps' (an app may be called "tls").
    # The app's group on the app's own directories grants nothing (no group bits) and
    # marks them as eep's for eep/claims.py, as on the app's other directories.
    TLS_DIRECTORIES["/etc/eep-tls"] = directory("root", "root", 0o700)
    TLS_DIRECTORIES[f"/etc/eep-tls/{app.SLUG}"] = directory("root", RUNTIME, 0o700)
    # The ACME client's webroot: root writes challenge tokens, nginx (www-data, a member
    # of the app's group) reads them.
    TLS_DIRECTORIES["/var/lib/eep-acme"] = directory("root", "root", 0o755)
    TLS_DIRECTORIES[f"/var/lib/eep-acme/{app.SLUG}"] = directory("root", RUNTIME, 0o750)
DIRECTORIES |= TLS_DIRECTORIES


def directories_for(fleet: Fleet | None) -> dict[str, PathState]:
    """The app's directories on its hosts in `fleet` (None: a host of its own)."""
    if fleet is None or fleet.lb is None:
        return DIRECTORIES
    return {path: want for path, want in DIRECTORIES.items() if path not in TLS_DIRECTORIES}


# Files the app user makes itself (root never writes in shared/): checked when present.
APP_FILES: dict[str, PathState] = {
    # The settings (`invoke env`, written through as-app): secrets, the app's alone.
    app.SETTINGS_FILE: regular_file(RUNTIME, RUNTIME, 0o600),
}

# What systemd-tmpfiles makes under /run (config/tmpfiles.conf), checked after boot too.
RUN_DIRECTORIES: dict[str, PathState] = {
    app.RUN_DIR: directory("root", RUNTIME, 0o750),
    f"{app.RUN_DIR}/uwsgi": directory(RUNTIME, RUNTIME, 0o750),
    app.DEPLOY_TRIGGER: regular_file(DEPLOY, RUNTIME, 0o640),
}
if app.USE_CELERY:
    RUN_DIRECTORIES[f"{app.RUN_DIR}/redis"] = directory(RUNTIME, RUNTIME, 0o700)

# `invoke maintenance on` (eep/maintenance.py) creates this file, `off` removes it;
# config/nginx.conf answers 503 while it exists. In the app root: nginx traverses it
# (group), the deploy account writes it, the app cannot.
MAINTENANCE_FLAG = f"{app.APP_ROOT}/maintenance"
MAINTENANCE_FLAG_STATE = regular_file(DEPLOY, RUNTIME, 0o640)


def ensure_layout(remote: Remote, report: Report, fleet: Fleet | None = None) -> None:
    for path, want in directories_for(fleet).items():
        ensure_dir(remote, report, path, want)
    ensure_file(remote, report, host_file("config/authorized_keys"))


def ensure_run_dirs(remote: Remote, report: Report) -> None:
    """Install the tmpfiles.d entry and make /run/<slug> match it now (it is remade at boot)."""
    conf = host_file("config/tmpfiles.conf")
    changed = ensure_file(remote, report, conf)
    wrong = [path for path, want in RUN_DIRECTORIES.items() if remote.stat(path) != want]
    if not wrong and not changed:
        report.unchanged(f"runtime dirs {app.RUN_DIR}")
    elif report.change(f"runtime dirs {app.RUN_DIR}", "systemd-tmpfiles --create"):
        remote.run(f"systemd-tmpfiles --create {conf.path}")
