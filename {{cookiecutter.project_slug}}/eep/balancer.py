"""The load balancer (the lb role of eep.hosts): HAProxy in front of the web hosts.

The lb host gets Debian's haproxy with config/haproxy.cfg (made from eep.hosts: one
server per web host, health-checked), the deploy account, and one root-owned script
(config/balancer.py) through which that account drains and re-enables web hosts at
HAProxy's runtime API, a socket only root opens. No app root, uWSGI or nginx. With
tls other than none, HTTPS ends here (eep/tls.py with lb=True): HAProxy serves the
certificate, certbot (tls=acme) answers its challenge behind HAProxy.

Other code (a rolling deploy) uses `backend_states()` and `set_backend()`, with a
`Remote` logged in as the deploy account on the lb host.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import TYPE_CHECKING

from eep import app, packages, tls
from eep.accounts import MARK, ensure_user
from eep.audit import Audit, unexpected_rules
from eep.files import ensure_dir, ensure_file, file_difference
from eep.layout import DIRECTORIES
from eep.manifest import LB_FILES, host_file
from eep.remote import HostError, Remote, Target
from eep.report import Report, say
from eep.sudoers import rules, visudo

if TYPE_CHECKING:
    from eep.fleet import Fleet

PACKAGES = ["haproxy", "sudo"] + [p for p in packages.PACKAGES if p in ("openssl", "certbot")]
SERVICE = "haproxy"
CONFIG = host_file("config/haproxy.cfg")
SCRIPT = host_file("config/balancer.py").path
SUDOERS = host_file("config/sudoers-lb")
# HAProxy's runtime API (config/haproxy.cfg), and the master's own CLI that Debian's unit
# opens (-S): each lets whoever connects change the balancer, so root's alone (connecting
# to a unix socket needs write permission on it).
ADMIN_SOCKET = "/run/eep-haproxy.sock"
MASTER_SOCKET = "/run/haproxy-master.sock"
# The deploy account's home and keys, and the directory of the script it runs.
HOME = f"/home/{app.DEPLOY_USER}"
DIRS = {path: DIRECTORIES[path] for path in ("/etc/eep", app.CONF_DIR, HOME, f"{HOME}/.ssh")}
if app.TLS != "none":  # the certificate HAProxy serves: root's alone
    DIRS |= {path: DIRECTORIES[path] for path in ("/etc/eep-tls", tls.TLS_DIR)}
# The first line of the configuration this app installs: another one is never replaced,
# unless it is the one Debian's package shipped (its checksum is dpkg's).
CONFIG_MARK = f"# eep: the load balancer of {app.SLUG} "
SHIPPED = "dpkg-query -W -f='${Conffiles}' " + SERVICE
ACCOUNTS = [f"getent passwd {user}" for user in (app.RUNTIME_USER, app.DEPLOY_USER)]
ACCOUNTS.append(f"getent group {app.RUNTIME_USER}")
READS = [packages.OS_RELEASE, packages.PYTHON_VERSION, packages.package_states(PACKAGES)]
READS += [*packages.service_state(SERVICE), SHIPPED, *ACCOUNTS]
STATES = ("drain", "ready")


# -- provisioning ------------------------------------------------------------------


def read_host(remote: Remote) -> None:
    """Everything the steps below read, in one round trip (see eep/provision.py)."""
    files = [entry.path for entry in LB_FILES]
    remote.prefetch([*files, *DIRS], files, READS)


def claim_problems(remote: Remote) -> list[str]:
    """What exists on the host and is not this app's: accounts, directories, the files."""
    problems = []
    entries = [remote.run(query, check=False, changes=False).stdout for query in ACCOUNTS]
    for user, entry in zip((app.RUNTIME_USER, app.DEPLOY_USER), entries, strict=False):
        if entry.strip() and entry.split(":")[4] != MARK:
            problems.append(f"user {user} exists and was not made by eep for this app")
    runtime, group = entries[0].strip(), entries[2].strip()
    if group and not (runtime and runtime.split(":")[3] == group.split(":")[2]):
        problems.append(f"group {app.RUNTIME_USER} exists and was not made by eep for this app")
    for path in (app.CONF_DIR, HOME) + ((tls.TLS_DIR,) if app.TLS != "none" else ()):
        have = remote.stat(path)
        if have and (have.kind != "directory" or have.group != app.RUNTIME_USER):
            problems.append(f"{path} exists ({have.ownership}) and is not eep's")
    renewal = remote.read(tls.RENEWAL) if app.TLS == "acme" else None
    if renewal is not None and f"http01_port = {tls.ACME_PORT}".encode() not in renewal:
        # certbot's certificate of the app's name, asked for by someone else.
        problems.append(f"certbot's certificate {app.SLUG} ({tls.RENEWAL}) was not issued by eep")
    sudoers = remote.read(SUDOERS.path)
    if sudoers is not None and not sudoers.startswith(b"# eep: "):
        problems.append(f"{SUDOERS.path} exists and was not written by eep")
    config = remote.read(CONFIG.path)
    if config is not None and not config.startswith(CONFIG_MARK.encode()):
        # Debian's own file, as its package shipped it, is replaced; anything else is not.
        shipped = remote.run(SHIPPED, check=False, changes=False).stdout.split()
        digest = shipped[shipped.index(CONFIG.path) + 1] if CONFIG.path in shipped else "-"
        if hashlib.md5(config).hexdigest() != digest:
            problems.append(
                f"{CONFIG.path} is neither Debian's nor this app's (edited, or another"
                " app's balancer); move it away if eep may replace it"
            )
    return problems


