"""HTTPS with tls=acme, proven offline: Pebble (Debian's ACME test server) runs on the
app's host itself, the domain resolves to the host through /etc/hosts.

Pebble's own HTTPS listener gets a certificate from a CA made here; that CA goes into the
host's trust store (test-only), so certbot verifies the directory as it would Let's
Encrypt's. Pebble's issuing root is fetched from its management endpoint; curl trusts it
with --cacert. One host for the module; the tests run in order.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime

import pytest
from e2e_support import (
    DIRECTORY,
    PEBBLE_SETUP,
    PEBBLE_START,
    ROOT_PEM,
    SHORT_LIVED,
    bake_tree,
    https_load_stats,
    start_https_load,
)
from test_deploy import build

pytestmark = pytest.mark.e2e

SLUG = "tls"
DOMAIN = f"{SLUG}.example.com"
LIVE = f"/etc/letsencrypt/live/{SLUG}"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return bake_tree(
        tmp_path_factory.mktemp("trees"),
        SLUG,
        tls="acme",
        acme_directory=DIRECTORY,
        acme_email=f"ops@{DOMAIN}",
        hsts="y",
    )


@pytest.fixture(scope="module")
def host(testhost_factory_module):
    host = testhost_factory_module("tls")
    host.run(PEBBLE_SETUP.format(domain=DOMAIN), timeout=900)
    return host


def app(tree, host, *args: str) -> subprocess.CompletedProcess:
    login = [
        "--host",
        f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}",
        "--identity",
        str(tree.deploy_key),
    ]
    return tree.invoke(args[0], *login, *args[1:])


def audit_as_root(tree, host) -> subprocess.CompletedProcess:
    spec = f"root@127.0.0.1:{host.ssh_port}"
    return tree.invoke("audit", "--host", spec, "--identity", str(host.key_path))


def curl(host, args: str) -> str:
    return host.run(f"curl -sS {args}", check=False).stdout


def served(host, fields: str, name: str = DOMAIN) -> str:
    return host.run(
        f"openssl s_client -connect 127.0.0.1:443 -servername {name} </dev/null 2>/dev/null"
        f" | openssl x509 -noout {fields}"
    ).stdout.strip()


def served_serial(host) -> str:
    return served(host, "-serial")


def served_lifetime(host) -> tuple[datetime, datetime]:
    dates = dict(
        line.split("=", 1)
        for line in served(host, "-startdate -enddate -dateopt iso_8601").split("\n")
    )
    start, end = (
        datetime.strptime(dates[key], "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=UTC)
        for key in ("notBefore", "notAfter")
    )
    return start, end


def test_acme_server_down_one_line_self_signed_served(tree, host, tmp_path_factory):
    done = tree.provision(host)
    assert done.returncode != 0, done.stdout
    failed = [line for line in (done.stdout + done.stderr).splitlines() if "FAILED:" in line]
    assert len(failed) == 1, done.stdout + done.stderr
    assert "the ACME server did not issue a certificate" in failed[0]
    assert "served with the self-signed one" in failed[0] and "Connection refused" in failed[0]
    deployed = app(
        tree, host, "deploy", "--release", str(build("v1", tmp_path_factory.mktemp("d")))
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    cert = f"/etc/eep-tls/{SLUG}/self-signed.crt"
    body = curl(host, f"--cacert {cert} -o /dev/null -w '%{{http_code}}' https://{DOMAIN}/health")
    assert body == "200"
    assert host.run(f"test -e {LIVE}", check=False).returncode != 0  # nothing half-written
    status = app(tree, host, "status")
    assert f"https     issuer CN = {DOMAIN}" in status.stdout and "(self-signed)" in status.stdout


def test_rerun_issues_and_serves_the_acme_certificate(tree, host):
    host.run(PEBBLE_START(unit="", config="config", port=15000))
    host.run(f"curl -sS https://localhost:15000/roots/0 -o {ROOT_PEM}")
    done = tree.provision(host)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"now in use: ACME ({LIVE})" in done.stdout
    page = curl(host, f"--cacert {ROOT_PEM} -i https://{DOMAIN}/health")
    assert page.startswith("HTTP/2 200"), page
    assert "strict-transport-security: max-age=31536000" in page.lower()
    again = tree.provision(host)
    assert again.returncode == 0 and " 0 changed" in again.stdout, again.stdout


def test_https_for_a_name_no_site_serves_gets_no_handshake(host):
    # -k: only a refused handshake fails here, not the certificate's verification.
    other = host.run(
        "curl -sSk --resolve other.example:443:127.0.0.1 https://other.example/", check=False
    )
    assert other.returncode == 35, other  # CURLE_SSL_CONNECT_ERROR: no certificate, no site
    assert "unrecognized name" in other.stderr, other.stderr
    page = curl(
        host, f"--cacert {ROOT_PEM} -o /dev/null -w '%{{http_code}}' https://{DOMAIN}/health"
    )
    assert page == "200"


def test_http_redirects_except_the_challenge_path(host):
    redirect = curl(host, f"-o /dev/null -w '%{{http_code}} %{{redirect_url}}' http://{DOMAIN}/a?b")
    assert redirect == f"301 https://{DOMAIN}/a?b"
    token = f"/var/lib/eep-acme/{SLUG}/.well-known/acme-challenge/probe"
    host.run(f"mkdir -p $(dirname {token}) && echo token-42 > {token}")
    assert curl(host, f"http://{DOMAIN}/.well-known/acme-challenge/probe").strip() == "token-42"
    host.run(f"rm -f {token}")


def test_a_failing_challenge_is_one_line_and_the_site_keeps_being_served(host, tmp_path_factory):
    # A second app on the host whose name does not resolve: Pebble cannot validate it.
    other = "nodns"
    tree = bake_tree(
        tmp_path_factory.mktemp("nodns"),
        other,
        tls="acme",
        acme_directory=DIRECTORY,
    )
    done = tree.provision(host)
    assert done.returncode != 0
    failed = [line for line in (done.stdout + done.stderr).splitlines() if "FAILED:" in line]
    assert len(failed) == 1, done.stdout + done.stderr
    assert "the ACME server did not issue a certificate" in failed[0]
    assert host.run(f"test -e /etc/letsencrypt/live/{other}", check=False).returncode != 0
    cert = f"/etc/eep-tls/{other}/self-signed.crt"
    served = curl(
        host,
        f"--cacert {cert} --resolve {other}.example.com:443:127.0.0.1 -o /dev/null"
        f" -w '%{{http_code}}' https://{other}.example.com/",
    )
    assert served == "503"  # nginx over TLS with the self-signed pair; no release yet
    first = curl(
        host, f"--cacert {ROOT_PEM} -o /dev/null -w '%{{http_code}}' https://{DOMAIN}/health"
    )
    assert first == "200"


def test_a_changed_domain_is_issued_again_without_the_old_name(host, tmp_path_factory):
    # An app on the host, provisioned, then baked again with another domain.
    first = bake_tree(
        tmp_path_factory.mktemp("moved"), "moved", tls="acme", acme_directory=DIRECTORY
    )
    host.run("echo '127.0.0.1 moved.example.com moved.example.org' >> /etc/hosts")
    done = first.provision(host)
    assert done.returncode == 0, done.stdout + done.stderr
    again = tmp_path_factory.mktemp("moved-again")
    for key in (first.deploy_key, first.deploy_key.with_suffix(".pub")):
        shutil.copy(key, again)
    moved = bake_tree(
        again, "moved", tls="acme", acme_directory=DIRECTORY, domain="moved.example.org"
    )
    planned = moved.provision(host, "--check")
    assert "would change" in planned.stdout and "re-issued for moved.example.org" in planned.stdout
    done = moved.provision(host)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "acme certificate: re-issued for moved.example.org (it was for moved.example.com)"
        in done.stdout
    ), done.stdout
    names = host.run(
        "openssl x509 -in /etc/letsencrypt/live/moved/fullchain.pem -noout -ext subjectAltName"
    ).stdout
    assert "DNS:moved.example.org" in names and "moved.example.com" not in names, names
    assert served(host, "-serial", "moved.example.org") != ""
    page = curl(
        host, f"--cacert {ROOT_PEM} -o /dev/null -w '%{{http_code}}' https://moved.example.org/"
    )
    assert page == "503"  # the app's site, no release yet
    old = host.run("curl -sSk https://moved.example.com/", check=False)
    assert old.returncode == 35, old  # no site has the old name: the handshake is refused
    third = moved.provision(host)
    assert third.returncode == 0 and " 0 changed" in third.stdout, third.stdout


def test_status_shows_issuer_and_days_left(tree, host):
    status = app(tree, host, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    line = next(line for line in status.stdout.splitlines() if line.startswith("https"))
    assert "Pebble" in line and "days left" in line and "self-signed" not in line, line


def test_keys_and_state_are_roots_alone_audit_catches_a_readable_key_and_no_renewal(tree, host):
    modes = host.run(
        f"stat -L -c '%U %a %n' {LIVE}/privkey.pem /etc/eep-tls/{SLUG}/key.pem"
        f" /etc/eep-tls/{SLUG}/self-signed.key /etc/letsencrypt/archive /etc/letsencrypt/live"
        " /etc/letsencrypt/accounts"
    ).stdout.split("\n")
    for line in filter(None, modes):
        owner, mode, path = line.split()
        assert owner == "root" and int(mode, 8) & 0o077 == 0, line
    passed = audit_as_root(tree, host)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "PASS  certificate renewal scheduled" in passed.stdout
    host.run(f"chmod 644 $(readlink -f {LIVE}/privkey.pem)")
    try:
        failed = audit_as_root(tree, host)
    finally:
        host.run(f"chmod 600 $(readlink -f {LIVE}/privkey.pem)")
    assert failed.returncode != 0
    assert "FAIL  TLS keys root's alone" in failed.stdout and "644" in failed.stdout
    host.run("systemctl disable certbot.timer")
    try:
        unscheduled = audit_as_root(tree, host)
    finally:
        host.run("systemctl enable certbot.timer")
    assert unscheduled.returncode != 0
    assert "FAIL  certificate renewal scheduled: certbot.timer is disabled" in unscheduled.stdout


def test_audit_fails_with_a_third_of_the_lifetime_left_until_renewal(tree, host):
    # The certificate certbot holds for the app, from a CA issuing 90-second certificates:
    # within a minute it is where a 90-day one is after 60 days without renewal.
    host.run(PEBBLE_START(unit="-short", config="short", port=15001))
    host.run(
        "certbot certonly -n -q --agree-tos --register-unsafely-without-email"
        f" --server {SHORT_LIVED} --cert-name {SLUG} --force-renewal --webroot"
        f" -w /var/lib/eep-acme/{SLUG} -d {DOMAIN} --deploy-hook 'systemctl reload nginx'"
    )
    start, end = served_lifetime(host)
    assert (end - start).total_seconds() <= 120, (start, end)
    time.sleep(max(0.0, (start + (end - start) * 2 / 3 - datetime.now(UTC)).total_seconds() + 1))
    failed = audit_as_root(tree, host)
    assert failed.returncode != 0
    line = next(x for x in failed.stdout.splitlines() if "certificate served on 443" in x)
    assert "FAIL  certificate served on 443: issuer CN = Pebble" in line, line
    assert f"0 days left, for {DOMAIN}, less than a third of its" in line, line
    assert line.endswith("-second lifetime left"), line
    # What certbot.timer starts: certbot renews what is due, the deploy hook reloads nginx.
    before = served_serial(host)
    host.run("systemctl start certbot.service")
    assert served_serial(host) != before
    passed = audit_as_root(tree, host)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    # The tree names the long-lived directory: provisioning issues from it again.
    done = tree.provision(host)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"re-issued for {DOMAIN} (it came from {SHORT_LIVED})" in done.stdout, done.stdout
    start, end = served_lifetime(host)
    assert (end - start).days > 300


def test_forced_renewal_under_load_fails_no_request(host):
    before = served_serial(host)
    load = start_https_load(host, DOMAIN, seconds=12, concurrency=4)
    time.sleep(3)
    # What certbot.timer runs, forced: the deploy hook reloads nginx.
    host.run(f"certbot renew --force-renewal --no-random-sleep-on-renew --cert-name {SLUG} -q")
    stats = https_load_stats(load)
    assert stats["requests"] > 50 and stats["failed"] == 0, stats
    assert served_serial(host) != before
    assert stats["serials"] == 2, stats  # requests were served with the old and the new


def test_after_a_reboot_https_is_back_and_renewal_scheduled(host):
    host.reboot()
    assert host.run("systemctl is-enabled certbot.timer").stdout.strip() == "enabled"
    assert host.run("systemctl is-active certbot.timer").stdout.strip() == "active"
    for _ in range(50):
        code = curl(
            host, f"--cacert {ROOT_PEM} -o /dev/null -w '%{{http_code}}' https://{DOMAIN}/health"
        )
        if code == "200":
            break
        time.sleep(0.5)
    assert code == "200"


def test_self_signed_mode_serves_https_and_redirects(testhost_factory_module, tmp_path_factory):
    other = "selfs"
    tree = bake_tree(tmp_path_factory.mktemp("selfs"), other, tls="self-signed")
    host = testhost_factory_module(other)
    host.run(f"echo '127.0.0.1 {other}.example.com' >> /etc/hosts")
    done = tree.provision(host)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "certificate: now in use: self-signed" in done.stdout
    assert "certbot" not in done.stdout
    cert = f"/etc/eep-tls/{other}/self-signed.crt"
    page = curl(host, f"--cacert {cert} -i https://{other}.example.com/")
    assert page.startswith("HTTP/2 503") and "No release deployed yet" in page, page
    assert "strict-transport-security" not in page.lower()  # hsts: n
    redirect = curl(host, f"-o /dev/null -w '%{{http_code}}' http://{other}.example.com/")
    assert redirect == "301"
    again = tree.provision(host)
    assert again.returncode == 0 and " 0 changed" in again.stdout, again.stdout
