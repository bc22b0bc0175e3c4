"""PostgreSQL for the app (answer `database: postgresql`): a role and a database, both named
after the app, that only the app's runtime user reaches, with no password anywhere.

The app connects over the local socket with peer authentication: PostgreSQL asks the
kernel which unix user is on the other end and admits only `<slug>`, as role `<slug>`,
to database `<slug>`. Nothing secret is made, so nothing can leak from the tree, a
release, the environment or the host. The connection settings are the `env =` lines of
config/uwsgi-base.ini, and nowhere else.

Provisioning reads everything in one psql query (run with the other reads of eep.provision),
decides, then acts on the difference:
- role `<slug>`: LOGIN, no superuser, createdb, createrole, replication or bypassrls, no
  password (ALTER ROLE puts every attribute back, a password included);
- database `<slug>`, owned by the role, with PUBLIC's default CONNECT and TEMPORARY revoked:
  no other role may connect even where pg_hba.conf would let it;
- a block in pg_hba.conf (`SHOW hba_file`: the path holds the version) above every rule
  that could decide a connection to the database or as the role (see `hba_block`).
Role and database carry the comment MARK: one that exists without it was not made by eep
for this app and is never taken over (like the accounts' GECOS mark).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from eep import app
from eep.packages import missing_packages, service_state
from eep.remote import HostError, Remote
from eep.report import Report, unified_diff

ENABLED = app.DATABASE == "postgresql"
NAME = app.SLUG  # the role and the database
MARK = f"eep app {app.SLUG}"
BEGIN = f"# eep {NAME}: begin"
END = f"# eep {NAME}: end"
ANY_BEGIN = re.compile(r"# eep \S+: begin")

# pg_authid column, the value the role must have, its keyword in CREATE/ALTER ROLE.
ATTRIBUTES = [
    ("rolcanlogin", True, "LOGIN"),
    ("rolsuper", False, "SUPERUSER"),
    ("rolcreatedb", False, "CREATEDB"),
    ("rolcreaterole", False, "CREATEROLE"),
    ("rolreplication", False, "REPLICATION"),
    ("rolbypassrls", False, "BYPASSRLS"),
]
ROLE_OPTIONS = " ".join(kw if want else f"NO{kw}" for _, want, kw in ATTRIBUTES)
# Database privileges PUBLIC (every role) gets by default, or could be given.
PUBLIC_PRIVILEGES = ["CONNECT", "TEMPORARY", "CREATE"]


def literal(text: str) -> str:
    """An SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    """An SQL identifier; pg_hba.conf quotes names the same way ("all" is a name, not a keyword)."""
    return '"' + name.replace('"', '""') + '"'


# As postgres, the superuser Debian's cluster admits over the local socket by peer.
PSQL = "cd / && runuser -u postgres -- psql -X -A -t -q -w -d postgres -v ON_ERROR_STOP=1"
QUERY = f"""
SELECT json_build_object(
  'hba_file', current_setting('hba_file'),
  'hba', pg_read_file(current_setting('hba_file')),
  'rules', (SELECT json_agg(json_build_object('line', line_number, 'type', type,
              'database', database, 'user', user_name, 'method', auth_method, 'error', error,
              'file', to_jsonb(r)->>'file_name', 'order', to_jsonb(r)->'rule_number')
            ORDER BY line_number) FROM pg_hba_file_rules r),
  'role', (SELECT json_build_object({", ".join(f"'{c}', {c}" for c, _, _ in ATTRIBUTES)},
              'password', rolpassword IS NOT NULL,
              'mark', shobj_description(oid, 'pg_authid'),
              'members', ARRAY(SELECT pg_get_userbyid(member) FROM pg_auth_members
                               WHERE roleid = a.oid ORDER BY 1))
            FROM pg_authid a WHERE rolname = {literal(NAME)}),
  'database', (SELECT json_build_object('owner', pg_get_userbyid(datdba),
                  'mark', shobj_description(oid, 'pg_database'),
                  'public', ARRAY(SELECT p FROM unnest(ARRAY{PUBLIC_PRIVILEGES!r}) p
                                  WHERE has_database_privilege('public', d.oid, p)))
               FROM pg_database d WHERE datname = {literal(NAME)}))
"""
FACTS = f"{PSQL} -c {shlex.quote(' '.join(QUERY.split()))}"
# How this step reads the host: eep.provision runs it with the other reads, in one round trip.
READS = [FACTS] if ENABLED else []


