"""HTTPS: the certificate served, self-signed until (with tls=acme) certbot issues one.

Two links, cert.pem and key.pem in TLS_DIR, point either at the self-signed pair made
here or at certbot's live pair. On a host of its own nginx reads them; with a load
balancer HTTPS ends at HAProxy on the lb host (`lb=True` below), which reads one file
made from them (PEM: chain and key) and lets certbot answer the ACME challenge itself.
Only root reads or writes any of it; certbot renews from its own timer and reloads the
server through its deploy hook.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime

from eep import app
from eep.remote import HostError, Remote
from eep.report import Report

TLS_DIR = f"/etc/eep-tls/{app.SLUG}"
CERT, KEY = f"{TLS_DIR}/cert.pem", f"{TLS_DIR}/key.pem"
SELF_SIGNED = (f"{TLS_DIR}/self-signed.crt", f"{TLS_DIR}/self-signed.key")
ACME_LIVE = f"/etc/letsencrypt/live/{app.SLUG}"
ACME_PAIR = (f"{ACME_LIVE}/fullchain.pem", f"{ACME_LIVE}/privkey.pem")
WEBROOT = f"/var/lib/eep-acme/{app.SLUG}"
# certbot's record of the certificate: names its webroot, directory, account and hook.
RENEWAL = f"/etc/letsencrypt/renewal/{app.SLUG}.conf"
TIMER = "certbot.timer"
# What nginx reloads with after certbot renewed: stored by certbot in its renewal file
# under /etc/letsencrypt (root's), never a script anyone else can write.
DEPLOY_HOOK = "systemctl reload nginx"
# The lb host: HAProxy's one file, the certificate with its chain, then the key (0600),
# rebuilt from the links (written beside and renamed: HAProxy never reads half of one) ...
PEM = f"{TLS_DIR}/haproxy.pem"
PEM_BUILD = f"umask 077 && cat {CERT} {KEY} > {PEM}.new && mv -f {PEM}.new {PEM}"
# ... by certbot after each renewal too, then a graceful reload (new workers, new file).
# Through sh: certbot wants the hook's first word to be a program.
LB_DEPLOY_HOOK = "sh -c " + shlex.quote(f"{PEM_BUILD} && systemctl reload haproxy")
# There certbot answers the http-01 challenge itself (--standalone), on this local port
# only while it asks for a certificate; HAProxy sends the challenge path to it.
ACME_PORT = 8402


def _links(remote: Remote) -> tuple[str, str]:
    out = remote.run(f"readlink {CERT}; echo; readlink {KEY}", check=False, changes=False)
    cert, _, key = out.stdout.partition("\n\n")
    return cert.strip(), key.strip()


def _point_links(remote: Remote, report: Report, pair: tuple[str, str], what: str) -> bool:
    """cert.pem and key.pem -> `pair`; whether they changed."""
    if _links(remote) == pair:
        report.unchanged("certificate", f"in use: {what}")
        return False
    if report.change("certificate", f"now in use: {what}"):
        remote.run(f"ln -sfn {pair[0]} {CERT} && ln -sfn {pair[1]} {KEY}")
    return True


def ensure_pem(remote: Remote, report: Report) -> bool:
    """The lb host: HAProxy's PEM holds the pair the links point at, root's alone; whether
    it changed (HAProxy must then reload)."""
    same = remote.run(
        f"cat {CERT} {KEY} | cmp -s - {PEM} && stat -c '%U:%G %a' {PEM}",
        check=False,
        changes=False,
    )
    if same.exited == 0 and same.stdout.strip() == "root:root 600":
        report.unchanged("haproxy certificate", PEM)
        return False
    if report.change("haproxy certificate", f"{PEM} from {_links(remote)[0] or '?'}"):
        remote.run(PEM_BUILD)
    return True


def ensure_self_signed(remote: Remote, report: Report) -> None:
    """The self-signed pair (made once, by root, the key 0600) and, when no ACME certificate
    is in use yet, the links to it: the site is served over HTTPS from the first provision."""
    cert, key = SELF_SIGNED
    out = remote.run(
        f"test -s {cert} -a -s {key} && openssl x509 -in {cert} -noout -ext subjectAltName",
        check=False,
        changes=False,
    )
    have = san_names(out.stdout) if out.exited == 0 else []
    if have == app.DOMAINS:
        report.unchanged("self-signed certificate", cert)
    elif report.change(
        "self-signed certificate", f"made {cert}" + (" (new names)" if have else "")
    ):
        names = ",".join(f"DNS:{name}" for name in app.DOMAINS)
        # Written beside and renamed: never a half-written pair.
        remote.run(
            "umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
            f" -days 3650 -subj /CN={app.DOMAINS[0]} -addext subjectAltName={names}"
            f" -keyout {key}.new -out {cert}.new 2>/dev/null"
            f" && mv -f {key}.new {key} && mv -f {cert}.new {cert}"
        )
    if app.TLS == "acme" and _links(remote)[0] == ACME_PAIR[0]:
        return
    _point_links(remote, report, SELF_SIGNED, "self-signed")


def certbot_command(lb: bool = False) -> str:
    """certbot's command for the app's certificate: on the lb host (`lb`) it answers the
    challenge on ACME_PORT, elsewhere nginx serves the tokens it writes in WEBROOT."""
    domains = " ".join(f"-d {shlex.quote(name)}" for name in app.DOMAINS)
    challenge = (
        f"--standalone --http-01-address 127.0.0.1 --http-01-port {ACME_PORT}"
        if lb
        else f"--webroot --webroot-path {WEBROOT}"
    )
    contact = f"--email {shlex.quote(app.ACME_EMAIL)}" if app.ACME_EMAIL else ""
    contact = contact or "--register-unsafely-without-email"
    return (
        f"certbot certonly --non-interactive --agree-tos {contact}"
        f" --server {shlex.quote(app.ACME_DIRECTORY)} --cert-name {app.SLUG}"
        f" {challenge} {domains}"
        f" --deploy-hook {shlex.quote(LB_DEPLOY_HOOK if lb else DEPLOY_HOOK)}"
    )


def failure_line(output: str) -> str:
    """The one line of certbot's output that says why it failed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for marker in ("Detail:", "Error:", "Failed to", "Max retries", "Connection", "Unable to"):
        found = [line for line in lines if marker in line]
        if found:
            return found[0][:200]
    return (lines[-1] if lines else "no output")[:200]


