"""The app's nginx site: installed, enabled, and live only once `nginx -t` accepts it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from eep import app
from eep.files import ensure_absent, ensure_file
from eep.manifest import host_file, site_file
from eep.pathstate import regular_file
from eep.remote import HostError, Remote
from eep.report import Report

if TYPE_CHECKING:
    from eep.fleet import Fleet

ENABLED = f"/etc/nginx/sites-enabled/{app.SLUG}"
DEFAULT_ENABLED = "/etc/nginx/sites-enabled/eep-default"
# Debian's default site: a welcome page (200) for any host name; it also claims
# default_server, which only one site may.
DEBIAN_DEFAULT = ("/etc/nginx/sites-enabled/default", "/etc/nginx/sites-available/default")
LOG_FILES = [f"{app.LOG_DIR}/nginx-access.log", f"{app.LOG_DIR}/nginx-error.log"]


def _readlink(link: str) -> str:
    return f"readlink {link}"


# How these steps read the host: eep.provision runs them all in one round trip first.
READS = [_readlink(link) for link in (ENABLED, DEFAULT_ENABLED, DEBIAN_DEFAULT[0])]


def ensure_log_file(remote: Remote, report: Report, path: str) -> None:
    """An nginx log the deploy account can read: root:<app> 0640, content left alone."""
    want = regular_file("root", app.RUNTIME_USER, 0o640)
    have = remote.stat(path)
    if have == want:
        report.unchanged(f"log {path}")
    elif report.change(f"log {path}", "created" if have is None else f"was {have}"):
        remote.touch_file(path, want)


def ensure_link(remote: Remote, report: Report, link: str, target: str) -> bool:
    """sites-enabled/<name> -> sites-available/<name>; whether it changed."""
    found = remote.run(_readlink(link), check=False, changes=False).stdout.strip()
    if found == target:
        report.unchanged(f"link {link}")
        return False
    if report.change(f"link {link}", "enabled the site"):
        remote.run(f"ln -sfn {target} {link}")
    return True


def ensure_default_site(remote: Remote, report: Report) -> bool:
    """Unknown host names get 444 (eep-default), not Debian's welcome page; whether it changed."""
    default = host_file("config/nginx-default.conf")
    changed = ensure_file(remote, report, default)
    link, stock = DEBIAN_DEFAULT
    found = remote.run(_readlink(link), check=False, changes=False).stdout.strip()
    if found == stock and report.change(link, "disabled Debian's default site"):
        remote.run(f"rm -f {link}")
        changed = True
    elif found != stock:
        report.unchanged(f"{link} absent" if not found else f"{link} -> {found}")
    return ensure_link(remote, report, DEFAULT_ENABLED, default.path) or changed


def ensure_site(
    remote: Remote, report: Report, *, reload: bool = False, fleet: Fleet | None = None
) -> None:
    ensure_file(remote, report, host_file("config/logrotate.conf"))
    for log in LOG_FILES:
        # Made before nginx opens them: nginx itself would create them 0644.
        ensure_log_file(remote, report, log)
    ensure_file(remote, report, host_file("config/maintenance.html"))
    site = site_file(fleet)
    backup = f"{site.path}.eep-previous"
    # Included by the site, so installed first; nginx -t below checks both.
    balancer = ensure_file(remote, report, host_file("config/nginx-balancer.conf"), fleet=fleet)
    # The accepted file is kept (mtime included) to be put back if nginx -t refuses the new one.
    changed = ensure_file(remote, report, site, backup=backup) or balancer
    changed = ensure_link(remote, report, ENABLED, site.path) or changed
    changed = ensure_default_site(remote, report) or changed
    if report.check or not (changed or reload):
        return
    test = remote.run("nginx -t", check=False)
    # Only a warning, exit 0: one of two sites with the same server name is ignored.
    ours = {name.lower() for name in app.DOMAINS}
    taken = [n for n in re.findall(r'conflicting server name "([^"]*)"', test.stderr)]
    taken = [name for name in taken if name.lower() in ours]
    if test.exited != 0 or taken:
        # Put back what nginx accepted before, so it keeps serving and a re-run works.
        remote.run(
            f"if [ -f {backup} ]; then mv -f {backup} {site.path}; else rm -f {ENABLED} {site.path}; fi"
        )
        errors = [line for line in test.stderr.splitlines() if "emerg" in line or "error" in line]
        errors += [f"server name {name} is also claimed by another site" for name in taken]
        raise HostError(f"nginx -t refused the site, previous kept: {(errors or ['?'])[0]}")
    remote.run(f"rm -f {backup} && systemctl reload nginx")
    report.change("nginx", "reloaded")


def ensure_no_site(remote: Remote, report: Report) -> None:
    """A host without the web role (any more): the app's site is out of nginx. nginx
    itself, the logs and the default sites stay: other sites on the host may need them."""
    why = "this host does not have the web role"
    site = host_file("config/nginx.conf").path
    removed = False
    snippet = host_file("config/nginx-balancer.conf").path
    for path in (ENABLED, site, f"{site}.eep-previous", snippet):
        removed = ensure_absent(remote, report, path, why) or removed
    if removed and report.change("nginx", "reloaded without the site"):
        remote.run("systemctl reload nginx")
