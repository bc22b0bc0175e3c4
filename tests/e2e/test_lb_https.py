"""HTTPS at the load balancer, proven offline: lb1 (HAProxy, certbot, and Pebble as the
ACME server) in front of web1 on one private LAN, with an outsider on the same LAN.

The domain resolves to lb1 itself there (/etc/hosts), so Pebble validates the http-01
challenge through HAProxy's port 80, which sends it to certbot on lb1. One tree, one set
of hosts for the module, provisioned once; the tests run in order.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from e2e_support import (
    DIRECTORY,
    PEBBLE_SETUP,
    PEBBLE_START,
    ROOT_PEM,
    bake_tree,
    build_sample_release,
    https_load_stats,
    start_https_load,
    write_inventory,
)

pytestmark = pytest.mark.e2e

SLUG = "edge"
DOMAIN = f"{SLUG}.example.com"
ROLES = {"lb1": ["lb"], "web1": ["web"]}
PEM = f"/etc/eep-tls/{SLUG}/haproxy.pem"

# GET /scheme of the app on web1's port 80, straight (not through the balancer), with
# the header a client may forge; what the app answers.
FORGED = """python3 - <<'EOF'
import http.client
c = http.client.HTTPConnection({ip!r}, 80, timeout=10)
c.request("GET", "/scheme", headers={{"Host": {domain!r}, "X-Forwarded-Proto": "https"}})
print(c.getresponse().read().decode().strip())
EOF"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return bake_tree(
        tmp_path_factory.mktemp("trees"),
        SLUG,
        use_celery="n",
        tls="acme",
        acme_directory=DIRECTORY,
        acme_email=f"ops@{DOMAIN}",
        hsts="y",
    )


@pytest.fixture(scope="module")
def hosts(testhost_factory_module, tree) -> dict:
    found = {name: testhost_factory_module(name, lan=SLUG) for name in (*ROLES, "out1")}
    lb = found["lb1"]
    lb.run(PEBBLE_SETUP.format(domain=DOMAIN), timeout=900)
    lb.run(PEBBLE_START(unit="", config="config", port=15000))
    lb.run(f"curl -sS https://localhost:15000/roots/0 -o {ROOT_PEM}")
    write_inventory(tree, found, ROLES, lb_health="/health")
    return found


def as_root(tree, hosts, *args: str) -> subprocess.CompletedProcess:
    # The harness gives every host the same root key.
    return tree.invoke(*args, "--identity", str(hosts["lb1"].key_path), timeout=900)


def curl(host, args: str) -> str:
    return host.run(f"curl -sS {args}", check=False).stdout


def served(host, fields: str) -> str:
    return host.run(
        f"openssl s_client -connect 127.0.0.1:443 -servername {DOMAIN} </dev/null 2>/dev/null"
        f" | openssl x509 -noout {fields}"
    ).stdout.strip()


def test_provisioning_issues_the_certificate_through_haproxy(tree, hosts, tmp_path_factory):
    done = as_root(tree, hosts, "provision")
    log = hosts["lb1"].run("tail -n 30 /var/log/letsencrypt/letsencrypt.log", check=False)
    assert done.returncode == 0, done.stdout + done.stderr + log.stdout
    lb_lines = [line for line in done.stdout.splitlines() if line.startswith("[lb1]")]
    for step in ("acme certificate: issuing from", "haproxy: reloaded with the ACME certificate"):
        assert any(step in line for line in lb_lines), done.stdout
    assert "Pebble" in served(hosts["lb1"], "-issuer")
    release = build_sample_release("v1", tmp_path_factory.mktemp("dist"))
    deployed = tree.invoke("deploy", "--release", str(release), "--identity", str(tree.deploy_key))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr


