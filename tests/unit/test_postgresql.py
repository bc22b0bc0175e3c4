"""database=postgresql: the pg_hba.conf block, the decisions provisioning and the audit take
from what PostgreSQL said, the answer's hook checks, and the host script that replaces
pg_hba.conf (with a stand-in psql)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cookiecutter.exceptions import FailedHookException
from test_hooks import pre

# A fresh Debian cluster's pg_hba.conf, shortened: a header, then commented rules.
DEBIAN_HBA = """\
# PostgreSQL Client Authentication Configuration File
# (header)


# DO NOT DISABLE!
# Database administrative login by Unix domain socket
local   all             postgres                                peer

# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
"""


def parsed(text: str) -> list[dict]:
    """pg_hba_file_rules as PostgreSQL 15 shows simple lines: quotes gone, lists split."""
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#")[0].split()
        if 0 < len(fields) < 4:
            error = "end-of-line before role specification"
            rules.append({"line": number, "file": None, "order": None, "error": error})
        elif fields:
            names = [[n.strip('"') for n in f.split(",")] for f in fields[1:3]]
            rule = {"type": fields[0], "database": names[0], "user": names[1]}
            rule.update(method=fields[-1], error=None, file=None, order=None)
            rules.append({"line": number, **rule})
    return rules


def facts(text: str, role=None, database=None) -> dict:
    path = "/etc/postgresql/15/main/pg_hba.conf"
    return {
        "hba_file": path,
        "hba": text,
        "rules": parsed(text),
        "role": role,
        "database": database,
    }


@pytest.fixture(scope="module")
def tree(cookies_session, ssh_keys):
    context = {
        "project_name": "Shop",
        "project_slug": "shop",
        "domain": "shop.example.com",
        "deploy_ssh_key": ssh_keys["ed25519"],
        "database": "postgresql",
    }
    return cookies_session.bake(extra_context=context).project_path


# Answers calls of eep.database's functions, a JSON line each, in one process of the tree.
CALLS = """
import json, sys, traceback
from eep import database
from eep.remote import HostError
for line in sys.stdin:
    function, args = json.loads(line)
    try:
        answer = getattr(database, function)(*args)
    except HostError as error:
        answer = {"error": str(error)}
    except Exception:
        answer = {"exception": traceback.format_exc()}
    print(json.dumps(answer), flush=True)
