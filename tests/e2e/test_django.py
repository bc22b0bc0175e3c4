"""A real Django app on PostgreSQL: migrations as the app with a backup first, static files
from the release, uploads kept, secrets as settings, backups and restore, a reboot.

One host for the module; the tests run in order (v1, v2 with a migration under load,
rollback, a failing migration, backups, restore, isolation, reboot).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from e2e_support import REPO, audit_as_root, audit_fails_on_mode, bake_tree, load_test

pytestmark = pytest.mark.e2e

SLUG = "dj"
SITE = f"{SLUG}.example.com"
BUILD = REPO / "sample_django" / "build_release.py"
SECRET_KEY = "dj-Kx81-unique-secret-key-Qz5"


def build(version: str, out: Path, *options: str) -> Path:
    proc = subprocess.run(
        ["python3", str(BUILD), version, str(out), *options],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(proc.stdout.strip())


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return bake_tree(
        tmp_path_factory.mktemp("trees"),
        SLUG,
        wsgi_module="shop.wsgi:application",
        celery_app="shop.celery",
        database="postgresql",
        uwsgi_processes="2",
    )


@pytest.fixture(scope="module")
def host(testhost_factory_module, tree):
    host = testhost_factory_module("dj")
    result = tree.provision(host)
    assert result.returncode == 0, result.stdout + result.stderr
    return host


def app(tree, host, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    login = ["--host", f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}"]
    login += ["--identity", str(tree.deploy_key)]
    return tree.invoke(args[0], *login, *args[1:], input=input)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def http(host, path: str, *curl: str) -> tuple[str, str]:
    """(status, body) of a request through nginx on the host."""
    url = shlex.quote(f"http://127.0.0.1{path}")
    args = " ".join(shlex.quote(a) for a in curl)
    out = host.run(f"curl -s -w '\\n%{{http_code}}' -H 'Host: {SITE}' {args} {url}").stdout
    body, _, status = out.rpartition("\n")
    return status, body.removesuffix("\n")


def status_line(host) -> str:
    """'django VERSION notes COUNT' from the home page."""
    status, body = http(host, "/")
    match = re.search(r"django \S+ notes \d+", body)
    assert status == "200" and match, (status, body[:300])
    return match.group(0)


def psql(host, user: str, sql: str) -> subprocess.CompletedProcess:
    env = f"PGHOST=/var/run/postgresql PGDATABASE={SLUG} PGUSER={SLUG}"
    return host.run(
        f"cd /tmp && runuser -u {user} -- env {env} psql -XAtc {shlex.quote(sql)}", check=False
    )


def test_the_first_deploy_migrates_collects_static_and_passes_health(tree, host, dist):
    # Without its settings the health check fails (DJANGO_ALLOWED_HOSTS is empty): the
    # release gets no request, the no-release page stays.
    refused = app(tree, host, "deploy", "--release", str(build("v0", dist)))
    assert refused.returncode == 1
    assert "health check GET /health/ failed" in refused.stderr, refused.stderr
    ok(app(tree, host, "env.set", "DJANGO_ALLOWED_HOSTS=" + SITE))
    ok(app(tree, host, "env.set", "DJANGO_SECRET_KEY", input=SECRET_KEY + "\n"))
    out = ok(app(tree, host, "deploy", "--release", str(build("v1", dist))))
    assert "python manage.py collectstatic --noinput" in out
    assert "python manage.py migrate --noinput" in out
    assert f"GET /health/ (Host: {SITE}): 200 OK" in out
    assert status_line(host) == "django v1 notes 0"
    status, css = http(host, "/static/notes/version.txt")
    assert (status, css) == ("200", "v1")
    # The migration ran as the app's role: it owns the tables.
    owner = psql(host, SLUG, "select tableowner from pg_tables where tablename = 'notes_note'")
    assert owner.stdout.strip() == SLUG


def test_data_uploads_and_a_task_survive_a_deploy_with_a_migration_under_load(tree, host, dist):
    assert http(host, "/notes/", "-d", "text=first note")[0] == "201"
    host.run("printf 'hello' > /tmp/hello.txt")
    status, url = http(host, "/upload/", "-F", "file=@/tmp/hello.txt")
    assert status == "201" and url.startswith("/media/uploads/"), url
    assert http(host, "/task/?seconds=6&id=slow")[0] == "200"
    started = f"/srv/{SLUG}/shared/var/tasks/slow.started"
    deadline = time.monotonic() + 60
    while host.run(f"test -f {started}", check=False).returncode:
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.5)
    release = build("v2", dist, "--with-migration", "color")
    with load_test(host, SITE, seconds=25, concurrency=4) as load:
        time.sleep(1)
        out = ok(app(tree, host, "deploy", "--release", str(release)))
    assert load.stats["failed"] == 0 and load.stats["requests"] > 100, load.stats
    assert re.search(r"backup .*before-\S+-v2\.dump", out), out
    assert status_line(host) == "django v2 notes 2"
    assert http(host, "/static/notes/version.txt") == ("200", "v2")
    assert http(host, url) == ("200", "hello")
    column = psql(
        host,
        SLUG,
        "select column_name from information_schema.columns"
        " where table_name = 'notes_note' and column_name = 'color'",
    )
    assert column.stdout.strip() == "color"
    done = host.run(f"cat /srv/{SLUG}/shared/var/tasks/slow.json", check=False)
    assert done.returncode == 0, "the running task did not finish"
    assert '"v1"' in done.stdout  # it ran to its end on the release it started on


def test_rollback_serves_the_old_releases_static_files(tree, host):
    ok(app(tree, host, "rollback"))
    assert status_line(host) == "django v1 notes 2"
    assert http(host, "/static/notes/version.txt") == ("200", "v1")
    ok(app(tree, host, "rollback", "--to", current_id(tree, host, "-v2")))
    assert http(host, "/static/notes/version.txt") == ("200", "v2")


def current_id(tree, host, suffix: str) -> str:
    listing = ok(app(tree, host, "releases"))
    return next(w for w in listing.split() if w.endswith(suffix) and re.match(r"\d{8}T", w))


def test_a_failing_migration_fails_the_release_names_its_backup_and_changes_nothing(
    tree, host, dist
):
    before = psql(
        host,
        SLUG,
        "select count(*) from information_schema.columns where table_name = 'notes_note'",
    ).stdout
    # v2's migration (applied) and one that changes the schema, then raises.
    release = build("v3", dist, "--with-migration", "color", "--failing-migration")
    failed = app(tree, host, "deploy", "--release", str(release))
    assert failed.returncode == 1
    match = re.search(r"the backup taken just before: (\S+\.dump)", failed.stderr)
    assert match and "this migration fails on purpose" in failed.stdout + failed.stderr, failed
    assert status_line(host) == "django v2 notes 2"
    after = psql(
        host,
        SLUG,
        "select count(*) from information_schema.columns where table_name = 'notes_note'",
    ).stdout
    assert after == before  # the failed migration's column was rolled back with it
    assert match.group(1) in ok(app(tree, host, "backups"))


def test_restore_asks_first_then_brings_the_data_back(tree, host, tmp_path):
    out = ok(app(tree, host, "backup", "--label", "known", "--download", str(tmp_path)))
    name = re.search(r"backup (\S+-known\.dump)", out).group(1)
    local = tmp_path / name
    assert local.read_bytes()[:5] == b"PGDMP"
    assert oct(local.stat().st_mode & 0o777) == "0o600"
    assert http(host, "/notes/", "-d", "text=after the backup")[0] == "201"
    assert status_line(host) == "django v2 notes 3"
    asked = app(tree, host, "restore", name)
    assert asked.returncode == 1 and "Add --yes" in asked.stderr
    assert status_line(host) == "django v2 notes 3"
    ok(app(tree, host, "restore", name, "--yes"))
    assert status_line(host) == "django v2 notes 2"
    missing = app(tree, host, "restore", "20990101T000000Z-none.dump", "--yes")
    assert missing.returncode == 1 and "no backup 20990101T000000Z-none.dump" in missing.stderr
    assert status_line(host) == "django v2 notes 2"


def test_nobody_else_reaches_the_database_backups_or_settings(tree, host):
    for user in (f"{SLUG}-deploy", "nobody", "www-data"):
        assert psql(host, user, "select 1").returncode != 0, user
        for command in (f"ls /srv/{SLUG}/shared/backups", f"cat /srv/{SLUG}/shared/env"):
            denied = host.run(f"runuser -u {user} -- {command}", check=False)
            assert denied.returncode != 0, (user, command)
    assert psql(host, SLUG, "select 1").stdout.strip() == "1"
    places = f"/srv/{SLUG} /etc /var/log /home /root /tmp /run"
    found = host.run(f"grep -rlsF {SECRET_KEY} {places} || true").stdout.split()
    assert found == [f"/srv/{SLUG}/shared/env"]
    sql = f"select rolpassword is null from pg_authid where rolname = '{SLUG}'"
    role = host.run(f"cd /tmp && runuser -u postgres -- psql -XAtc {shlex.quote(sql)}")
    assert role.stdout.strip() == "t"
    ok(audit_as_root(tree, host))
    audit_fails_on_mode(tree, host, f"/srv/{SLUG}/shared/backups", "directory", "0750", "0700")


def test_after_a_reboot_everything_is_back(tree, host):
    host.reboot()
    deadline = time.monotonic() + 90
    while http(host, "/health/")[0] != "200":
        assert time.monotonic() < deadline, "the app did not come back after the reboot"
        time.sleep(1)
    assert status_line(host) == "django v2 notes 2"
    assert http(host, "/static/notes/version.txt") == ("200", "v2")
    assert http(host, "/task/?seconds=0&id=after-reboot")[0] == "200"
    deadline = time.monotonic() + 60
    marker = f"/srv/{SLUG}/shared/var/tasks/after-reboot.json"
    while host.run(f"test -f {marker}", check=False).returncode:
        assert time.monotonic() < deadline, "Celery did not run a task after the reboot"
        time.sleep(1)
