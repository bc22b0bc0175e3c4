"""HTTPS at the load balancer: HAProxy's configuration with tls on, checked by haproxy
itself; the web hosts' site behind it (plain HTTP, the scheme believed from the balancer
only), checked by nginx; certbot's command on the lb host; who gets which package."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import configcheck
import pytest
from test_balancer import FLEET, fleet_error, rendered
from treecode import run_in_tree

PEM = "/etc/eep-tls/shop/haproxy.pem"


@pytest.fixture
def acme_tree(bake) -> Path:
    return bake(use_celery="n", tls="acme", hsts="y").project_path


def test_an_inventory_with_a_balancer_is_accepted_with_https(acme_tree):
    assert fleet_error(acme_tree, FLEET) == "ok"


def test_haproxy_terminates_https_and_haproxy_accepts_it(acme_tree, tmp_path):
    text = rendered(acme_tree, "config/haproxy.cfg", FLEET, "/health")
    assert f"bind :443 ssl crt {PEM} alpn h2,http/1.1" in text
    assert "ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets" in text
    # Plain HTTP: redirected, but for the challenge path, which goes to certbot.
    assert "http-request redirect scheme https code 301 if !{ ssl_fc } !acme_challenge" in text
    assert "use_backend eep_shop_acme if acme_challenge !{ ssl_fc }" in text
    assert "server certbot 127.0.0.1:8402" in text
    # The client's own X-Forwarded-Proto is replaced, never passed on.
    assert "http-request set-header X-Forwarded-Proto https if { ssl_fc }" in text
    assert "http-request set-header X-Forwarded-Proto http unless { ssl_fc }" in text
    assert 'Strict-Transport-Security "max-age=31536000" if { ssl_fc }' in text
    pem = tmp_path / "haproxy.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-days", "1", "-subj", "/CN=shop.example.com"]
        + ["-out", str(pem), "-keyout", str(tmp_path / "key.pem")],
        capture_output=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    pem.write_text(pem.read_text() + (tmp_path / "key.pem").read_text())
    path = tmp_path / "haproxy.cfg"
    path.write_text(text.replace(PEM, str(pem)))
    assert configcheck.check_haproxy(path) is None
    (tmp_path / "key.pem").unlink()
    pem.write_text(pem.read_text().split("-----BEGIN PRIVATE KEY-----")[0])  # no key
    assert configcheck.check_haproxy(path) is not None


def test_self_signed_at_the_balancer_has_no_challenge_path_to_certbot(bake, tmp_path):
    tree = bake(use_celery="n", tls="self-signed").project_path
    text = rendered(tree, "config/haproxy.cfg", FLEET)
    assert f"bind :443 ssl crt {PEM}" in text and "certbot" not in text
    assert "Strict-Transport-Security" not in text  # hsts=n
    pem = tmp_path / "haproxy.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-days", "1", "-subj", "/CN=shop.example.com"]
        + ["-out", str(pem), "-keyout", str(pem)],
        capture_output=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    path = tmp_path / "haproxy.cfg"
    path.write_text(text.replace(PEM, str(pem)))
    assert configcheck.check_haproxy(path) is None


def test_web_hosts_behind_it_serve_plain_http_and_believe_the_scheme_from_it_only(acme_tree):
    snippet = rendered(acme_tree, "config/nginx-balancer.conf", FLEET)
    assert configcheck.BALANCER_LINES in snippet
    code = (
        "import json, sys\n"
        "from eep import fleet, manifest, packages\n"
        "hosts = json.loads(sys.stdin.read())\n"
        "f = fleet.load(hosts)\n"
        "alone = fleet.load({'web1': hosts['web1']})\n"
        "print(manifest.site_file(f).source, manifest.site_file(alone).source)\n"
        "print(*packages.packages_for(f, f.hosts[1]))\n"
        "from eep import balancer, layout\n"
        "print(*balancer.PACKAGES)\n"
        "print(*[p for p in layout.directories_for(f) if 'tls' in p or 'acme' in p])\n"
        "print(*[p for p in layout.directories_for(alone) if 'tls' in p or 'acme' in p])\n"
    )
    sites, web, lb, tls_behind, tls_alone = run_in_tree(acme_tree, code, FLEET).split("\n")[:5]
    assert sites == "config/nginx-behind-lb.conf config/nginx.conf"
    assert "certbot" not in web.split() and "openssl" not in web.split() and "nginx" in web
    assert {"haproxy", "certbot", "openssl"} <= set(lb.split())
    # No certificate directory or ACME webroot on a web host behind the balancer.
    assert tls_behind == "" and "/etc/eep-tls/shop" in tls_alone.split()
    site = acme_tree / "config" / "nginx-behind-lb.conf"
    text = site.read_text()
    # eep's mark on the first line: provisioning replaces only a site it wrote.
    assert text.startswith("# eep: nginx site of shop on a web host behind the load balancer")
    assert (acme_tree / "config" / "nginx.conf").read_text().startswith("# eep: nginx site")
    assert "listen 80;" in text and "443" not in text and "ssl_certificate" not in text
    assert "uwsgi_param HTTP_X_FORWARDED_PROTO $eep_proto;" in text
    assert configcheck.check_nginx_site(site) is None
    assert configcheck.check_nginx_site(site, snippet) is None
    # Without its snippet's $eep_proto nginx refuses the site: the scheme comes from it.
    assert "eep_proto" in (configcheck.check_nginx_site(site, "") or "")


def test_certbot_on_the_lb_host_answers_behind_haproxy_and_rebuilds_its_file(acme_tree):
    code = "from eep import tls\nprint(tls.certbot_command(lb=True))\nprint(tls.certbot_command())"
    lb, alone = run_in_tree(acme_tree, code).splitlines()
    assert "--standalone --http-01-address 127.0.0.1 --http-01-port 8402" in lb
    assert "--webroot" not in lb and "--webroot --webroot-path" in alone
    hook = (
        "umask 077 && cat /etc/eep-tls/shop/cert.pem /etc/eep-tls/shop/key.pem"
        f" > {PEM}.new && mv -f {PEM}.new {PEM} && systemctl reload haproxy"
    )
    # The hook through sh (certbot wants a program first), as certbot stores and runs it.
    assert f"--deploy-hook {shlex.quote('sh -c ' + shlex.quote(hook))}" in lb
    assert "--deploy-hook 'systemctl reload nginx'" in alone


def test_a_tree_without_https_has_no_site_for_behind_the_balancer(bake):
    tree = bake(use_celery="n").project_path
    assert not (tree / "config" / "nginx-behind-lb.conf").exists()
    assert "X-Forwarded-Proto http\n" in rendered(tree, "config/haproxy.cfg", FLEET)
