"""Names and paths this app claims on a host: provisioning never takes over one eep did not make.

The app's names (accounts, group, supervisor programs, nginx server names) and paths
(app root, /run, /var/log, /etc/eep directories and the config files outside them) may
already exist on a host: a system group such as ssl-cert, /run/lock, /var/lib/dpkg,
another app's broker program or domain. Taking one over hands the app's accounts
whatever it guards. So provisioning first reads every fact, decides, and refuses
before it changes anything unless each existing thing is provably eep's:

- accounts carry the GECOS mark "eep app <slug>", and the group is the primary group
  of the marked runtime account (useradd creates both at once);
- directories belong to the app's group (only root could have given them to it);
- config files begin with eep's comment line ("# eep: ..." or "; eep: ...");
- no other supervisor section, tmpfiles.d line or nginx site names what the app uses.

`invoke audit` checks the same, and that the group has exactly the expected members.
"""

from __future__ import annotations

import json
import re

from eep import app, tls
from eep.accounts import MARK
from eep.manifest import HOST_FILES, host_file
from eep.nginx import ENABLED
from eep.remote import HostError, Remote
from eep.report import Report
from eep.supervisor import PROGRAMS

# Top directories of the app: everything below them is made by eep or its accounts.
TOP_DIRS = [app.APP_ROOT, app.LOG_DIR, app.CONF_DIR, app.RUN_DIR, f"/home/{app.DEPLOY_USER}"]
if app.TLS != "none":
    TOP_DIRS += [tls.TLS_DIR, tls.WEBROOT]
# certbot's certificate of the app's name (--cert-name <slug>) is eep's when its renewal
# file names the app's webroot: only eep uses /var/lib/eep-acme/<slug>.
LINEAGE = {tls.RENEWAL: f"webroot_path = {tls.WEBROOT}"} if app.TLS == "acme" else {}
# Config files with fixed names outside those directories, recognised by their first line.
FILES = [f.path for f in HOST_FILES if not f.path.startswith(tuple(d + "/" for d in TOP_DIRS))]
MARKER = re.compile(r"[#;] eep: ")
# supervisorctl reads these as "every program" rather than as a program name.
CTL_KEYWORDS = {"all"}
# A parent another account can write lets it swap the directory below (Ubuntu's
# /var/log is root:syslog 0775 and is accepted: syslog is a system daemon).
GROUP_WRITABLE_PARENTS = {"/var/log"}

# Where Debian's nginx.conf and supervisord.conf include other files from (the main
# files may hold sections too).
NGINX_FILES = ["/etc/nginx/nginx.conf", "/etc/nginx/conf.d/*.conf", "/etc/nginx/sites-enabled/*"]
SUPERVISOR_FILES = ["/etc/supervisor/supervisord.conf", "/etc/supervisor/conf.d/*.conf"]


def ancestors(path: str) -> list[str]:
    """'/srv/shop' -> ['/', '/srv']."""
    parts = path.strip("/").split("/")[:-1]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


# Every path the decision looks at: the app's top directories, their parents, the files.
PATHS = sorted({p for d in TOP_DIRS for p in [*ancestors(d), d]} | {*FILES, *LINEAGE, ENABLED})


def read_facts(remote: Remote) -> dict:
    """Everything the decision needs; paths and files as Remote.prefetch read them (the
    provisioning's one read includes PATHS), the rest in one run of eep/host/claims.py."""
    if not all(remote.is_known(p) for p in PATHS):
        remote.prefetch(PATHS, FILES + list(LINEAGE))
    # None: missing, or not readable by this account (the audit as the deploy account).
    contents = {p: remote.read(p) for p in FILES + list(LINEAGE)}
    texts = {p: None if c is None else c.decode(errors="replace") for p, c in contents.items()}
    request = {
        "accounts": [app.RUNTIME_USER, app.DEPLOY_USER],
        "group": app.RUNTIME_USER,
        "link": ENABLED,
        "supervisor": SUPERVISOR_FILES,
        "nginx": NGINX_FILES,
    }
    out = remote.run_script("claims", request, changes=False)
    if out.exited != 0:
        raise HostError(f"cannot read the host's names and paths: {out.stderr.strip()[-200:]}")
    return {**json.loads(out.stdout), "paths": {p: remote.stat(p) for p in PATHS}, "texts": texts}


def supervisor_sections(text: str) -> list[str]:
    """Program and group names of a supervisor config: '[program:x]' -> 'x'."""
    return re.findall(
        r"(?m)^\s*\[(?:program|fcgi-program|eventlistener|group):([^\]\s]+)\s*\]", text
    )


def nginx_claims(text: str) -> tuple[set[str], set[str]]:
    """(server names, upstream names) an nginx config file declares."""
    text = re.sub(r"#[^\n]*", "", text)
    names = {n.lower() for m in re.findall(r"\bserver_name\s+([^;]*);", text) for n in m.split()}
    return names, set(re.findall(r"\bupstream\s+(\S+)\s*\{", text))


def tmpfiles_entries(text: str) -> list[tuple[str, str]]:
    """(config file, path) of every line of `systemd-tmpfiles --cat-config`."""
    entries, source = [], "?"
    for line in text.splitlines():
        if header := re.fullmatch(r"# (/\S+\.conf)", line.strip()):
            source = header.group(1)
        elif line.strip() and not line.lstrip().startswith("#") and len(line.split()) > 1:
            entries.append((source, line.split()[1]))
    return entries


