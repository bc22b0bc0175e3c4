"""`invoke audit`: check a live host against the threat model, one PASS/FAIL line per check.

Run as root (or a sudo admin) every check runs in full; run as the deploy account,
the parts that need root (reading the sudoers file, `visudo -c`) are left out and
the line says so. Nothing on the host is changed. The drift check uses
`files.file_difference()`, the comparison provisioning acts on, against
`manifest.render()`, the source provisioning installs from.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

import paramiko

from eep import app, broker, database, tls
from eep.accounts import group_members
from eep.claims import TOP_DIRS, adoption_problems, membership_problems, read_facts
from eep.files import file_difference
from eep.fleet import single_host
from eep.layout import (
    APP_FILES,
    MAINTENANCE_FLAG,
    MAINTENANCE_FLAG_STATE,
    RUN_DIRECTORIES,
    directories_for,
)
from eep.manifest import (
    BROKER_PORT,
    BROKER_SECRET,
    HOST_FILES,
    RETIRED_FILES,
    Place,
    files_for,
    host_file,
)
from eep.nginx import ENABLED
from eep.pathstate import PathState
from eep.remote import Remote, Target, known_hosts_path
from eep.report import say
from eep.sudoers import rules as sudo_rules

if TYPE_CHECKING:
    from eep.fleet import Fleet, FleetHost

UWSGI_BINARY = "/usr/bin/uwsgi-core"


@dataclass
class Check:
    name: str
    status: str  # PASS or FAIL
    detail: str = ""


class Audit:
    """The checks of one host; each appends one Check."""

    def __init__(self, remote: Remote, as_root: bool, place: Place) -> None:
        self.remote = remote
        self.as_root = as_root
        self.place = place  # the host's fleet, and itself: the roles it is checked for
        self.fleet, self.host = place  # files made from eep.hosts are rendered for them
        self.checks: list[Check] = []

    def record(self, name: str, problems: list[str], passed: str = "") -> None:
        if problems:
            self.checks.append(Check(name, "FAIL", "; ".join(problems)))
        else:
            self.checks.append(Check(name, "PASS", passed))

    def sh(self, command: str) -> str:
        return self.remote.run(command, check=False, changes=False).stdout

    def id_of(self, user: str) -> int:
        return int(self.sh(f"id -u {user}").strip() or -1)

    # -- the checks ---------------------------------------------------------------------

    def processes(self) -> None:
        uid, gid = self.id_of(app.RUNTIME_USER), int(self.sh(f"id -g {app.RUNTIME_USER}") or -1)
        marks = [app.CONF_DIR + "/", app.RUN_DIR + "/", app.APP_ROOT + "/"]
        # Every process of the app (eep/host/processes.py), with its uids and gids.
        out = self.remote.run_script("processes", [marks, uid], changes=False).stdout
        found = json.loads(out or "[]")
        wrong = [
            f"pid {pid} uids {','.join(map(str, uids))}: {' '.join(cmd.split())[:60]}"
            for pid, uids, gids, cmd in found
            if set(uids) != {uid} or set(gids) != {gid}
        ]
        if not found:
            wrong = ["no process of the app is running"]
        self.record(f"every process runs as {app.RUNTIME_USER}", wrong, f"{len(found)} processes")

    def socket(self) -> None:
        problems = []
        want = {
            app.SOCKET: PathState("socket", "www-data", app.RUNTIME_USER, 0o660),
            app.RUN_DIR: RUN_DIRECTORIES[app.RUN_DIR],
        }
        for path, expected in want.items():
            have = self.remote.stat(path)
            if have != expected:
                problems.append(f"{path} is {have or 'missing'}")
        # Group members reach the socket: only nginx may be one, besides the app's accounts.
        extra = sorted((group_members(self.remote, app.RUNTIME_USER) or set()) - {"www-data"})
        if extra:
            problems.append(f"group {app.RUNTIME_USER} also has {', '.join(extra)}")
        self.record("web socket 0660 www-data, only nginx and the app reach it", problems)

    def _writable_by(self, user: str, paths: list[str]) -> list[str]:
        """Paths (recursively) that `user` could write through owner, group or other bits."""
        group = self.sh(f"id -gn {user}").strip()
        quoted = " ".join(shlex.quote(p) for p in paths)
        found = self.sh(
            f"find {quoted} ! -type l \\( -user {user} -o -group {group} -perm -g=w"
            " -o -perm -o=w \\) -print 2>/dev/null | head -5"
        )
        return found.split()

    def read_only_code(self) -> None:
        # Everything in the app root but shared/ is code or runs code: releases, venvs (a
        # rollback runs them), `current`, the deploy agent and uploads in .eep, the pip
        # cache. None of it may belong to the app or be writable by a group or others.
        found = self.sh(
            f"find {app.APP_ROOT} -path {app.SHARED_DIR} -prune -o ! -type l"
            f" \\( -user {app.RUNTIME_USER} -o -perm /g=w,o=w \\) -printf '%u %m %p\\n'"
            " 2>/dev/null | head -5"
        )
        problems = []
        for line in found.splitlines():
            owner, mode, path = line.split(" ", 2)
            why = (
                f"belongs to {owner}"
                if owner == app.RUNTIME_USER
                else f"is writable by its group or others (mode {mode})"
            )
            problems.append(f"{path} {why}")
        configs = [app.CONF_DIR, UWSGI_BINARY, *(f.path for f in HOST_FILES)]
        for user in (app.RUNTIME_USER, app.DEPLOY_USER):
            problems += [f"{user} can write {path}" for path in self._writable_by(user, configs)]
        current = self.sh(f"readlink -e {app.CURRENT}").strip()
        passed = "" if current else "no release deployed yet"
        self.record("the app cannot change its code, venv, uwsgi.ini or config", problems, passed)

    def modes(self) -> None:
        problems = []
        for path, want in directories_for(self.place[0]).items():
            have = self.remote.stat(path)
            if have != want:
                problems.append(f"{path} is {have or 'missing'}")
        for path, want in APP_FILES.items():
            have = self.remote.stat(path)
            if have and have != want:
                problems.append(f"{path} is {have}, not {want}")
        for path in TOP_DIRS:
            have = self.remote.stat(path)
            if have and have.open_to(0o007):
                problems.append(f"{path} is open to others ({have.mode:04o})")
        opened = self.sh(
            f"find {app.APP_ROOT} ! -type l -perm /o=w -print 2>/dev/null | head -3"
        ).split()
        problems += [f"{p} is writable by others" for p in opened]
        flag = self.remote.stat(MAINTENANCE_FLAG)  # present only in maintenance mode
        if flag is not None and flag != MAINTENANCE_FLAG_STATE:
            problems.append(f"{MAINTENANCE_FLAG} is {flag}, not {MAINTENANCE_FLAG_STATE}")
        self.record("directories as provisioned, nothing for others", problems)

    def no_setuid(self) -> None:
        found = self.sh(
            f"find {app.RELEASES_DIR} {app.APP_ROOT}/venvs ! -type l -perm /6000 -print"
            " 2>/dev/null | head -5"
        ).split()
        self.record("no setuid/setgid file in releases or venvs", [f"{p}" for p in found])

    def sudoers(self) -> None:
        name = f"sudo rules of {app.DEPLOY_USER} literal, for this app only"
        path = host_file("config/sudoers").path
        problems = []
        have = self.remote.stat(path)
        if have != host_file("config/sudoers").state:
            problems.append(f"{path} is {have or 'missing'}")
        if self.as_root:
            check = self.remote.run("visudo -c", check=False, changes=False)
            if check.exited != 0:
                lines = (check.stderr or check.stdout).strip().splitlines()
                problems.append(f"visudo -c fails: {lines[-1] if lines else '?'}")
            listing = self.sh(f"sudo -l -U {app.DEPLOY_USER}")
            runtime = self.sh(f"sudo -l -U {app.RUNTIME_USER}")
            if "not allowed" not in runtime:
                problems.append(f"{app.RUNTIME_USER} has sudo rules")
        else:
            listing = self.sh("sudo -n -l")
        problems += unexpected_rules(listing)
        self.record(name, problems, "" if self.as_root else "visudo -c not run (needs root)")

    def drift(self) -> None:
        files = files_for(*self.place)
        paths = [f.path for f in files]
        self.remote.prefetch(paths + RETIRED_FILES, paths)
        problems, unread = [], []
        for entry in files:
            content = self.remote.read(entry.path)
            if self.remote.stat(entry.path) is None:
                problems.append(f"{entry.path} missing")
            elif content is None:
                unread.append(entry.path)  # exists, but this account may not read it
            elif why := file_difference(self.remote, entry, content, place=self.place):
                problems.append(f"{entry.path} differs from {entry.source} ({why})")
        problems += [
            f"{path} is left from an earlier version of this tree (provision removes it)"
            for path in RETIRED_FILES
            if self.remote.stat(path) is not None
        ]
        # sshd also reads authorized_keys2: the tree's key file must be the only one.
        ssh_dir = f"/home/{app.DEPLOY_USER}/.ssh"
        extra = sorted(set(self.sh(f"ls -A {ssh_dir}").split()) - {"authorized_keys"})
        problems += [f"{ssh_dir}/{name} is not from the tree" for name in extra]
        link = self.sh(f"readlink {ENABLED}").strip()
        if self.host.has("web") and link != host_file("config/nginx.conf").path:
            problems.append(f"{ENABLED} is not the app's site")
        passed = f"not readable without root: {', '.join(unread)}" if unread else ""
        self.record("config matches the tree (no drift)", problems, passed)

    def ownership(self) -> None:
        """What provisioning refuses to take over: the app's names and paths are eep's."""
        facts = read_facts(self.remote)
        problems = adoption_problems(facts) + membership_problems(facts)
        self.record("the app's names and paths are eep's, claimed by nothing else", problems)

    def services(self) -> None:
        problems = []
        services = ("nginx", "supervisor") if self.host.has("web") else ("supervisor",)
        for service in services:
            enabled = self.sh(f"systemctl is-enabled {service}").strip()
            active = self.sh(f"systemctl is-active {service}").strip()
            if (enabled, active) != ("enabled", "active"):
                problems.append(f"{service} is {enabled or '?'}/{active or '?'}")
        self.record(f"{' and '.join(services)} enabled at boot and running", problems)

    def host_key(self) -> None:
        # Where SSH really connected (an ~/.ssh/config alias resolved), as known_hosts names it.
        host, port = self.remote.conn.host, self.remote.conn.port
        name = host if port in (None, 22) else f"[{host}]:{port}"
        offered = self.remote.conn.client.get_transport().get_remote_server_key()
        pinned: dict[str, paramiko.PKey] = {}
        if known_hosts_path().exists():
            pinned = dict(paramiko.HostKeys(str(known_hosts_path())).lookup(name) or {})
        ok = pinned.get(offered.get_name()) == offered
        problem = [] if ok else [f"{name} {offered.fingerprint} is not in the tree's known_hosts"]
        self.record("host key pinned in the tree", problem, offered.fingerprint)

    def postgresql(self) -> None:
        """database=postgresql: only the app reaches its database, and without a password."""
        name = f"only {app.RUNTIME_USER} reaches PostgreSQL database {database.NAME}, no password"
        if not self.as_root:  # psql runs as postgres
            self.record(name, [], "not checked (needs root)")
            return
        self.record(name, database.audit_problems(self.remote))

    def https(self) -> None:
        """The served certificate has a third of its lifetime left; every key (and the
        ACME client's state) is root's alone; renewal is scheduled."""
        text, fresh = tls.describe(self.remote)
        self.record("certificate served on 443", [] if fresh else [text], text)
        if not self.as_root:
            self.record("TLS keys root's alone", [], "not checked (needs root)")
            return
        # Keys and certbot's state: any file or directory others (or a group) may read.
        dirs = [tls.TLS_DIR] + (
            ["/etc/letsencrypt/archive", "/etc/letsencrypt/live", "/etc/letsencrypt/accounts"]
            if app.TLS == "acme"
            else []
        )
        found = self.sh(
            f"find -L {tls.TLS_DIR} -name '*.key' -o -name 'key.pem' -o -path {tls.PEM}"
            " 2>/dev/null;"
            f" find {' '.join(dirs)} -maxdepth 0 2>/dev/null"
            + (
                " ; find /etc/letsencrypt/archive -name 'privkey*' 2>/dev/null"
                if app.TLS == "acme"
                else ""
            )
        ).split()
        problems = []
        for path in sorted(set(found)):
            meta = self.sh(f"stat -L -c '%U %a' {shlex.quote(path)}").split()
            if len(meta) == 2 and (meta[0] != "root" or int(meta[1], 8) & 0o077):
                problems.append(f"{path} is {meta[0]} {meta[1]}, not root's alone")
        self.record("TLS keys root's alone", problems, f"{len(found)} checked")
        if app.TLS == "acme":
            state = self.sh(f"systemctl is-enabled {tls.TIMER}").strip()
            self.record(
                "certificate renewal scheduled",
                [] if state == "enabled" else [f"{tls.TIMER} is {state or 'absent'}"],
                tls.TIMER,
            )

    def broker_secret(self) -> None:
        """Several hosts: the broker's password, root's to write, the app's to read."""
        have = self.remote.stat(BROKER_SECRET)
        problem = [] if have == broker.SECRET_STATE else [f"{BROKER_SECRET} is {have or 'missing'}"]
        self.record(f"broker password {broker.SECRET_STATE.ownership}", problem)

    def broker_network(self) -> None:
        """Several hosts, on the broker host: Redis listens on the private address alone,
        its firewall rule is loaded and loaded again at boot."""
        private = self.place[0].broker.private if self.place[0].broker else ""
        listening = self.sh("ss -Hltn").split("\n")
        found = [
            line.split()[3]
            for line in listening
            if len(line.split()) > 3 and line.split()[3].rsplit(":", 1)[-1] == str(BROKER_PORT)
        ]
        problems = [
            f"the broker listens on {where}"
            for where in found
            if where != f"{private}:{BROKER_PORT}"
        ]
        if not found:
            problems.append(f"nothing listens on {private}:{BROKER_PORT}")
        self.record(f"broker listens on {private}:{BROKER_PORT} only", problems)
        problems = []
        if self.as_root:
            rules = self.sh(f"nft list table {broker.FIREWALL_TABLE}")
            if "@app_hosts" not in rules:
                problems.append(f"table {broker.FIREWALL_TABLE} is not loaded")
        enabled = self.sh(f"systemctl is-enabled {broker.FIREWALL_UNIT}").strip()
        if enabled != "enabled":
            problems.append(f"{broker.FIREWALL_UNIT} is {enabled or 'absent'}")
        passed = "" if self.as_root else "rules not read (needs root)"
        self.record("broker port open to the app's hosts only (firewall)", problems, passed)

    def run_all(self) -> list[Check]:
        fleet, host = self.place
        self.processes()
        self.socket()
        self.read_only_code()
        self.modes()
        self.no_setuid()
        self.sudoers()
        self.drift()
        self.ownership()
        self.services()
        self.host_key()
        if database.ENABLED:
            self.postgresql()
        if app.TLS != "none" and host.has("web") and not fleet.lb:  # else: at the lb host
            self.https()
        if broker.needs_secret(fleet):
            self.broker_secret()
            if host.has("broker"):
                self.broker_network()
        return self.checks


def unexpected_rules(listing: str, expected: set[str] | None = None) -> list[str]:
    """Problems in a `sudo -l` listing of the deploy account: any rule but the literal ones
    (`expected`; by default those of config/sudoers)."""
    expected = expected if expected is not None else {command for _, command in sudo_rules()}
    rules = listing.split("may run the following commands", 1)[-1]
    rules = re.sub(r",\s*\n\s*", ", ", rules)
    found = set()
    for line in rules.splitlines():
        match = re.match(r"\s*\((\w+)\)\s*(?:\w+:\s*)*(.*)$", line)
        if match:
            found |= {f"{command.strip()}" for command in match.group(2).split(", ")}
    return [f"unexpected sudo rule: {rule}" for rule in sorted(found - expected)]


def audit(
    spec: str, *, identity: str = "", fleet: Fleet | None = None, host: FleetHost | None = None
) -> bool:
    """Print the table for one host (`host` of `fleet`, if any: checked for its roles;
    otherwise a host of its own, every role); True when every check passed."""
    target = Target.parse(spec, default_user="root")
    as_root = target.user != app.DEPLOY_USER
    if fleet is None or host is None:  # a host of its own: every role
        fleet = single_host(spec)
        host = fleet.hosts[0]
    place = (fleet, host)
    label = str(target) if place[0].single else place[1].name
    remote = Remote(target, identity=identity, become_root=as_root)
    remote.open()
    try:
        checker = Audit(remote, as_root, place)
        if place[1].has("lb"):
            from eep import balancer  # imports this module

            balancer.audit_checks(checker, place[0])
            checks = checker.checks
        else:
            checks = checker.run_all()
    finally:
        remote.close()
    for check in checks:
        say(
            f"[{label}] {check.status:<5} {check.name}"
            + (f": {check.detail}" if check.detail else "")
        )
    failed = sum(check.status == "FAIL" for check in checks)
    say(f"[{label}] audit: {len(checks) - failed} passed, {failed} failed")
    return not failed
