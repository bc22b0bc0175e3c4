"""HTTPS logic of the baked tree (eep/tls.py) and its nginx site, without a host."""

from __future__ import annotations

import json
import shutil
import subprocess

import configcheck
import pytest
from test_tree_logic import FRESH_HOST, PROVISIONED
from treecode import run_in_tree

SERVED = """issuer=CN = Pebble Intermediate CA 6a5b0c
notBefore=2026-01-01 00:00:00Z
notAfter=2026-03-31 00:00:00Z
"""


@pytest.fixture
def acme_tree(bake):
    result = bake(
        tls="acme",
        acme_directory="https://acme.example.org/dir",
        acme_email="ops@shop.example.com",
        hsts="y",
    )
    assert result.exit_code == 0, result.exception
    return result.project_path


def test_served_certificate_is_parsed_and_judged_by_a_third_of_its_lifetime(acme_tree):
    code = f"""
import json
from datetime import datetime, UTC
from eep import tls
issuer, start, end = tls.parse_served({SERVED!r})
early = tls.lifetime_left(start, end, datetime(2026, 1, 31, tzinfo=UTC))
late = tls.lifetime_left(start, end, datetime(2026, 3, 10, tzinfo=UTC))
gone = tls.lifetime_left(start, end, datetime(2026, 4, 10, tzinfo=UTC))
print(json.dumps([issuer, early > 1 / 3, late > 1 / 3, gone, tls.parse_served("")]))
"""
    issuer, early_ok, late_ok, gone, nothing = json.loads(run_in_tree(acme_tree, code))
    assert issuer == "CN = Pebble Intermediate CA 6a5b0c"
    assert (early_ok, late_ok, gone, nothing) == (True, False, 0.0, None)


def test_certbot_gets_every_name_the_directory_and_the_webroot(acme_tree):
    command = run_in_tree(acme_tree, "from eep import tls; print(tls.certbot_command())").split()
    assert command[:4] == ["certbot", "certonly", "--non-interactive", "--agree-tos"]
    assert "--server https://acme.example.org/dir" in " ".join(command)
    assert "-d shop.example.com -d www.shop.example.com" in " ".join(command)
    assert "--webroot-path /var/lib/eep-acme/shop" in " ".join(command)
    assert "--email ops@shop.example.com" in " ".join(command)
    assert "--no-verify-ssl" not in command


def test_certbot_failure_comes_down_to_one_line(acme_tree):
    output = (
        "Saving debug log to /var/log/letsencrypt/letsencrypt.log\\n"
        "Certbot failed to authenticate some domains (authenticator: webroot).\\n"
        "  Domain: shop.example.com\\n  Type:   connection\\n"
        "  Detail: 127.0.0.1: Fetching http://shop.example.com/.well-known/acme-challenge/x:"
        " Connection refused\\n\\nHint: ...\\n"
    )
    line = run_in_tree(acme_tree, f"from eep import tls; print(tls.failure_line('{output}'))")
    assert line.startswith("Detail: 127.0.0.1: Fetching http://shop.example.com/")


def test_the_site_serves_https_and_keeps_only_the_challenge_on_port_80(acme_tree):
    site = (acme_tree / "config" / "nginx.conf").read_text()
    plain, secure = site.split("listen 443 ssl http2;", 1)
    assert "location ^~ /.well-known/acme-challenge/" in plain
    assert "return 301 https://$host$request_uri;" in plain
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in secure and "listen 80" not in secure
    assert 'Strict-Transport-Security "max-age=31536000" always' in secure