def ensure_config(remote: Remote, report: Report, fleet: Fleet, *, reload: bool = False) -> None:
    """HAProxy's configuration, live only once `haproxy -c` accepts it, then a graceful
    reload (also when `reload`: its certificate changed)."""

    def haproxy_check(temp: str) -> None:
        result = remote.run(f"haproxy -c -q -f {shlex.quote(temp)}", check=False)
        if result.exited != 0:
            lines = [line for line in (result.stderr + result.stdout).splitlines() if line]
            raise HostError(f"haproxy -c refused config/haproxy.cfg: {(lines or ['?'])[0]}")

    changed = ensure_file(remote, report, CONFIG, validate=haproxy_check, fleet=fleet)
    if (changed or reload) and not report.check:
        # Debian's unit checks the file again, then USR2 to the master: new workers take
        # new connections, the old ones finish theirs. Starts HAProxy if it was stopped.
        remote.run(f"systemctl reload-or-restart {SERVICE}")
        report.change(SERVICE, "reloaded")


def provision_lb(remote: Remote, report: Report, fleet: Fleet) -> None:
    """The lb host: HAProxy, the deploy account and its one script; nothing of the app."""
    read_host(remote)
    has_python = packages.check_system(remote, report)
    problems = claim_problems(remote) if has_python else []
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise HostError(f"refusing to take over what eep did not create: {problems[0]}{more}")
    packages.ensure_packages(remote, report, PACKAGES)
    packages.ensure_services(remote, report, [SERVICE])
    if not remote.has_facts():
        read_host(remote)
    # The deploy account's primary group is the app's, as on the app's hosts.
    ensure_user(remote, report, app.RUNTIME_USER, home=app.APP_ROOT, shell="/usr/sbin/nologin")
    ensure_user(remote, report, app.DEPLOY_USER, home=HOME, shell="/bin/bash")
    for path, want in DIRS.items():
        ensure_dir(remote, report, path, want)
    ensure_file(remote, report, host_file("config/authorized_keys"))
    ensure_file(remote, report, host_file("config/balancer.py"))  # before the rule naming it
    ensure_file(remote, report, SUDOERS, validate=visudo(remote, SUDOERS.source))
    pem_changed = False
    if app.TLS != "none":
        tls.ensure_self_signed(remote, report)  # HAProxy's PEM is made from it before
        pem_changed = tls.ensure_pem(remote, report)  # the configuration naming it
    ensure_config(remote, report, fleet, reload=pem_changed)
    tls.ensure_acme(remote, report, lb=True)  # after HAProxy sends the challenge to certbot


# -- the runtime API, for the deploy account ---------------------------------------


def _script(remote: Remote, verb: str, request: dict | None = None) -> dict:
    result = remote.run(
        f"sudo -n {SCRIPT} {verb}",
        stdin=json.dumps(request).encode() if request is not None else b"",
        check=False,
    )
    if result.exited != 0:
        lines = result.stderr.strip().splitlines() or [f"{SCRIPT} {verb}: exit {result.exited}"]
        raise HostError(lines[-1].removeprefix("error: "))
    return json.loads(result.stdout)


def backend_states(remote: Remote) -> dict[str, dict]:
    """Every web host behind the balancer, by its eep.hosts name: {"status": "UP" | "DOWN" |
    "DRAIN" | "MAINT" | ..., "check": HAProxy's last check result ("L7OK", ...),
    "check_code": its HTTP status, "sessions": requests running there now, "total":
    requests sent there since HAProxy started, "address": private address:port}."""
    return _script(remote, "state")


