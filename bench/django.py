"""Benchmark the Django sample on PostgreSQL; prints figures, asserts nothing.

    .venv/bin/python bench/django.py [--megabytes 100]

On a fresh provisioned test host (database: postgresql, 4 uWSGI workers):
- a deploy of a release with a migration while a load generator runs on the host
  (time, its phases, failed requests, p50/p99/max latency);
- `invoke backup` and `invoke restore --yes` of a database grown to about 100 MB;
- the price of loading the Django app in a chain reload: `invoke restart` (chain),
  idle, three times, against the same on the Flask sample (bench/deploy.py's app).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

from e2e_support import bake_tree, load_test  # noqa: E402

from sample_app.build_release import build as build_flask  # noqa: E402
from sample_django.build_release import build as build_django  # noqa: E402
from testhosts import create_host, ensure_ready  # noqa: E402


def run(tree, host, *args: str, input: str | None = None) -> tuple[float, str]:
    login = ["--host", f"{tree.slug}-deploy@127.0.0.1:{host.ssh_port}"]
    login += ["--identity", str(tree.deploy_key)]
    started = time.monotonic()
    result = tree.invoke(args[0], *login, *args[1:], input=input)
    took = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(args)}: {result.stderr.strip()}")
    return took, result.stdout


def phases(output: str) -> str:
    found = re.search(r"in [\d.]+ s \((.*)\)", output)
    return found.group(1) if found else "?"


def restarts(tree, host, count: int = 3) -> list[float]:
    """Reload step times of `invoke restart` (chain), idle."""
    times = []
    for _ in range(count):
        _, out = run(tree, host, "restart")
        times.append(float(re.search(r"\] reload +([\d.]+) s", out).group(1)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    ensure_ready()
    with tempfile.TemporaryDirectory() as tmp:
        dist = Path(tmp) / "dist"
        for name in ("dj", "fl"):
            (Path(tmp) / name).mkdir()
        django = bake_tree(
            Path(tmp) / "dj",
            "benchdj",
            wsgi_module="shop.wsgi:application",
            celery_app="shop.celery",
            database="postgresql",
            uwsgi_processes="4",
        )
        site = "benchdj.example.com"
        host = create_host("bench-dj")
        try:
            assert django.provision(host).returncode == 0, "provision failed"
            run(django, host, "env.set", f"DJANGO_ALLOWED_HOSTS={site}")
            run(django, host, "env.set", "DJANGO_SECRET_KEY", input="bench-secret\n")
            took, out = run(django, host, "deploy", "--release", str(build_django("v1", dist)))
            print(f"first deploy (venv, migrate)     {took:5.1f} s  {phases(out)}")
            v2 = str(build_django("v2", dist, migration="color"))
            with load_test(host, site, seconds=25, concurrency=8) as load:
                time.sleep(2)
                took, out = run(django, host, "deploy", "--release", v2)
            print(f"deploy v2 with a migration under load {took:5.1f} s  {phases(out)}")
            print(f"  load during deploy: {json.dumps(load.stats)}")

            # About N MB of notes, made by the app's own role (peer authentication):
            # 1920 random hex characters each, so the dump cannot compress them away.
            rows = args.megabytes * 1024 // 2
            sql = (
                "insert into notes_note (text, created) select (select string_agg("
                "md5(random()::text || i || j), '') from generate_series(1, 60) j),"
                f" now() from generate_series(1, {rows}) i"
            )
            host.run(
                "cd /tmp && runuser -u benchdj -- env PGHOST=/var/run/postgresql"
                f' PGDATABASE=benchdj psql -Xqc "{sql}"'
            )
            size = host.run(
                "cd /tmp && runuser -u postgres -- psql -XAtc"
                " \"select pg_size_pretty(pg_database_size('benchdj'))\""
            ).stdout.strip()
            took, out = run(django, host, "backup", "--label", "bench")
            name = re.search(r"backup (\S+-bench\.dump)", out).group(1)
            dump = host.run(f"stat -c %s /srv/benchdj/shared/backups/{name}").stdout.strip()
            print(f"backup of a {size} database      {took:5.1f} s  ({int(dump) >> 20} MiB dump)")
            took, out = run(django, host, "restore", name, "--yes")
            print(f"restore of it (app stopped, started)  {took:5.1f} s  {phases(out)}")

            django_reloads = restarts(django, host)
        finally:
            host.destroy()

        flask = bake_tree(Path(tmp) / "fl", "benchfl", uwsgi_processes="4")
        host = create_host("bench-fl")
        try:
            assert flask.provision(host).returncode == 0, "provision failed"
            run(flask, host, "deploy", "--release", str(build_flask("v1", dist)))
            flask_reloads = restarts(flask, host)
        finally:
            host.destroy()
    d, f = statistics.median(django_reloads), statistics.median(flask_reloads)
    print(f"chain reload, 4 workers, idle: Django {django_reloads} s, Flask {flask_reloads} s")
    print(
        f"  medians {d:.2f} s vs {f:.2f} s: Django costs {d / f:.1f}x,"
        f" {(d - f) / 4:.2f} s more per worker"
    )


if __name__ == "__main__":
    main()