def read_facts(remote: Remote) -> dict:
    """The cluster's pg_hba.conf (path, text, rules as PostgreSQL parsed them), the role and
    the database (None when missing), as FACTS answers them."""
    result = remote.run(FACTS, check=False, changes=False)
    if result.exited != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise HostError(f"PostgreSQL does not answer: {lines[-1] if lines else result.exited}")
    return json.loads(result.stdout)


# -- who may connect: the pg_hba.conf block -------------------------------------------------


def hba_block() -> str:
    """eep's rules for the app, first match wins: PostgreSQL tries pg_hba.conf top down."""
    name = ident(NAME)
    return f"""{BEGIN} (written by `invoke provision` from eep/database.py; do not edit)
# Only the unix user {NAME} reaches database {NAME}, as role {NAME}, over the local socket
# (peer: the kernel says who connects, no password); postgres keeps its access. Every
# other role is rejected there, and role {NAME} everywhere else.
local   {name}  postgres  peer
local   {name}  {name}  peer
local   {name}  all  reject
host    {name}  all  all  reject
local   all  {name}  reject
host    all  {name}  all  reject
{END}
"""


def _may_name(field: list[str] | None, name: str) -> bool:
    """Whether a rule's database or user field may match `name`: the name, a keyword that
    can mean it, a group (+) or a pattern (/, PostgreSQL 16 and later)."""
    return any(e in (name, "all", "sameuser", "samerole") or e[:1] in "+/" for e in field or [])


def shadows(rule: dict) -> bool:
    """Whether a rule placed above the block would decide a connection the block decides.

    Any rule that may admit a connection to the database or as the role does; a reject
    rule only when it may shut out one the block admits (local, to the database, as the
    role or as postgres): rejecting more than the block does is harmless.
    """
    if rule["database"] == ["replication"]:  # streaming replication, never a database
        return False
    to_database, as_role = _may_name(rule["database"], NAME), _may_name(rule["user"], NAME)
    if rule["method"] != "reject":
        return to_database or as_role
    admitted = as_role or _may_name(rule["user"], "postgres")
    return rule["type"] == "local" and to_database and admitted


def describe(rule: dict) -> str:
    fields = [rule["type"], ",".join(rule["database"]), ",".join(rule["user"]), rule["method"]]
    return " ".join(fields)