def test_the_default_server_refuses_https_for_other_names_without_a_certificate(
    acme_tree, tmp_path
):
    # nginx -t over the app's site and eep's default site together, as the host has them:
    # the default server listens on 443 with no certificate, which nginx accepts only
    # because it refuses every handshake there.
    pair = [str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")]
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-days", "1", "-subj", "/CN=shop.example.com"]
        + ["-out", pair[0], "-keyout", pair[1]],
        capture_output=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    site = (acme_tree / "config" / "nginx.conf").read_text()
    site = site.replace("/etc/eep-tls/shop/cert.pem", pair[0])
    site = site.replace("/etc/eep-tls/shop/key.pem", pair[1])
    default = (acme_tree / "config" / "nginx-default.conf").read_text()
    assert "listen 443 ssl default_server;" in default
    both = tmp_path / "sites.conf"
    # The site includes the balancer snippet; configcheck finds it beside the file checked.
    shutil.copy(acme_tree / "config" / "nginx-balancer.conf", tmp_path)
    both.write_text(default + site)
    assert configcheck.check_nginx_site(both) is None
    both.write_text(default.replace("ssl_reject_handshake on;", "") + site)
    assert "ssl_certificate" in (configcheck.check_nginx_site(both) or "")


def test_a_certificate_for_other_names_or_from_another_directory_is_issued_again(acme_tree):
    code = """
import json
from eep import tls
same = tls.reissue_reason(["www.shop.example.com", "shop.example.com"], "https://acme.example.org/dir")
moved = tls.reissue_reason(["old.example.com"], "https://acme.example.org/dir")
staging = tls.reissue_reason(["shop.example.com", "www.shop.example.com"], "https://staging/dir")
print(json.dumps([same, moved, staging]))
"""
    same, moved, staging = json.loads(run_in_tree(acme_tree, code))
    assert same == ""
    assert moved == "it was for old.example.com"
    assert staging == "it came from https://staging/dir"


SHORT_LIVED = """issuer=CN = Pebble Intermediate CA 6a5b0c
notBefore=2026-01-01 00:00:00Z
notAfter=2026-01-01 00:00:45Z
X509v3 Subject Alternative Name:
    DNS:shop.example.com, DNS:www.shop.example.com
"""


@pytest.mark.parametrize(
    ("now", "healthy", "says"),
    [
        ("00:00:10", True, "0 days left, for shop.example.com www.shop.example.com"),
        ("00:00:31", False, "less than a third of its 45-second lifetime left"),
        ("00:01:00", False, "expired 2026-01-01 00:00 UTC, for shop.example.com"),
    ],
)
def test_the_served_certificate_is_named_with_its_time_left(acme_tree, now, healthy, says):
    code = f"""
import json
from datetime import datetime
from types import SimpleNamespace
from eep import tls

class Remote:
    def run(self, *args, **kwargs):
        return SimpleNamespace(stdout={SHORT_LIVED!r}, exited=0)

class Clock(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.fromisoformat("2026-01-01T{now}+00:00")

tls.datetime = Clock
print(json.dumps(tls.describe(Remote())))
"""
    text, fresh = json.loads(run_in_tree(acme_tree, code))
    assert fresh is healthy and says in text, text
    assert text.startswith("issuer CN = Pebble Intermediate CA 6a5b0c, ")


RENEWAL = "/etc/letsencrypt/renewal/shop.conf"
EEPS_LINEAGE = "[renewalparams]\\nwebroot_path = /var/lib/eep-acme/shop,\\nserver = x\\n"


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ("", ""),
        (f'f["paths"]["{RENEWAL}"] = S(["regular file", "0644", "root", "root"])', ""),
        (
            f'f["paths"]["{RENEWAL}"] = S(["regular file", "0644", "root", "root"])\n'
            f'f["texts"]["{RENEWAL}"] = "{EEPS_LINEAGE}"',
            "",
        ),
        (
            f'f["paths"]["{RENEWAL}"] = S(["regular file", "0644", "root", "root"])\n'
            f'f["texts"]["{RENEWAL}"] = "webroot_path = /var/www/html,\\n"',
            f"certbot's certificate shop ({RENEWAL}) was not issued by eep",
        ),
        (
            'f["paths"]["/etc/eep-tls/shop"] = S(["directory", "0700", "root", "root"])',
            "/etc/eep-tls/shop exists (root:root 0700) and is not eep's",
        ),
        (
            'f["paths"]["/var/lib/eep-acme/shop"] = S(["directory", "0755", "root", "www-data"])',
            "/var/lib/eep-acme/shop exists (root:www-data 0755) and is not eep's",
        ),
        (
            'f["paths"]["/var/lib/eep-acme"] = S(["directory", "0777", "root", "root"])',
            "/var/lib/eep-acme (directory root:root 0777) is not a directory only root can change",
        ),
    ],
)
def test_provisioning_takes_over_no_tls_directory_or_certificate_eep_did_not_make(
    acme_tree, change, refusal
):
    # A host where eep provisioned `shop` (its TLS directories of the app's group) ...
    code = f"{FRESH_HOST}{PROVISIONED}{change}\nprint(json.dumps(claims.adoption_problems(f)))"
    found = json.loads(run_in_tree(acme_tree, code))
    assert found[0].startswith(refusal) if refusal else found == [], found
    # ... and where nothing of it exists yet: the same refusals.
    fresh = f"{FRESH_HOST}{change}\nprint(json.dumps(claims.adoption_problems(f)))"
    found = json.loads(run_in_tree(acme_tree, fresh))
    assert found[0].startswith(refusal) if refusal else found == [], found
