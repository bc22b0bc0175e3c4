"""uWSGI's enforced ini, the no-release page and the app's private broker config."""

from __future__ import annotations

from eep import app
from eep.files import ensure_file
from eep.manifest import host_file
from eep.remote import Remote
from eep.report import Report


def ensure_uwsgi_files(remote: Remote, report: Report) -> tuple[bool, bool]:
    """Install the files uWSGI and the broker read; return (uwsgi changed, broker changed)."""
    # The settings loader first: the ini imports it in every worker.
    loader = ensure_file(remote, report, host_file("config/eep_env.py"))
    ini = ensure_file(remote, report, host_file("config/uwsgi-base.ini"))
    page = ensure_file(remote, report, host_file("config/no-release.py"))
    broker = app.USE_CELERY and ensure_file(remote, report, host_file("config/redis.conf"))
    return ini or page or loader, broker