"""


@pytest.fixture(scope="module")
def call(tree):
    """call(function, *args): eep.database.<function>(*args) in the baked tree; a HostError
    comes back as {"error": message}."""
    server = subprocess.Popen(
        [sys.executable, "-c", CALLS], cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )

    def run(function: str, *args):
        server.stdin.write(json.dumps([function, args]).encode() + b"\n")
        server.stdin.flush()
        answer = json.loads(server.stdout.readline())
        assert not (isinstance(answer, dict) and "exception" in answer), answer["exception"]
        return answer

    yield run
    server.stdin.close()
    server.wait(timeout=10)


# -- the block ---------------------------------------------------------------------------------


def test_the_block_admits_the_app_and_postgres_by_peer_and_rejects_the_rest(call):
    block = call("hba_block")
    rules = [(r["type"], r["database"], r["user"], r["method"]) for r in parsed(block)]
    assert rules == [
        ("local", ["shop"], ["postgres"], "peer"),
        ("local", ["shop"], ["shop"], "peer"),
        ("local", ["shop"], ["all"], "reject"),
        ("host", ["shop"], ["all"], "reject"),
        ("local", ["all"], ["shop"], "reject"),
        ("host", ["all"], ["shop"], "reject"),
    ]
    # Names are quoted, as pg_hba.conf reads a name that could be a keyword.
    assert 'local   "shop"  "shop"  peer' in block
    assert block.startswith("# eep shop: begin") and block.endswith("# eep shop: end\n")


def test_the_block_goes_above_the_first_rule_and_its_comments_once(call):
    why, text = call("hba_change", facts(DEBIAN_HBA))
    assert why == "eep's block added"
    block = call("hba_block")
    assert text == DEBIAN_HBA.replace("# DO NOT DISABLE!", block + "# DO NOT DISABLE!")
    assert call("hba_change", facts(text)) == ["", ""]
    assert call("hba_problems", facts(text)) == []


def test_an_edited_block_is_rewritten_where_it_is(call):
    _, text = call("hba_change", facts(DEBIAN_HBA))
    edited = text.replace('local   "shop"  all  reject\n', "local   all  all  trust\n")
    assert call("hba_problems", facts(edited)) == [
        "eep's block for shop in /etc/postgresql/15/main/pg_hba.conf differs from the tree"
    ]
    assert call("hba_change", facts(edited)) == ["eep's block differs", text]


@pytest.mark.parametrize(
    ("rule", "moved"),
    [
        ("local all all trust", True),
        ("host all all 0.0.0.0/0 md5", True),
        ("local shop all md5", True),
        ("local all +staff peer", True),
        ("local sameuser all peer", True),
        ("local shop shop reject", True),  # shuts the app out
        ("local shop postgres reject", True),  # shuts postgres out
        ("host shop shop reject", False),  # the block rejects it too
        ("local all other reject", False),
        ("local other all peer", True),  # role shop to another database
        ("local other other peer", False),
        ("local replication all peer", False),
    ],
)
def test_the_block_moves_above_a_rule_that_would_decide_for_it(call, rule, moved):
    _, text = call("hba_change", facts(DEBIAN_HBA))
    text = f"{rule}\n{text}"
    problems = call("hba_problems", facts(text))
    why, new = call("hba_change", facts(text))
    if not moved:
        assert (problems, why) == ([], "")
        return
    assert problems == [
        f"/etc/postgresql/15/main/pg_hba.conf line 1 ({rule.replace('0.0.0.0/0 ', '')})"
        " comes before eep's block and matches shop"
    ]
    assert why.startswith("eep's block moved above /etc/postgresql/15/main/pg_hba.conf line 1 (")
    assert new.startswith(call("hba_block") + f"{rule}\n")
    assert call("hba_problems", facts(new)) == []


def test_with_postgresql_16_rules_of_included_files_count_where_they_are_included(call):
    # PostgreSQL 16 numbers rules in the order it tries them (rule_number), across files.
    _, text = call("hba_change", facts(DEBIAN_HBA))
    found = facts(text)
    for number, rule in enumerate(found["rules"], 2):
        rule["order"] = number
    included = {**found["rules"][-1], "line": 1, "file": "/etc/postgresql/extra.conf"}
    found["rules"].append({**included, "database": ["all"], "order": 1})
    problems = call("hba_problems", found)
    assert problems == [
        "/etc/postgresql/extra.conf line 1 (host all all scram-sha-256) comes before eep's"
        " block and matches shop"
    ]
    found["rules"][-1]["order"] = 99
    assert call("hba_problems", found) == []


def test_another_apps_block_above_is_left_alone_and_ours_goes_above_it(call):
    other = call("hba_block").replace("shop", "shop2")
    text = DEBIAN_HBA.replace("# DO NOT DISABLE!", other + "# DO NOT DISABLE!")
    why, new = call("hba_change", facts(text))
    assert why == "eep's block added"
    assert other in new and new.index(call("hba_block")) < new.index(other)
    # Below another app's block is fine too: its rules never decide for this app.
    below = text.replace(other, other + call("hba_block"))
    assert call("hba_change", facts(below)) == ["", ""]


def test_a_damaged_block_or_a_broken_file_is_refused_with_one_line(call):
    begin_only = DEBIAN_HBA + "# eep shop: begin\nlocal shop shop peer\n"
    assert call("hba_change", facts(begin_only)) == {
        "error": "/etc/postgresql/15/main/pg_hba.conf: eep's block for shop is damaged (its"
        " begin and end lines); remove what is left of it by hand, then provision again"
    }
    broken = facts(DEBIAN_HBA + "local bad\n")
    assert call("hba_problems", broken)[0] == (
        "/etc/postgresql/15/main/pg_hba.conf line 12: end-of-line before role specification"
    )
    assert call("hba_problems", facts(DEBIAN_HBA)) == [
        "/etc/postgresql/15/main/pg_hba.conf has no eep block for shop"
    ]


# -- role and database -------------------------------------------------------------------------

ROLE = {
    "rolcanlogin": True,
    "rolsuper": False,
    "rolcreatedb": False,
    "rolcreaterole": False,
    "rolreplication": False,
    "rolbypassrls": False,
    "password": False,
    "mark": "eep app shop",
    "members": [],
}
DATABASE = {"owner": "shop", "mark": "eep app shop", "public": []}


def test_a_missing_role_is_created_without_password_or_rights(call):
    why, sql = call("role_change", None)
    assert sql == (
        'CREATE ROLE "shop" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;\n'
        "COMMENT ON ROLE \"shop\" IS 'eep app shop';\n"
    )
    assert "PASSWORD" not in sql and why.endswith("no password")
    assert call("role_change", ROLE) == ["", ""]


def test_a_role_given_rights_a_password_or_to_another_role_is_put_back(call):
    role = {**ROLE, "rolsuper": True, "rolcanlogin": False, "password": True, "members": ["x"]}
    assert call("role_problems", role) == ["NOLOGIN", "SUPERUSER", "has a password", "granted to x"]
    why, sql = call("role_change", role)
    assert why == "NOLOGIN; SUPERUSER; has a password; granted to x -> repaired"
    assert sql == (
        'ALTER ROLE "shop" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS'
        ' PASSWORD NULL;\nREVOKE "shop" FROM "x";\n'
    )


def test_a_missing_database_is_created_owned_by_the_role_and_closed_to_public(call):
    why, sql = call("database_change", None)
    assert sql.splitlines() == [
        'CREATE DATABASE "shop" OWNER "shop" TEMPLATE template0 ENCODING \'UTF8\''
        " LOCALE 'C.UTF-8';",
        "COMMENT ON DATABASE \"shop\" IS 'eep app shop';",
        'REVOKE ALL ON DATABASE "shop" FROM PUBLIC;',
    ]
    assert call("database_change", DATABASE) == ["", ""]
    opened = {**DATABASE, "owner": "postgres", "public": ["CONNECT", "TEMPORARY"]}
    assert call("database_change", opened) == [
        "owned by postgres; PUBLIC has CONNECT, TEMPORARY -> repaired",
        'ALTER DATABASE "shop" OWNER TO "shop";\nREVOKE ALL ON DATABASE "shop" FROM PUBLIC;\n',
    ]


def test_a_role_or_database_eep_did_not_make_is_never_taken_over(call):
    found = facts(DEBIAN_HBA, role={**ROLE, "mark": None}, database=DATABASE)
    assert call("claim_problems", found) == [
        "a PostgreSQL role shop exists that eep did not make (no comment 'eep app shop');"
        " pick another project_slug, or drop it if it is a leftover"
    ]
    assert call("claim_problems", facts(DEBIAN_HBA, role=ROLE, database=DATABASE)) == []


# -- the answer and the baked tree -------------------------------------------------------------


@pytest.mark.parametrize("slug", ["public", "none", "template1", "pg_shop"])
def test_names_postgresql_keeps_are_refused_only_with_a_database(slug):
    def slug_errors(database: str) -> list[str]:
        errors = pre.validate({"project_slug": slug, "database": database})
        return [e for e in errors if e.startswith(("project_slug", "database"))]

    assert slug_errors("postgresql") == [
        f"project_slug: {slug!r} is reserved by PostgreSQL (database=postgresql); pick another"
    ]
    assert slug_errors("none") == []


def test_the_database_answer_is_one_of_the_choices(bake, capfd):
    assert pre.validate({"database": "mysql"})[-1] == (
        "database: 'mysql' must be one of none, postgresql"
    )
    result = bake(database="postgresql", project_slug="pg_shop")
    assert isinstance(result.exception, FailedHookException)
    assert "ERROR: project_slug: 'pg_shop' is reserved by PostgreSQL" in capfd.readouterr().err


def test_the_connection_settings_are_the_root_owned_inis_env_lines(tree, bake):
    ini = (tree / "config" / "uwsgi-base.ini").read_text()
    assert [line for line in ini.splitlines() if line.startswith("env = ")][-4:] == [
        "env = PGHOST=/var/run/postgresql",
        "env = PGDATABASE=shop",
        "env = PGUSER=shop",
        "env = DATABASE_URL=postgresql:///shop?host=/var/run/postgresql",
    ]
    plain = bake().project_path
    assert "PG" not in (plain / "config" / "uwsgi-base.ini").read_text()
    code = (
        "from eep import database, layout, packages\n"
        "print(database.READS != [], 'postgresql' in packages.PACKAGES,"
        " layout.DIRECTORIES.get('/srv/shop/shared/backups'))"
    )
    for path, expected in [
        (tree, "True True directory shop:shop 0700"),
        (plain, "False False None"),
    ]:
        out = subprocess.run([sys.executable, "-c", code], cwd=path, capture_output=True, text=True)
        assert out.stdout.strip() == expected, out.stderr


def test_the_baked_tree_with_a_database_is_ruff_clean(tree):
    files = sorted(str(p) for p in tree.rglob("*.py"))
    for args in (["check"], ["format", "--check"]):
        proc = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "--isolated", "--line-length", "100", *files],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


# -- eep/host/pg_hba.py: replace, let PostgreSQL check, reload ----------------------------------

# Answers the script's three questions as PostgreSQL would; an error line when told to.
FAKE_PSQL = """\
#!/bin/sh
for query; do :; done
count="$STATE/reloads"
case "$query" in
  *pg_hba_file_rules*) cat "$STATE/error" 2>/dev/null || true ;;
  *pg_reload_conf*) echo $(( $(cat "$count" 2>/dev/null || echo 0) + 1 )) > "$count"; echo t ;;
  *pg_conf_load_time*) cat "$count" 2>/dev/null || echo 0 ;;