def set_backend(remote: Remote, server: str, state: str, *, timeout: float | None = None) -> dict:
    """Drain a web host (no new request; returns once its running requests are done, at
    most `timeout` s, by default longer than any request may run) or make it ready (it
    takes requests again once its health check passes). Returns its state afterwards."""
    if state not in STATES:
        raise HostError(f"a backend is set to drain or ready, not {state!r}")
    request: dict = {"server": server}
    if timeout is not None:
        request["timeout"] = timeout
    return _script(remote, state, request)


def describe(name: str, state: dict) -> str:
    """One line of `invoke status` for a web host behind the balancer."""
    check = state["check"] + (f" {state['check_code']}" if state["check_code"] else "")
    return (
        f"backend   {name:<14} {state['status']:<8} check {check or '-':<10}"
        f" {state['sessions']} running, {state['total']} since start"
    )


def status(spec: str, *, identity: str = "", name: str = "") -> dict:
    """Print the balancer's view of each web host; the lb host's row of the fleet's
    table: {"healthy": some web host takes requests, "release": "-", "health": a line}."""
    target = Target.parse(spec, default_user=app.DEPLOY_USER)
    remote = Remote(target, identity=identity, become_root=False)
    remote.open()
    try:
        states = backend_states(remote)
        certificate = tls.describe(remote) if app.TLS != "none" else None
    finally:
        remote.close()
    for server, state in states.items():
        say(f"[{name or target}] {describe(server, state)}")
    serving = [server for server, state in states.items() if state["status"].startswith("UP")]
    line = f"{len(serving)} of {len(states)} web hosts take requests"
    say(f"[{name or target}] balancer: {line}")
    if certificate:
        renew = "" if certificate[1] else " (RENEW SOON)"
        say(f"[{name or target}] https     {certificate[0]}{renew}")
    return {"healthy": bool(serving), "release": "-", "health": f"HAProxy: {line}"}


# -- the audit of the lb host --------------------------------------------------------


def audit_checks(audit: Audit, fleet: Fleet | None) -> None:
    """The checks of `invoke audit` on the lb host (eep/audit.py records and prints them)."""
    remote = audit.remote
    problems = []
    for path in (ADMIN_SOCKET, MASTER_SOCKET):
        have = remote.stat(path)
        if have is None or have.kind != "socket" or have.owner != "root" or have.open_to(0o022):
            problems.append(f"{path} is {have or 'missing'}: root alone must connect to it")
    audit.record("HAProxy's runtime API only root opens", problems)

    paths = [entry.path for entry in LB_FILES]
    remote.prefetch([*paths, *DIRS], paths)
    problems, unread = [], []
    for entry in LB_FILES:
        content = remote.read(entry.path)
        if remote.stat(entry.path) is None:
            problems.append(f"{entry.path} missing")
        elif content is None:
            unread.append(entry.path)
        elif why := file_difference(remote, entry, content, fleet):
            problems.append(f"{entry.path} differs from {entry.source} ({why})")
    problems += [
        f"{p} is {remote.stat(p) or 'missing'}" for p, w in DIRS.items() if remote.stat(p) != w
    ]
    passed = f"not readable without root: {', '.join(unread)}" if unread else ""
    audit.record("balancer config matches the tree (no drift)", problems, passed)

    audit.record("the app's names and paths on the balancer are eep's", claim_problems(remote))

    if audit.as_root:
        listing = audit.sh(f"sudo -l -U {app.DEPLOY_USER}")
        runtime = audit.sh(f"sudo -l -U {app.RUNTIME_USER}")
        problems = [] if "not allowed" in runtime else [f"{app.RUNTIME_USER} has sudo rules"]
    else:
        listing, problems = audit.sh("sudo -n -l"), []
    problems += unexpected_rules(listing, {command for _, command in rules(SUDOERS.source)})
    audit.record(f"sudo rules of {app.DEPLOY_USER}: {SCRIPT} state|drain|ready only", problems)

    enabled = audit.sh(f"systemctl is-enabled {SERVICE}").strip()
    active = audit.sh(f"systemctl is-active {SERVICE}").strip()
    wrong = (
        [] if (enabled, active) == ("enabled", "active") else [f"{SERVICE} is {enabled}/{active}"]
    )
    audit.record("haproxy enabled at boot and running", wrong)
    if app.TLS != "none":
        audit.https()  # the certificate HAProxy serves, its PEM and keys root's alone
    audit.host_key()
