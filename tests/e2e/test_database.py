"""database=postgresql on a real host: two apps, each with its own role and database that only
its runtime user reaches (peer authentication, no password anywhere), the audit proven able
to fail on each broken promise, and PostgreSQL back after a reboot.

The tests share one host and run in order; each breakage is repaired before the next.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time

import pytest
from e2e_support import bake_tree, build_sample_release, snapshot_state, state_changes

pytestmark = pytest.mark.e2e

SLUG, OTHER = "shop", "blog"
CHECK = f"only {SLUG} reaches PostgreSQL database {SLUG}, no password"


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    directory = tmp_path_factory.mktemp("trees")
    return {
        SLUG: bake_tree(directory, SLUG, database="postgresql"),
        OTHER: bake_tree(directory, OTHER, database="postgresql", use_celery="n"),
    }


@pytest.fixture(scope="module")
def first_run(testhost_factory_module, trees):
    """The host, and what the first provisioning of each app printed."""
    host = testhost_factory_module("db")
    printed = {}
    for slug, tree in trees.items():
        result = tree.provision(host)
        assert result.returncode == 0, result.stdout + result.stderr
        printed[slug] = result.stdout
    return host, printed


@pytest.fixture(scope="module")
def host(first_run):
    return first_run[0]


def connection_env(tree) -> dict[str, str]:
    """The app's connection settings: the `env =` lines of its root-owned ini, nothing else."""
    ini = (tree.path / "config" / "uwsgi-base.ini").read_text()
    pairs = re.findall(r"^env = ((?:PG|DATABASE_URL)\w*)=(.*)$", ini, re.M)
    return dict(pairs)


