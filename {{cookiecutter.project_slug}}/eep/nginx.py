"""The app's nginx site: installed, enabled, and live only once `nginx -t` accepts it."""

from __future__ import annotations

from eep import app
from eep.files import ensure_file
from eep.manifest import host_file
from eep.remote import HostError, Remote
from eep.report import Report

ENABLED = f"/etc/nginx/sites-enabled/{app.SLUG}"


def ensure_site(remote: Remote, report: Report, *, reload: bool = False) -> None:
    site = host_file("config/nginx.conf")
    previous = remote.read(site.path)
    changed = ensure_file(remote, report, site)
    link = remote.run(f"readlink {ENABLED}", check=False).stdout.strip()
    if link == site.path:
        report.unchanged(f"link {ENABLED}")
    elif report.change(f"link {ENABLED}", "enabled the site"):
        remote.run(f"ln -sfn {site.path} {ENABLED}")
        changed = True
    if report.check or not (changed or reload):
        return
    test = remote.run("nginx -t", check=False)
    if test.exited != 0:
        # Put back what nginx accepted before, so it keeps serving and a re-run works.
        if previous is None:
            remote.run(f"rm -f {ENABLED} {site.path}")
        else:
            remote.install(site.path, previous, mode=site.mode, owner=site.owner, group=site.group)
        errors = [line for line in test.stderr.splitlines() if "emerg" in line or "error" in line]
        raise HostError(f"nginx -t refused the site, previous kept: {(errors or ['?'])[0]}")
    remote.run("systemctl reload nginx")
    report.change("nginx", "reloaded")