def held(remote: Remote) -> tuple[list[str], str] | None:
    """(DNS names, ACME directory) of the certificate certbot holds for this app; None
    without one. Both read from root's files: the certificate and certbot's renewal file."""
    out = remote.run(
        f"test -s {ACME_PAIR[0]} && openssl x509 -in {ACME_PAIR[0]} -noout -ext subjectAltName"
        f" && grep -h '^server = ' {RENEWAL}",
        check=False,
        changes=False,
    )
    if out.exited != 0 and not san_names(out.stdout):
        return None
    server = re.search(r"(?m)^server = (\S+)", out.stdout)
    return san_names(out.stdout), server.group(1) if server else "?"


def reissue_reason(names: list[str], server: str) -> str:
    """Why the certificate certbot holds no longer fits the tree's answers; "" if it does."""
    if {n.lower() for n in names} != {d.lower() for d in app.DOMAINS}:
        return f"it was for {' '.join(names)}"
    if server != app.ACME_DIRECTORY:
        return f"it came from {server}"
    return ""


def _certbot(remote: Remote, command: str, kept: str) -> None:
    done = remote.run(command + " 2>&1", check=False)
    if done.exited != 0:
        raise HostError(
            f"the ACME server did not issue a certificate; the site keeps being served with"
            f" {kept} (re-run provision to retry): {failure_line(done.stdout)}"
        )


def _use(remote: Remote, report: Report, lb: bool) -> None:
    """The links just moved to the ACME pair: the server checks it, then serves it."""
    if lb:
        ensure_pem(remote, report)
        remote.run("systemctl reload haproxy")
        report.change("haproxy", "reloaded with the ACME certificate")
        return
    test = remote.run("nginx -t", check=False)
    if test.exited != 0:
        remote.run(f"ln -sfn {SELF_SIGNED[0]} {CERT} && ln -sfn {SELF_SIGNED[1]} {KEY}")
        raise HostError("nginx -t refused the ACME certificate; the self-signed one is kept")
    remote.run("systemctl reload nginx")
    report.change("nginx", "reloaded with the ACME certificate")