def psql(host, user: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`psql -c 'select ...'` as a unix user, with `env` and nothing else of the caller's."""
    settings = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    query = "select current_user || ' ' || current_database()"
    extra = " ".join(shlex.quote(a) for a in args)
    return host.run(
        f"cd / && sudo -u {user} env -i PATH=/usr/bin:/bin {settings}"
        f" psql -X -A -t -w {extra} -c {shlex.quote(query)}",
        check=False,
    )


def audit(tree, host) -> subprocess.CompletedProcess:
    spec = f"root@127.0.0.1:{host.ssh_port}"
    return tree.invoke("audit", "--host", spec, "--identity", str(host.key_path))


def as_postgres(host, sql: str) -> None:
    host.run(f"cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}")


def test_provisioning_makes_the_role_the_database_and_the_rules_then_nothing(trees, first_run):
    host, printed = first_run
    for slug in (SLUG, OTHER):
        for line in (
            r"changed +file /etc/postgresql/15/main/pg_hba.conf: eep's block added",
            rf"changed +postgresql role {slug}: created: LOGIN NOSUPERUSER .*, no password",
            rf"changed +postgresql database {slug}: created, owned by {slug}, PUBLIC may not",
        ):
            assert re.search(line, printed[slug]), printed[slug]
    state = snapshot_state(host)
    hba = host.read_file("/etc/postgresql/15/main/pg_hba.conf")
    for tree in trees.values():
        again = tree.provision(host)
        assert again.returncode == 0, again.stdout + again.stderr
        assert re.search(r"done: 0 changed, \d+ ok$", again.stdout, re.M), again.stdout
    assert state_changes(state, snapshot_state(host)) == []
    assert host.read_file("/etc/postgresql/15/main/pg_hba.conf") == hba
    assert host.run("systemctl is-enabled postgresql; systemctl is-active postgresql").stdout == (
        "enabled\nactive\n"
    )
    assert host.run("stat -c '%U:%G %a' /srv/shop/shared/backups").stdout == "shop:shop 700\n"


def test_the_app_user_connects_with_the_settings_of_its_ini(trees, host):
    for slug, tree in trees.items():
        env = connection_env(tree)
        assert env == {
            "PGHOST": "/var/run/postgresql",
            "PGDATABASE": slug,
            "PGUSER": slug,
            "DATABASE_URL": f"postgresql:///{slug}?host=/var/run/postgresql",
        }
        libpq = psql(host, slug, {k: v for k, v in env.items() if k.startswith("PG")})
        assert (libpq.returncode, libpq.stdout) == (0, f"{slug} {slug}\n"), libpq.stderr
        url = psql(host, slug, {}, "-d", env["DATABASE_URL"])
        assert (url.returncode, url.stdout) == (0, f"{slug} {slug}\n"), url.stderr
    # The app owns its database: it can make tables there.
    made = psql(host, SLUG, connection_env(trees[SLUG]), "-c", "create table notes (id int)")
    assert made.returncode == 0, made.stderr


def refused(result: subprocess.CompletedProcess) -> str:
    """Why PostgreSQL refused a connection (the test fails if it did not)."""
    assert result.returncode != 0, f"connected: {result.stdout}"
    assert "FATAL" in result.stderr, result.stderr
    return result.stderr


def test_no_one_else_reaches_the_database(trees, host):
    env = {k: v for k, v in connection_env(trees[SLUG]).items() if k.startswith("PG")}
    for user in (f"{SLUG}-deploy", "nobody", OTHER, f"{OTHER}-deploy"):
        # As the app's role: peer authentication finds another unix user.
        assert f'Peer authentication failed for user "{SLUG}"' in refused(psql(host, user, env))
        # As their own role: the block rejects every other role to this database.
        own = refused(psql(host, user, {**env, "PGUSER": user}))
        assert f'pg_hba.conf rejects connection for host "[local]", user "{user}"' in own
    # The app's role over TCP, and the app into another database (also the other app's).
    tcp = psql(host, SLUG, {**env, "PGHOST": "127.0.0.1"})
    assert 'rejects connection for host "127.0.0.1", user "shop"' in refused(tcp)
    for database in ("postgres", OTHER):
        elsewhere = refused(psql(host, SLUG, {**env, "PGDATABASE": database}))
        assert f'user "{SLUG}", database "{database}"' in elsewhere
    # postgres, the administrator, keeps its access.
    admin = psql(host, "postgres", {**env, "PGUSER": "postgres"})
    assert (admin.returncode, admin.stdout) == (0, f"postgres {SLUG}\n"), admin.stderr


# grep -E arguments: what a PostgreSQL password looks like where it is written down.
PASSWORD_GIVEN = [
    "-e", "PGPASSWORD", "-e", "pgpass", "-e", "password *=",
    "-e", "postgres[a-z+]*://[^/@ ]*:[^/@ ]*@",
]  # fmt: skip


def test_there_is_no_password_anywhere(trees, host):
    roles = host.run(
        "cd / && runuser -u postgres -- psql -X -A -t -c"
        " \"select rolname, rolpassword is null from pg_authid where rolname in ('shop', 'blog')"
        ' order by 1"'
    ).stdout
    assert roles == "blog|t\nshop|t\n"
    # Not in the trees, the host's settings of the apps, or their homes: no libpq password
    # variable or file, no password given to a setting, none in a connection URL. (The
    # word alone is in comments: the broker of several hosts has a password.)
    for tree in trees.values():
        local = subprocess.run(
            ["grep", "-rilE", *PASSWORD_GIVEN, "config", "invoke.yaml"],
            cwd=tree.path,
            capture_output=True,
            text=True,
        )
        assert local.stdout == "", local.stdout
    patterns = " ".join(shlex.quote(word) for word in PASSWORD_GIVEN)
    found = host.run(
        f"grep -rilE --exclude-dir=venvs {patterns} /etc/eep /etc/supervisor"
        " /srv/shop /srv/blog /home/shop-deploy /home/blog-deploy;"
        " ls -a /srv/shop /srv/blog | grep -i pgpass",
        check=False,
    )
    assert found.stdout == "", found.stdout


def test_the_sample_app_serves_with_the_settings_in_its_environment(trees, host, tmp_path):
    tree = trees[SLUG]
    tarball = build_sample_release("v1", tmp_path)
    spec = f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}"
    deployed = tree.invoke(
        "deploy", "--release", str(tarball), "--host", spec, "--identity", str(tree.deploy_key)
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    page = host.run(f"curl -s -H 'Host: {SLUG}.example.com' http://127.0.0.1/").stdout
    assert page.startswith("sample v1 "), page
    # What the app's processes (web workers and the Celery worker) got: the ini's lines.
    environ = host.run(
        f"for p in $(pgrep -u {SLUG} -f 'uwsgi|celery'); do tr '\\0' '\\n' < /proc/$p/environ;"
        " echo; done"
    ).stdout
    for name, value in connection_env(tree).items():
        assert environ.count(f"\n{name}={value}\n") >= 2, environ
    assert "PGPASSWORD" not in environ


BREAKAGES = [
    pytest.param(
        "sed -i '/^# eep shop: begin/,/^# eep shop: end/d' /etc/postgresql/15/main/pg_hba.conf",
        "/etc/postgresql/15/main/pg_hba.conf has no eep block for shop",
        "file /etc/postgresql/15/main/pg_hba.conf: eep's block added",
        id="hba-block-removed",
    ),
    pytest.param(
        "ALTER ROLE shop PASSWORD 'hunter2'",
        "role shop: has a password",
        "postgresql role shop: has a password -> repaired",
        id="role-given-a-password",
    ),
    pytest.param(
        "GRANT CONNECT ON DATABASE shop TO PUBLIC",
        "database shop: PUBLIC has CONNECT",
        "postgresql database shop: PUBLIC has CONNECT -> repaired",
        id="public-may-connect",
    ),
]


def test_the_audit_passes(trees, host):
    result = audit(trees[SLUG], host)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"\] PASS  {re.escape(CHECK)}$", result.stdout, re.M), result.stdout


