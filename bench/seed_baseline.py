"""Baseline: the seed blog post's literal configuration, deployed the seed's way.

    .venv/bin/python bench/seed_baseline.py

On a fresh test host: uWSGI started by supervisord as root with `--ini` then
`--uid`, socket in /tmp, `stopsignal=QUIT`, Celery attached with
`attach-daemon2 = stopsignal=15,reloadsignal=15,cmd=...` (no exec, no pidfile), one
shared virtualenv, a deploy = new directory + symlink + `supervisorctl restart`.
Reports failed requests and latency under the same load as bench/deploy.py, and
whether a 20 s task running during the deploy was lost. Prints figures only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

from e2e_support import load_test  # noqa: E402

from sample_app.build_release import build  # noqa: E402
from testhosts import create_host, ensure_ready  # noqa: E402

SETUP = r"""
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends nginx supervisor redis-server uwsgi-core \
    uwsgi-plugin-python3 python3-venv curl >/dev/null
useradd --system --shell /usr/sbin/nologin webuser
mkdir -p /var/www/logs /var/www/shared /var/www/releases
python3 -m venv /var/www/.virtualenv
/var/www/.virtualenv/bin/pip install -q flask==3.1.3 'celery[redis]==5.7.0' redis==8.1.0
chown webuser:webuser /var/www/shared
cat > /etc/supervisor/conf.d/uwsgi_example.conf <<'CONF'
[program:uwsgi_example]
command=/usr/bin/uwsgi-core
    --ini /var/www/current/uwsgi.ini
    --processes 4
    --need-app
    --uid webuser
    --gid webuser
    --chown-socket www-data:webuser
    --chmod-socket=660
redirect_stderr=true
stdout_logfile=/var/www/logs/uwsgi.log
autostart=true
autorestart=true
stopsignal=QUIT
CONF
cat > /etc/nginx/sites-enabled/example <<'CONF'
server {
    listen 80;
    server_name seed.example.com;
    location / { include uwsgi_params; uwsgi_pass unix:/tmp/uwsgi_example.sock; }
}
CONF
systemctl reload nginx
"""

INI = """[uwsgi]
plugins = python3
virtualenv = /var/www/.virtualenv
module = app.wsgi:application
chdir = /var/www/current
socket = /tmp/uwsgi_example.sock
pidfile = /tmp/project-master_example.pid
vacuum = True
max-requests = 5000
harakiri = 30
env = CELERY_BROKER_URL=redis://127.0.0.1:6379/0
env = EEP_SHARED_DIR=/var/www/shared
attach-daemon2 = stopsignal=15,reloadsignal=15,cmd=/var/www/.virtualenv/bin/celery -A app.tasks \
worker --pidfile=/tmp/celery_example.pid --loglevel=info --concurrency=5
"""


def release(host, version: str, tarball: Path) -> None:
    host.put_file(f"/tmp/{tarball.name}", tarball.read_bytes(), 0o644)
    host.put_file(f"/var/www/releases/{version}/uwsgi.ini", INI.encode(), 0o644)
    host.run(
        f"tar -xzf /tmp/{tarball.name} -C /var/www/releases/{version} --strip-components=1"
        f" && ln -sfn /var/www/releases/{version} /var/www/current"
    )


def main() -> None:
    ensure_ready()
    dist = Path("/tmp/eep-seed-dist")
    tarballs = {v: build(v, dist) for v in ("v1", "v2")}
    host = create_host("bench-seed")
    try:
        host.run(SETUP, timeout=600)
        release(host, "v1", tarballs["v1"])
        host.run("supervisorctl update && sleep 5")
        page = "curl -s -H 'Host: seed.example.com' http://127.0.0.1"
        print("v1 answers:", host.run(f"{page}/").stdout.strip())
        host.run(f"{page}/task?seconds=20\\&id=seed")
        time.sleep(2)
        with load_test(host, "seed.example.com", seconds=15, concurrency=8) as load:
            time.sleep(2)
            started = time.monotonic()
            release(host, "v2", tarballs["v2"])
            host.run("supervisorctl restart uwsgi_example")
            took = time.monotonic() - started
        print(f"seed deploy (restart) {took:.1f} s; load: {json.dumps(load.stats)}")
        marker = "/var/www/shared/var/tasks/seed.json"
        host.run(f"for i in $(seq 50); do test -f {marker} && break; sleep 0.5; done")
        found = host.run(f"cat {marker}", check=False)
        print("task running during the deploy:", found.stdout.strip() or "LOST (never finished)")
        workers = host.run("pgrep -fc '[c]elery -A app.tasks worker'", check=False).stdout.strip()
        print(f"celery processes after the deploy: {workers} (one worker = 6: main + 5 pool)")
    finally:
        host.destroy()


if __name__ == "__main__":
    main()