esac
"""


@pytest.fixture
def replace_hba(tree, tmp_path):
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "psql").write_text(FAKE_PSQL)
    (bin_dir / "psql").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STATE": str(state)}
    source = (tree / "eep" / "host" / "pg_hba.py").read_text()

    def run(request: dict, error: str = "") -> subprocess.CompletedProcess:
        if error:
            (state / "error").write_text(error)
        return subprocess.run(
            [sys.executable, "-c", source],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=env,
        )

    run.reloads = lambda: (
        int((state / "reloads").read_text()) if (state / "reloads").exists() else 0
    )
    return run


def test_the_host_script_replaces_the_file_keeps_its_mode_and_reloads(replace_hba, tmp_path):
    hba = tmp_path / "pg_hba.conf"
    hba.write_text("old\r\n")
    hba.chmod(0o640)
    done = replace_hba({"path": str(hba), "old": "old\r\n", "new": "new\n"})
    assert done.returncode == 0, done.stderr
    assert (hba.read_text(), hba.stat().st_mode & 0o777, replace_hba.reloads()) == (
        "new\n",
        0o640,
        1,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "pg_hba.conf", "state"]


def test_a_file_postgresql_refuses_is_put_back_and_not_reloaded(replace_hba, tmp_path):
    hba = tmp_path / "pg_hba.conf"
    hba.write_text("old\n")
    done = replace_hba({"path": str(hba), "old": "old\n", "new": "bad\n"}, error="1: oops")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"PostgreSQL refused the new {hba} (line 1: oops); the previous file is back"
    )
    assert (hba.read_text(), replace_hba.reloads()) == ("old\n", 0)


def test_a_file_edited_since_it_was_read_is_left_alone(replace_hba, tmp_path):
    hba = tmp_path / "pg_hba.conf"
    hba.write_text("edited\n")
    done = replace_hba({"path": str(hba), "old": "old\n", "new": "new\n"})
    assert done.returncode == 1
    assert done.stderr.strip() == f"{hba} changed while provisioning read it; provision again"
    assert (hba.read_text(), replace_hba.reloads()) == ("edited\n", 0)