@pytest.mark.parametrize(("breakage", "failure", "repair"), BREAKAGES)
def test_the_audit_fails_on_each_broken_promise_and_provisioning_repairs_it(
    trees, host, breakage, failure, repair
):
    if breakage.startswith("sed"):
        host.run(breakage)
        as_postgres(host, "SELECT pg_reload_conf()")
    else:
        as_postgres(host, breakage)
    result = audit(trees[SLUG], host)
    assert result.returncode == 1
    line = re.search(rf"\] FAIL  {re.escape(CHECK)}: (.*)$", result.stdout, re.M)
    assert line and line.group(1) == failure, result.stdout
    if breakage.startswith("sed"):
        # Without the block, Debian's `local all all peer` admits any role of a unix user's
        # name; what PUBLIC lost still keeps such a role out of the database.
        as_postgres(host, "CREATE ROLE nobody LOGIN")
        time.sleep(0.5)  # the reload is asynchronous
        env = {**connection_env(trees[SLUG]), "PGUSER": "nobody"}
        del env["DATABASE_URL"]
        stranger = refused(psql(host, "nobody", env))
        as_postgres(host, "DROP ROLE nobody")
        assert 'permission denied for database "shop"' in stranger
    repaired = trees[SLUG].provision(host)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert re.search(rf"changed +{re.escape(repair)}$", repaired.stdout, re.M), repaired.stdout
    assert re.search(r"done: 1 changed, \d+ ok$", repaired.stdout, re.M), repaired.stdout
    assert audit(trees[SLUG], host).returncode == 0


def test_after_a_reboot_postgresql_is_back_and_the_app_connects(trees, host):
    host.reboot()
    deadline = time.monotonic() + 60
    env = {k: v for k, v in connection_env(trees[SLUG]).items() if k.startswith("PG")}
    while (connected := psql(host, SLUG, env)).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert connected.stdout == f"{SLUG} {SLUG}\n", connected.stderr
    assert "deploy" in refused(psql(host, f"{SLUG}-deploy", {**env, "PGUSER": f"{SLUG}-deploy"}))
    while "sample v1 " not in (
        page := host.run(f"curl -s -H 'Host: {SLUG}.example.com' http://127.0.0.1/").stdout
    ):
        assert time.monotonic() < deadline, page
        time.sleep(0.5)
