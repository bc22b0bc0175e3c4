"""uWSGI's enforced ini, the no-release page and the app's private broker config."""

from __future__ import annotations

from eep.files import ensure_file
from eep.manifest import Place, files_for, host_file
from eep.remote import Remote
from eep.report import Report

BROKER_CONFS = ("config/redis.conf", "config/redis-fleet.conf")


def ensure_uwsgi_files(remote: Remote, report: Report, place: Place) -> tuple[bool, bool]:
    """Install the files uWSGI and the broker read, as this host's `place` in the fleet
    wants them; return (uwsgi changed, broker changed)."""
    # The settings loader first: the ini imports it in every worker.
    loader = ensure_file(remote, report, host_file("config/eep_env.py"))
    roles = ensure_file(remote, report, host_file("config/host.ini"), place=place)
    ini = ensure_file(remote, report, host_file("config/uwsgi-base.ini"))
    page = ensure_file(remote, report, host_file("config/no-release.py"))
    broker = False
    for conf in [f for f in files_for(*place) if f.source in BROKER_CONFS]:
        broker = ensure_file(remote, report, conf, place=place) or broker
    return ini or page or loader or roles, broker