def test_https_through_the_balancer_reaches_the_app_which_sees_https(hosts):
    lb = hosts["lb1"]
    page = curl(lb, f"--cacert {ROOT_PEM} -i https://{DOMAIN}/health")
    assert page.startswith("HTTP/2 200"), page
    assert "strict-transport-security: max-age=31536000" in page.lower()
    # The app: wsgi.url_scheme, then X-Forwarded-Proto; a client's own header is replaced.
    scheme = curl(lb, f"--cacert {ROOT_PEM} -H 'X-Forwarded-Proto: http' https://{DOMAIN}/scheme")
    assert scheme.strip() == "https https"
    redirect = curl(lb, f"-o /dev/null -w '%{{http_code}} %{{redirect_url}}' http://{DOMAIN}/a?b")
    assert redirect == f"301 https://{DOMAIN}/a?b"


def test_web1_serves_plain_http_without_a_certificate_and_a_forged_scheme_fools_nobody(hosts):
    web, lb, outsider = hosts["web1"], hosts["lb1"], hosts["out1"]
    # eep's default site listens on 443 on every web host and refuses every handshake.
    refused = web.run(
        f"curl -sSk --resolve {DOMAIN}:443:127.0.0.1 https://{DOMAIN}/health", check=False
    )
    assert refused.returncode == 35, refused  # CURLE_SSL_CONNECT_ERROR: no certificate
    assert web.run("dpkg -s certbot", check=False).returncode != 0
    for path in (f"/etc/eep-tls/{SLUG}", f"/var/lib/eep-acme/{SLUG}"):
        assert web.run(f"test -e {path}", check=False).returncode != 0, path
    forged = FORGED.format(ip=web.lan_ip, domain=DOMAIN)
    assert outsider.run(forged).stdout.strip() == "http http"
    # The same request from the balancer's address is believed: the trust is by address.
    assert lb.run(forged).stdout.strip() == "https https"


def test_a_forced_renewal_under_load_through_the_balancer_fails_no_request(hosts):
    lb = hosts["lb1"]
    before = served(lb, "-serial")
    load = start_https_load(lb, DOMAIN, seconds=12, concurrency=4)
    time.sleep(3)
    # What certbot.timer runs, forced: the deploy hook rebuilds the PEM, HAProxy reloads.
    started = time.monotonic()
    lb.run(f"certbot renew --force-renewal --no-random-sleep-on-renew --cert-name {SLUG} -q")
    took = time.monotonic() - started
    stats = https_load_stats(load)
    print(f"forced renewal through HAProxy: {took:.1f} s, load: {json.dumps(stats)}")
    assert stats["requests"] > 50 and stats["failed"] == 0, stats
    assert served(lb, "-serial") != before
    assert stats["serials"] == 2, stats  # requests were served with the old and the new
    mode = lb.run(f"stat -c '%U:%G %a' {PEM}").stdout.strip()
    assert mode == "root:root 600"


def test_provision_again_changes_nothing_and_status_and_audit_pass(tree, hosts):
    planned = as_root(tree, hosts, "provision", "--check")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    for name in ROLES:
        assert f"[{name}] done: 0 would change," in planned.stdout, planned.stdout
    again = as_root(tree, hosts, "provision")
    assert again.returncode == 0, again.stdout + again.stderr
    for name in ROLES:
        assert f"[{name}] done: 0 changed," in again.stdout, again.stdout
    status = tree.invoke("status", "--identity", str(tree.deploy_key))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "[lb1] https     issuer CN = Pebble" in status.stdout, status.stdout
    audit = as_root(tree, hosts, "audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    for line in (
        "[lb1] PASS  certificate served on 443: issuer CN = Pebble",
        "[lb1] PASS  TLS keys root's alone",
        "[lb1] PASS  certificate renewal scheduled",
        "[lb1] PASS  balancer config matches the tree (no drift)",
    ):
        assert line in audit.stdout, audit.stdout
    lb = hosts["lb1"]
    lb.run(f"chmod 644 {PEM}")
    try:
        failed = as_root(tree, hosts, "audit", "--host", "lb1")
    finally:
        lb.run(f"chmod 600 {PEM}")
    assert failed.returncode != 0
    assert f"FAIL  TLS keys root's alone: {PEM} is root 644" in failed.stdout, failed.stdout