def _under(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in dirs)


def _group_is_ours(facts: dict) -> bool:
    """The group exists as the primary group of the runtime account eep marked."""
    runtime, group = facts["accounts"][app.RUNTIME_USER], facts["group"]
    return bool(group and runtime and runtime[0] == MARK and runtime[1] == group[0])


def _accounts_and_group(facts: dict) -> list[str]:
    problems = [
        f"user {name} exists and was not made by eep for this app"
        for name, entry in facts["accounts"].items()
        if entry and entry[0] != MARK
    ]
    if facts["group"] and not _group_is_ours(facts):
        problems.append(f"group {app.RUNTIME_USER} exists and was not made by eep for this app")
    return problems


def _paths(facts: dict) -> list[str]:
    problems = []
    stats = facts["paths"]
    for top in TOP_DIRS:
        for parent in ancestors(top):
            have = stats[parent]
            if have is None:
                continue
            open_to = 0o002 if parent in GROUP_WRITABLE_PARENTS else 0o022
            if have.kind != "directory" or have.owner != "root" or have.open_to(open_to):
                problems.append(
                    f"{parent} ({have}) is not a directory"
                    f" only root can change; {top} below it could be swapped"
                )
        have = stats[top]
        # Only root can give a directory to the app's group: one that has it is eep's.
        ours = have and have.kind == "directory" and have.group == app.RUNTIME_USER
        if have and not (ours and _group_is_ours(facts)):
            problems.append(f"{top} exists ({have.ownership}) and is not eep's")
    for path in FILES:
        have = stats[path]
        text = facts["texts"][path]
        # An unreadable file (the audit as the deploy account) is judged by root's run only.
        if have and (have.kind != "regular file" or text is not None and not MARKER.match(text)):
            problems.append(f"{path} exists and was not written by eep")
    for path, mark in LINEAGE.items():
        text = facts["texts"].get(path)
        if (
            stats.get(path)
            and text is not None
            and not re.search(rf"(?m)^{re.escape(mark)},?$", text)
        ):
            problems.append(f"certbot's certificate {app.SLUG} ({path}) was not issued by eep")
    if stats[ENABLED] and facts["link"] != host_file("config/nginx.conf").path:
        problems.append(f"{ENABLED} exists and is not eep's link to the app's site")
    return problems


def _other_claims(facts: dict) -> list[str]:
    """Names and paths that another program, site or tmpfiles.d file already uses."""
    problems = []
    # The app's program, and with Celery its broker's (a file of its own: eep/manifest.py).
    programs = ("config/supervisor.conf", "config/supervisor-broker.conf")
    own_conf = {f.path for f in HOST_FILES if f.source in programs}
    for path, text in facts["supervisor"]:
        for name in supervisor_sections(text):
            if path not in own_conf and name in PROGRAMS:
                problems.append(f"supervisor program {name} is already defined in {path}")
    own_site = {host_file("config/nginx.conf").path, ENABLED}
    wanted = {d.lower() for d in app.DOMAINS}
    for path, text in facts["nginx"]:
        if path in own_site:
            continue
        names, upstreams = nginx_claims(text)
        for name in sorted(names & wanted):
            problems.append(f"server name {name} is already served by {path}")
        if f"eep_{app.SLUG}" in upstreams:
            problems.append(f"nginx upstream eep_{app.SLUG} is already defined in {path}")
    own_tmpfiles = host_file("config/tmpfiles.conf").path
    for source, path in tmpfiles_entries(facts["tmpfiles"]):
        if source != own_tmpfiles and _under(path, TOP_DIRS):
            problems.append(f"{path} is also managed by {source} (systemd-tmpfiles)")
    return problems


def adoption_problems(facts: dict) -> list[str]:
    """Why provisioning must not go on: each a sentence naming what is not eep's."""
    problems = []
    if app.SLUG in CTL_KEYWORDS:
        problems.append(f"{app.SLUG!r} is a supervisorctl keyword (stop {app.SLUG} = every app)")
    problems += _accounts_and_group(facts) + _paths(facts) + _other_claims(facts)
    return list(dict.fromkeys(problems))  # parents shared by several directories: once


def membership_problems(facts: dict) -> list[str]:
    """The app group's members beyond its two accounts (primary) and nginx (supplementary)."""
    if not facts["group"]:
        return [f"group {app.RUNTIME_USER} is missing"]
    problems = []
    primary = set(facts["primary"]) - {app.RUNTIME_USER, app.DEPLOY_USER}
    if primary:
        names = ", ".join(sorted(primary))
        problems.append(f"group {app.RUNTIME_USER} is the primary group of {names}")
    if set(facts["group"][1]) != {"www-data"}:
        members = ", ".join(sorted(facts["group"][1])) or "none"
        problems.append(f"group {app.RUNTIME_USER}'s members are {members}, not www-data alone")
    return problems


def refusal(problems: list[str]) -> str:
    """One line for the user: the first problem, and how many more."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"refusing to take over what eep did not create: {problems[0]}{more}"


def check_claims(remote: Remote, report: Report) -> None:
    """Refuse, before any change, to take over a name or path eep did not make for this app."""
    problems = adoption_problems(read_facts(remote))
    if problems:
        raise HostError(refusal(problems))
    report.unchanged("names and paths", "free, or made by eep for this app")
