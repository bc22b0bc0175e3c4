"""The app's directories on the host, with owners and modes that enforce the threat model.

Nothing is open to "others". The runtime user writes only shared/ (and its /run
directory); the code, releases and `current` belong to the deploy account, so
running code cannot change itself; logs and configs belong to root.
"""

from __future__ import annotations

from eep import app
from eep.files import ensure_dir, ensure_file
from eep.manifest import host_file
from eep.remote import Remote
from eep.report import Report

RUNTIME, DEPLOY = app.RUNTIME_USER, app.DEPLOY_USER

# (path, owner, group, mode), parents first.
DIRECTORIES = [
    (app.APP_ROOT, DEPLOY, RUNTIME, 0o750),
    (app.RELEASES_DIR, DEPLOY, RUNTIME, 0o750),
    (app.SHARED_DIR, RUNTIME, RUNTIME, 0o750),
    (f"{app.SHARED_DIR}/media", RUNTIME, RUNTIME, 0o750),
    (f"{app.SHARED_DIR}/var", RUNTIME, RUNTIME, 0o750),
    (app.LOG_DIR, "root", RUNTIME, 0o750),
    ("/etc/eep", "root", "root", 0o755),
    (app.CONF_DIR, "root", RUNTIME, 0o750),
    # Root-owned, with .ssh: the developer's keys are managed in this tree, not on the
    # host. Were the home the account's own, it could move .ssh aside and add keys.
    (f"/home/{DEPLOY}", "root", RUNTIME, 0o750),
    (f"/home/{DEPLOY}/.ssh", "root", RUNTIME, 0o750),
]
if app.USE_CELERY:
    DIRECTORIES.append((f"{app.SHARED_DIR}/redis", RUNTIME, RUNTIME, 0o700))

# What systemd-tmpfiles makes under /run (config/tmpfiles.conf), checked after boot too.
RUN_DIRECTORIES = [
    (app.RUN_DIR, "directory", "root", RUNTIME, "0750"),
    (f"{app.RUN_DIR}/uwsgi", "directory", RUNTIME, RUNTIME, "0750"),
    (app.DEPLOY_TRIGGER, "regular file", DEPLOY, RUNTIME, "0640"),
]
if app.USE_CELERY:
    RUN_DIRECTORIES.append((f"{app.RUN_DIR}/redis", "directory", RUNTIME, RUNTIME, "0700"))


def ensure_layout(remote: Remote, report: Report) -> None:
    for path, owner, group, mode in DIRECTORIES:
        ensure_dir(remote, report, path, owner=owner, group=group, mode=mode)
    ensure_file(remote, report, host_file("config/authorized_keys"))


def ensure_run_dirs(remote: Remote, report: Report) -> None:
    """Install the tmpfiles.d entry and make /run/<slug> match it now (it is remade at boot)."""
    conf = host_file("config/tmpfiles.conf")
    changed = ensure_file(remote, report, conf)
    wrong = []
    for path, kind, owner, group, mode in RUN_DIRECTORIES:
        have = remote.stat(path)
        if have is None or (have[0].replace("regular file", "regular file"), *have[1:]) != (
            kind,
            mode,
            owner,
            group,
        ):
            wrong.append(path)
    if not wrong and not changed:
        report.unchanged(f"runtime dirs {app.RUN_DIR}")
    elif report.change(f"runtime dirs {app.RUN_DIR}", "systemd-tmpfiles --create"):
        remote.run(f"systemd-tmpfiles --create {conf.path}")