def find_block(lines: list[str], path: str) -> tuple[int, int] | None:
    """Indexes of the block's first line and of the line after it, or None when absent."""
    starts = [i for i, line in enumerate(lines) if line.startswith(BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\n") == END]
    if not starts and not ends:
        return None
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise HostError(
            f"{path}: eep's block for {NAME} is damaged (its begin and end lines);"
            " remove what is left of it by hand, then provision again"
        )
    return starts[0], ends[0] + 1


def shadowing_rules(facts: dict, start: int) -> list[dict]:
    """The rules PostgreSQL tries before the block's (at line index `start` of the file)
    that the block must come before."""
    rules = [r for r in facts["rules"] or [] if not r["error"]]
    in_file = [r for r in rules if r["file"] in (None, facts["hba_file"])]
    ours = min((r for r in in_file if r["line"] > start), key=lambda r: r["line"], default=None)
    if ours and ours["order"] is not None:
        # PostgreSQL 16 and later number the rules in order, those of included files too.
        above = [r for r in rules if r["order"] < ours["order"]]
    else:
        above = [r for r in in_file if r["line"] <= start]
    return [r for r in above if shadows(r)]


def where(rule: dict, path: str) -> str:
    return f"{rule['file'] or path} line {rule['line']}"


def hba_change(facts: dict) -> tuple[str, str]:
    """(why, the new pg_hba.conf) to put the block in place; ("", "") when it is.

    A block in place and below no rule that matters is rewritten where it is; otherwise
    it goes above the first rule of the file and the comments just above that rule (below
    the file's header, and above other apps' blocks, which never match this app's names).
    """
    path, text = facts["hba_file"], facts["hba"]
    lines = text.splitlines(keepends=True)
    found = find_block(lines, path)
    block = hba_block()
    if found:
        start, end = found
        above = shadowing_rules(facts, start)
        if not above and "".join(lines[start:end]) == block:
            return "", ""
        del lines[start:end]
        if not above:
            return "eep's block differs", "".join(lines[:start]) + block + "".join(lines[start:])
        why = f"eep's block moved above {where(above[0], path)} ({describe(above[0])})"
    else:
        why = "eep's block added"
    at = next(
        (i for i, line in enumerate(lines) if ANY_BEGIN.match(line) or _is_rule(line)), len(lines)
    )
    if at < len(lines) and not ANY_BEGIN.match(lines[at]):
        # Above the comment lines that go with that rule (Debian's "DO NOT DISABLE!").
        while at > 0 and lines[at - 1].lstrip().startswith("#"):
            at -= 1
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return why, "".join(lines[:at]) + block + "".join(lines[at:])


def _is_rule(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def hba_errors(facts: dict) -> list[str]:
    """The lines PostgreSQL cannot parse: it loads no pg_hba.conf that has one."""
    rules = facts["rules"] or []
    return [f"{where(r, facts['hba_file'])}: {r['error']}" for r in rules if r["error"]]


def hba_problems(facts: dict) -> list[str]:
    """What is wrong with pg_hba.conf for this app, one line each (the audit's view)."""
    path, lines = facts["hba_file"], facts["hba"].splitlines(keepends=True)
    problems = hba_errors(facts)
    try:
        found = find_block(lines, path)
    except HostError as error:
        return [*problems, str(error)]
    if found is None:
        return [*problems, f"{path} has no eep block for {NAME}"]
    start, end = found
    if "".join(lines[start:end]) != hba_block():
        problems.append(f"eep's block for {NAME} in {path} differs from the tree")
    problems += [
        f"{where(r, path)} ({describe(r)}) comes before eep's block and matches {NAME}"
        for r in shadowing_rules(facts, start)
    ]
    return problems


# -- the role and the database ------------------------------------------------------------


def claim_problems(facts: dict) -> list[str]:
    """A role or database of the app's name that eep did not make for it."""
    return [
        f"a PostgreSQL {kind} {NAME} exists that eep did not make (no comment {MARK!r});"
        " pick another project_slug, or drop it if it is a leftover"
        for kind in ("role", "database")
        if facts[kind] is not None and facts[kind]["mark"] != MARK
    ]


def role_problems(role: dict) -> list[str]:
    wrong = [kw if role[col] else f"NO{kw}" for col, want, kw in ATTRIBUTES if role[col] != want]
    if role["password"]:
        wrong.append("has a password")
    if role["members"]:
        # A member may SET ROLE to it: the app's rights would reach another login.
        wrong.append(f"granted to {', '.join(role['members'])}")
    return wrong


def role_change(role: dict | None) -> tuple[str, str]:
    """(why, SQL) to make the role as wanted; ("", "") when it is."""
    name = ident(NAME)
    if role is None:
        sql = f"CREATE ROLE {name} {ROLE_OPTIONS};\nCOMMENT ON ROLE {name} IS {literal(MARK)};\n"
        return f"created: {ROLE_OPTIONS}, no password", sql
    wrong = role_problems(role)
    # PASSWORD NULL removes a password: peer authentication never needs one.
    sql = f"ALTER ROLE {name} {ROLE_OPTIONS} PASSWORD NULL;\n"
    sql += "".join(f"REVOKE {name} FROM {ident(member)};\n" for member in role["members"])
    return (f"{'; '.join(wrong)} -> repaired", sql) if wrong else ("", "")


def database_problems(database: dict) -> list[str]:
    wrong = []
    if database["owner"] != NAME:
        wrong.append(f"owned by {database['owner']}")
    if database["public"]:
        wrong.append(f"PUBLIC has {', '.join(database['public'])}")
    return wrong


def database_change(database: dict | None) -> tuple[str, str]:
    """(why, SQL) to make the database as wanted; ("", "") when it is."""
    name = ident(NAME)
    # Every role gets CONNECT and TEMPORARY on a new database by default.
    revoke = f"REVOKE ALL ON DATABASE {name} FROM PUBLIC;\n"
    if database is None:
        # UTF-8 with a locale every Debian has, whatever the cluster was initialised with
        # (a host without a locale gets SQL_ASCII); template0 allows choosing them.
        sql = f"CREATE DATABASE {name} OWNER {name} TEMPLATE template0"
        sql += " ENCODING 'UTF8' LOCALE 'C.UTF-8';\n"
        sql += f"COMMENT ON DATABASE {name} IS {literal(MARK)};\n" + revoke
        return f"created, owned by {NAME}, PUBLIC may not connect", sql
    wrong = database_problems(database)
    sql = f"ALTER DATABASE {name} OWNER TO {name};\n" if database["owner"] != NAME else ""
    sql += revoke if database["public"] else ""
    return (f"{'; '.join(wrong)} -> repaired", sql) if wrong else ("", "")


# -- provisioning ---------------------------------------------------------------------------


def check_claims(remote: Remote) -> None:
    """Refuse, before provisioning changes anything, a role or database eep did not make.
    Says nothing while PostgreSQL is not installed or not running yet."""
    if not ENABLED:
        return
    try:
        facts = read_facts(remote)
    except HostError:
        return
    problems = claim_problems(facts)
    if problems:
        raise HostError(problems[0])


def ensure_database(remote: Remote, report: Report) -> None:
    """The role, the database and the pg_hba.conf block, decided from one read."""
    if not ENABLED:
        return
    role_step, database_step = f"postgresql role {NAME}", f"postgresql database {NAME}"
    if report.check and not _running(remote):
        for step in (role_step, database_step, "pg_hba.conf"):
            report.change(step, "not read: PostgreSQL is not running yet")
        return
    facts = read_facts(remote)
    problems = claim_problems(facts)
    if problems:
        raise HostError(problems[0])
    hba_why, new_hba = hba_change(facts)
    if hba_why and (errors := hba_errors(facts)):
        raise HostError(f"{errors[0]}; fix it, then provision again")
    role_why, role_sql = role_change(facts["role"])
    database_why, database_sql = database_change(facts["database"])

    # Who may connect first: the database never exists without its rules.
    path, old_hba = facts["hba_file"], facts["hba"]
    if not hba_why:
        report.unchanged(f"file {path}", f"eep's block for {NAME}")
    elif report.change(
        f"file {path}", hba_why, unified_diff(path, old_hba.encode(), new_hba.encode())
    ):
        write_hba(remote, path, old_hba, new_hba)
    sql = ""
    for step, why, statements in (
        (role_step, role_why, role_sql),
        (database_step, database_why, database_sql),
    ):
        if not why:
            report.unchanged(step)
        elif report.change(step, why):
            sql += statements
    if sql:
        remote.run(f"{PSQL} -f -", stdin=sql.encode())


def _running(remote: Remote) -> bool:
    """Whether PostgreSQL is installed and running (check mode neither installs nor starts it)."""
    active = remote.run(service_state("postgresql")[1], check=False, changes=False).stdout
    return "postgresql" not in missing_packages(remote) and active.strip() == "active"


def write_hba(remote: Remote, path: str, old: str, new: str) -> None:
    """Replace pg_hba.conf as postgres (eep/host/pg_hba.py): the file and its directory are
    postgres's, so root writes nothing there; PostgreSQL checks the file before it reloads."""
    source = (Path(__file__).parent / "host" / "pg_hba.py").read_text(encoding="utf-8")
    request = json.dumps({"path": path, "old": old, "new": new}).encode()
    result = remote.run(
        f"cd / && runuser -u postgres -- python3 -c {shlex.quote(source)}",
        stdin=request,
        check=False,
    )
    if result.exited != 0:
        lines = result.stderr.strip().splitlines() or [f"exit {result.exited}"]
        raise HostError(lines[-1])


# -- the audit ------------------------------------------------------------------------------


def audit_problems(remote: Remote) -> list[str]:
    """What breaks the promise: the service, the role, the database, pg_hba.conf."""
    problems = []
    enabled, active = (
        remote.run(query, check=False, changes=False).stdout.strip()
        for query in service_state("postgresql")
    )
    if (enabled, active) != ("enabled", "active"):
        problems.append(f"postgresql is {enabled or '?'}/{active or '?'}")
    try:
        facts = read_facts(remote)
    except HostError as error:
        return [*problems, str(error)]
    problems += claim_problems(facts)
    role, database = facts["role"], facts["database"]
    if role is None:
        problems.append(f"role {NAME} is missing")
    else:
        problems += [f"role {NAME}: {what}" for what in role_problems(role)]
    if database is None:
        problems.append(f"database {NAME} is missing")
    else:
        problems += [f"database {NAME}: {what}" for what in database_problems(database)]
    return problems + hba_problems(facts)