def ensure_acme(remote: Remote, report: Report, *, lb: bool = False) -> None:
    """After the challenge path answers (nginx, or HAProxy on the lb host: `lb`): a
    certificate issued once for the tree's names and ACME directory (again when either
    changed), renewed by certbot.timer; the server switched to it and reloaded."""
    if app.TLS != "acme":
        return
    timer = remote.run(f"systemctl is-enabled {TIMER}", check=False, changes=False)
    if timer.stdout.strip() == "enabled":
        report.unchanged(f"renewal {TIMER}", "enabled")
    elif report.change(f"renewal {TIMER}", "enabled"):
        remote.run(f"systemctl enable --now {TIMER}")
    have = held(remote)
    names = " ".join(app.DOMAINS)
    if have is None:
        if report.change("acme certificate", f"issuing from {app.ACME_DIRECTORY}"):
            _certbot(remote, certbot_command(lb), "the self-signed one")
    elif why := reissue_reason(*have):
        # The same certificate name, the new names: certbot replaces the lineage's
        # certificate (and records the directory), so the old names leave it.
        if report.change("acme certificate", f"re-issued for {names} ({why})"):
            command = certbot_command(lb) + " --renew-with-new-domains --force-renewal"
            _certbot(remote, command, "the previous one")
            remote.run(LB_DEPLOY_HOOK if lb else DEPLOY_HOOK)
    else:
        report.unchanged("acme certificate", f"{ACME_LIVE}, for {names}")
    # --check: said what it would do; nothing was issued to switch to.
    if _point_links(remote, report, ACME_PAIR, f"ACME ({ACME_LIVE})") and not report.check:
        _use(remote, report, lb)


# -- reading the certificate nginx serves (status and audit) ----------------------------

SERVED = (
    f"openssl s_client -connect 127.0.0.1:443 -servername {app.DOMAINS[0]} </dev/null"
    " 2>/dev/null | openssl x509 -noout -issuer -startdate -enddate -dateopt iso_8601"
    " -ext subjectAltName"
)


def parse_served(out: str) -> tuple[str, datetime, datetime] | None:
    """(issuer, not before, not after) from SERVED's output; None without a certificate."""
    fields = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
    try:
        start, end = (
            datetime.strptime(fields[key].strip(), "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=UTC)
            for key in ("notBefore", "notAfter")
        )
    except (KeyError, ValueError):
        return None
    return fields.get("issuer", "?").strip(), start, end


def san_names(out: str) -> list[str]:
    """The DNS names of `openssl x509 -ext subjectAltName` output, in order."""
    return re.findall(r"DNS:([^,\s]+)", out)


def _span(seconds: float) -> str:
    """A lifetime in words: days, or seconds for the short-lived certificates of a test CA."""
    return f"{seconds / 86400:.0f}-day" if seconds >= 86400 else f"{seconds:.0f}-second"


def lifetime_left(start: datetime, end: datetime, now: datetime) -> float:
    """The share of the certificate's lifetime still ahead (0 when expired)."""
    total = (end - start).total_seconds()
    return max(0.0, (end - now).total_seconds() / total) if total > 0 else 0.0


def describe(remote: Remote) -> tuple[str, bool]:
    """What `status` and the audit say about the served certificate; whether it is healthy:
    present, and with at least a third of its lifetime left."""
    out = remote.run(SERVED, check=False, changes=False).stdout
    found = parse_served(out)
    if found is None:
        return "no certificate served on 443", False
    issuer, start, end = found
    now = datetime.now(UTC)
    left = lifetime_left(start, end, now)
    self_signed = "CN=" + app.DOMAINS[0] == issuer.replace(" ", "")
    when = f"{(end - now).days} days left" if now < end else f"expired {end:%Y-%m-%d %H:%M} UTC"
    text = f"issuer {issuer}, {when}" + (" (self-signed)" if self_signed else "")
    text += f", for {' '.join(san_names(out)) or '?'}"
    if 0 < left < 1 / 3:
        text += f", less than a third of its {_span((end - start).total_seconds())} lifetime left"
    return text, left >= 1 / 3
